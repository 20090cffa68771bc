"""cuDNN convolutions (caffeish.cuda.cudnn) against the Convolution layer's numpy path."""
import numpy
import pytest

from caffeish import backend
from caffeish.cuda import cudnn
from cuda_helpers import assert_close, device_blob, needs_gpu
from helpers import empty, make_layer

needs_cudnn = pytest.mark.skipif(not cudnn.available(), reason="needs cuDNN through CuPy's cupyx.cudnn")


def test_available_is_false_without_a_gpu():
    if not backend.gpu_available():
        assert cudnn.available() is False


@needs_gpu
@needs_cudnn
@pytest.mark.parametrize("groups", [1, 2])
def test_cudnn_matches_the_layer(groups):
    import cupy
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 '
                       f'dilation: 1 group: {groups} weight_filler {{ type: "gaussian" }} '
                       f'bias_filler {{ type: "gaussian" }} }}')
    rng = numpy.random.default_rng(19)
    x = device_blob(rng.standard_normal((2, 4, 9, 8)), numpy.float64)
    top = empty(1)
    layer.setup([x], top)
    layer.forward([x], top)
    dy = rng.standard_normal(top[0].shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], [x])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    args = ((2, 2), (1, 1), (1, 1), groups)
    xg, wg, dyg = cupy.asarray(x.data), cupy.asarray(w), cupy.asarray(dy)
    y = cudnn.forward(xg, wg, cupy.asarray(b), cupy.empty(top[0].shape), *args)
    dx = cudnn.backward_data(wg, dyg, cupy.empty(x.shape), *args)
    dw = cudnn.backward_filter(xg, dyg, cupy.empty(w.shape), *args)
    assert_close(cupy.asnumpy(y), top[0].data, numpy.float64)
    assert_close(cupy.asnumpy(dx), x.diff, numpy.float64)
    assert_close(cupy.asnumpy(dw), layer.blobs[0].diff, numpy.float64)


@needs_gpu
def test_chooser_keeps_the_faster_and_the_result():
    import cupy
    from caffeish.cuda.cudnn import Chooser
    out = cupy.zeros(4)
    slow_calls = []

    def slow():
        slow_calls.append(1)
        a = cupy.ones((2048, 2048))
        for _ in range(5):
            a = a @ a / 2048
        out[...] = 1

    def fast():
        out[...] = 1

    chooser = Chooser()
    chooser.run("k", fast, slow)   # cudnn_call=fast, gemm_call=slow
    assert chooser.winner["k"] == "cudnn" and bool((out == 1).all())
    calls = len(slow_calls)
    out[...] = 0
    chooser.run("k", fast, slow)
    assert len(slow_calls) == calls and bool((out == 1).all())

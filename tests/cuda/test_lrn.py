"""The LRN layer's CUDA kernels (caffeish.cuda.lrn, ACROSS_CHANNELS) against its numpy path."""
import numpy
import pytest

from caffeish import backend
from cuda_helpers import assert_close, compiled, device_blob, needs_gpu, on_cpu_and_gpu
from helpers import empty, make_layer

CASES = [
    ("local_size: 5 alpha: 0.1 beta: 0.75 k: 2", (2, 7, 3, 4)),
    ("local_size: 3 alpha: 1e-4 beta: 0.75", (3, 16, 5, 5)),   # Caffe's defaults but the size
    ("local_size: 7 alpha: 0.5 beta: 1.5 k: 1", (1, 3, 2, 5)),  # window wider than the channels
    ("local_size: 1 alpha: 0.3 beta: 0.5 k: 1.5", (2, 4, 3, 3)),
    ("local_size: 5 alpha: 0.2 beta: 0.75 k: 1", (2, 2, 1, 7)),
]


pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


def _run(params, shape, dtype, in_place):
    layer = make_layer(f'type: "LRN" lrn_param {{ {params} }}', dtype=dtype)
    rng = numpy.random.default_rng(11)
    bottom = device_blob(rng.standard_normal(shape), dtype)
    top = [bottom] if in_place else empty(1, dtype)
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    y = top[0].data.copy()
    top[0].diff[...] = backend.to_current(rng.standard_normal(shape), dtype)
    layer.backward(top, [True], [bottom])
    return [y, bottom.diff]


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("params,shape", CASES)
def test_lrn_across_channels_matches_numpy(params, shape, in_place, dtype):
    cpu, gpu = on_cpu_and_gpu(_run, params, shape, dtype, in_place)
    assert compiled("lrn")
    # the running window sum adds and subtracts in another order than the numpy path
    assert_close(gpu[0], cpu[0], dtype, what="top")
    assert_close(gpu[1], cpu[1], dtype, what="bottom diff")


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_lrn_within_channel_still_runs_on_the_gpu(dtype):
    cpu, gpu = on_cpu_and_gpu(_run, "local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL",
                              (2, 3, 5, 4), dtype, False)
    assert_close(gpu[0], cpu[0], dtype)
    assert_close(gpu[1], cpu[1], dtype)

import itertools

import numpy
import pytest

from caffeish.cpu import native
from caffeish.errors import CaffeishError
from caffeish.layers.vision import conv_engines, engines
from caffeish.cpu.native import direct
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@pytest.fixture(autouse=True, params=["native", "numpy"])
def path(request, monkeypatch):
    """Every test here runs on both CPU paths: the compiled direct convolution, taking every 2-D size it
    can (these cases are small), and the numpy path, its reference."""
    if request.param == "native":
        if native.library() is None:
            pytest.skip(f"native kernels: {native.status()}")
        monkeypatch.setattr(direct, "MIN_OUTPUTS", 1)
        monkeypatch.setattr(direct, "POINTWISE_TO_GEMM", False)
    monkeypatch.setattr(engines, "NATIVE", request.param == "native")
    return request.param

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 }'


def conv_layer(params, fillers=FILLERS):
    return make_layer(f'type: "Convolution" convolution_param {{ {params} {fillers} }}')


def naive_conv(x, w, b, stride, pad, dilation, group):
    """Direct convolution (Caffe's cross-correlation), one output element at a time."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1
           for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    og = o // group
    y = numpy.zeros((n, o) + tuple(out))
    for bi, oc in itertools.product(range(n), range(o)):
        g = oc // og
        for pos in itertools.product(*(range(v) for v in out)):
            total = 0.0 if b is None else b[oc]
            for ic in range(cg):
                for off in itertools.product(*(range(k) for k in kernel)):
                    src = [p * st - q + f * d for p, st, q, f, d in zip(pos, stride, pad, off, dilation)]
                    if all(0 <= v < s for v, s in zip(src, spatial)):
                        total += w[(oc, ic) + off] * x[(bi, g * cg + ic) + tuple(src)]
            y[(bi, oc) + pos] = total
    return y


FORWARD_CASES = [
    # prototxt params, input shape, stride, pad, dilation, group
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 6), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
     (1, 2, 6, 5), (2, 1), (1, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", (2, 2, 7, 7), (1, 1), (2, 2), (2, 2), 1),
    ("num_output: 6 kernel_size: 3 kernel_size: 2 group: 3 stride: 1 stride: 2 dilation: 1 dilation: 2",
     (2, 6, 6, 7), (1, 2), (0, 0), (1, 2), 3),
    ("num_output: 4 kernel_size: 1", (2, 3, 4, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 1 group: 2", (2, 4, 3, 3), (1, 1), (0, 0), (1, 1), 2),
    ("num_output: 2 kernel_size: 1 stride: 2", (1, 3, 5, 5), (2, 2), (0, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 2 stride: 2 pad: 1", (1, 2, 4, 5, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 1),
]


@checks_forward("Convolution")
@pytest.mark.parametrize("params,shape,stride,pad,dilation,group", FORWARD_CASES)
def test_convolution_forward(params, shape, stride, pad, dilation, group, path):
    layer = conv_layer(params)
    x = blob(shape)
    top = empty()
    layer.setup([x], top)
    if len(shape) == 4 and set(stride) == {1}:
        assert (layer.engine.name == "native") == (path == "native")
    layer.Forward([x], top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape[1] == shape[1] // group
    ref = naive_conv(x.data, w, b, stride, pad, dilation, group)
    assert top[0].shape == ref.shape
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-10, atol=1e-12)


def test_convolution_float32_no_bias_two_bottoms():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 bias_term: false '
                       'weight_filler { type: "xavier" } }', dtype=numpy.float32)
    xs = [blob((2, 3, 5, 5), dtype=numpy.float32, rng=numpy.random.default_rng(i)) for i in range(2)]
    top = empty(2, dtype=numpy.float32)
    layer.setup(xs, top)
    assert len(layer.blobs) == 1
    layer.Forward(xs, top)
    for x, t in zip(xs, top):
        assert t.data.dtype == numpy.float32 and t.shape == (2, 2, 3, 3)
        ref = naive_conv(x.data.astype(float), layer.blobs[0].data.astype(float), None, (1, 1), (0, 0), (1, 1), 1)
        numpy.testing.assert_allclose(t.data, ref, rtol=1e-5, atol=1e-5)


def test_convolution_channel_axis():
    # axis 2: the first two axes are independent images.
    layer = conv_layer("num_output: 3 kernel_size: 2 axis: 2")
    x = blob((2, 3, 2, 4, 5))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == (2, 3, 3, 3, 4)
    ref = naive_conv(x.data.reshape(6, 2, 4, 5), layer.blobs[0].data, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1)
    numpy.testing.assert_allclose(top[0].data.reshape(ref.shape), ref, rtol=1e-10)


def test_convolution_chunked_batch_matches(monkeypatch):
    layer = conv_layer("num_output: 3 kernel_size: 3 pad: 1")
    x = blob((5, 2, 4, 4))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = numpy.random.default_rng(1).standard_normal(top[0].shape)
    layer.backward(top, [True], [x])
    whole = (top[0].data.copy(), x.diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy())
    for b in layer.blobs:
        b.diff[...] = 0
    monkeypatch.setattr(conv_engines, "COL_BUFFER_BYTES", 2 * 18 * 16 * 8)  # two images per chunk
    assert len(layer.engine.chunks()) == 3
    layer.Forward([x], top)
    layer.backward(top, [True], [x])
    for a, b in zip(whole, (top[0].data, x.diff, layer.blobs[0].diff, layer.blobs[1].diff)):
        numpy.testing.assert_allclose(a, b, rtol=1e-12)


def test_convolution_param_diffs_accumulate():
    layer = conv_layer("num_output: 2 kernel_size: 2")
    x = blob((1, 2, 3, 3))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False], [x])
    first = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [False], [x])
    for b, f in zip(layer.blobs, first):
        numpy.testing.assert_allclose(b.diff, 2 * f)
    numpy.testing.assert_allclose(first[1], [4.0, 4.0])


GRADIENT_CASES = [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 5, 4)),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 group: 2 dilation: 2 pad_h: 1 pad_w: 2", (1, 4, 4, 4)),
    ("num_output: 2 kernel_size: 1", (2, 3, 3, 2)),
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 3, 3, 3)),
]


@checks_gradient("Convolution")
@pytest.mark.parametrize("params,shape", GRADIENT_CASES)
def test_convolution_gradient(params, shape):
    check_gradient(conv_layer(params), [blob(shape)], empty())


@pytest.mark.parametrize("params,shape,message", [
    ("num_output: 2", (1, 1, 4, 4), "kernel"),
    ("kernel_size: 3", (1, 1, 4, 4), "num_output"),
    ("num_output: 2 kernel_size: 3 group: 2", (1, 3, 4, 4), "3 channels are not divisible by group 2"),
    ("num_output: 3 kernel_size: 1 group: 2", (1, 2, 4, 4), "num_output 3 is not divisible by group 2"),
    ("num_output: 2 kernel_size: 5", (1, 1, 4, 4), r"output size \(0, 0\).*input \(4, 4\), kernel \(5, 5\)"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 4, 4), "not both"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3", (1, 1, 4, 4), "given 3 times"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 4, 4), "stride"),
    ("num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 4, 4, 4), "2-D"),
])
def test_convolution_errors(params, shape, message):
    layer = conv_layer(params, fillers="")
    with pytest.raises(CaffeishError, match=message):
        layer.setup([blob(shape)], empty())


def test_convolution_rejects_wrong_weight_shape():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 bias_term: false } '
                       'blobs { shape { dim: 2 dim: 1 dim: 2 dim: 2 } }')
    with pytest.raises(CaffeishError, match=r"needs parameter blob 0 \(weights\) of shape"):
        layer.setup([blob((1, 1, 4, 4))], empty())

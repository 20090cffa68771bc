import itertools

import numpy
import pytest

from caffeish.cpu import native
from caffeish.errors import CaffeishError
from caffeish.cpu.native import direct
from caffeish.layers.vision import conv_engines, engines
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 }'


def deconv_layer(params, fillers=FILLERS, layer_type="Deconvolution"):
    return make_layer(f'type: "{layer_type}" convolution_param {{ {params} {fillers} }}')


def naive_deconv(x, w, b, stride, pad, dilation, group):
    """Scatter every input value through the kernel onto the output, one element at a time."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    cg, og = c // group, w.shape[1]
    kernel = w.shape[2:]
    out = [st * (s - 1) + d * (k - 1) + 1 - 2 * p for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    y = numpy.zeros((n, og * group) + tuple(out))
    for bi, ic in itertools.product(range(n), range(c)):
        g = ic // cg
        for pos in itertools.product(*(range(v) for v in spatial)):
            for off in itertools.product(*(range(k) for k in kernel)):
                dst = [p * st - q + f * d for p, st, q, f, d in zip(pos, stride, pad, off, dilation)]
                if all(0 <= v < s for v, s in zip(dst, out)):
                    for oc in range(og):
                        y[(bi, g * og + oc) + tuple(dst)] += w[(ic, oc) + off] * x[(bi, ic) + pos]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out))
    return y


FORWARD_CASES = [
    # params, input shape, stride, pad, dilation, group
    ("num_output: 3 kernel_size: 3", (2, 2, 3, 4), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0",
     (1, 2, 3, 4), (2, 3), (1, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 1 group: 2", (2, 4, 3, 3), (1, 1), (1, 1), (2, 2), 2),
    ("num_output: 6 kernel_size: 1 stride: 2 group: 3", (1, 3, 3, 2), (2, 2), (0, 0), (1, 1), 3),
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 3, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), 1),
]


@pytest.fixture(autouse=True)
def native_takes_every_size(monkeypatch):
    """The cases here are small (and some 1x1): let the native kernels take them all."""
    monkeypatch.setattr(direct, "MIN_OUTPUTS", 1)
    monkeypatch.setattr(direct, "POINTWISE_TO_GEMM", False)


def expects_native(shape, params):
    """Whether the layer should run the native kernels (2-D, built, and what DirectConvolution takes)."""
    layer = deconv_layer(params)
    layer.setup([blob(shape)], empty())
    if len(shape) != 4 or native.library() is None:
        return False
    phases = direct.StridePhases(layer.kernel, layer.stride, layer.pad, layer.spatial)
    return set(layer.stride) == {1} or (set(layer.dilation) == {1} and phases.waste <= direct.STRIDED_WASTE)


@checks_forward("Deconvolution")
@pytest.mark.parametrize("params,shape,stride,pad,dilation,group", FORWARD_CASES)
@pytest.mark.parametrize("use_native", [True, False])
def test_deconvolution_forward(params, shape, stride, pad, dilation, group, use_native, monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", use_native)
    layer = deconv_layer(params)
    x = blob(shape)
    top = empty()
    layer.setup([x], top)
    assert (layer.engine.name == "native") == (use_native and expects_native(shape, params))
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape[:2] == (shape[1], layer.num_output // group)  # Caffe's reversed weight shape
    layer.Forward([x], top)
    ref = naive_deconv(x.data, w, b, stride, pad, dilation, group)
    assert top[0].shape == ref.shape
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-10, atol=1e-12)


def test_deconvolution_is_the_transpose_of_convolution():
    params = "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 bias_term: false"
    deconv = deconv_layer(params)
    x = blob((2, 6, 3, 4))
    ytop = empty()
    deconv.setup([x], ytop)
    deconv.Forward([x], ytop)
    conv = make_layer('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 '
                      'group: 2 bias_term: false }')
    y = blob(ytop[0].shape, rng=numpy.random.default_rng(9))
    ctop = empty()
    conv.setup([y], ctop)
    conv.blobs[0].data[...] = deconv.blobs[0].data  # (6, 2, 3, 3) for both
    conv.Forward([y], ctop)
    assert ctop[0].shape == x.shape
    numpy.testing.assert_allclose((ctop[0].data * x.data).sum(), (y.data * ytop[0].data).sum(), rtol=1e-12)


def test_deconvolution_bilinear_upsampling_keeps_constants():
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 '
                       'group: 2 bias_term: false weight_filler { type: "bilinear" } }')
    x = blob(numpy.full((1, 2, 3, 3), 2.0))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == (1, 2, 6, 6)
    numpy.testing.assert_allclose(top[0].data[:, :, 1:-1, 1:-1], 2.0)  # interior: weights sum to 1


def test_deconvolution_float32_two_bottoms_and_param_diffs_accumulate():
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 stride: 2 '
                       'weight_filler { type: "xavier" } }', dtype=numpy.float32)
    xs = [blob((2, 3, 2, 2), dtype=numpy.float32, rng=numpy.random.default_rng(i)) for i in range(2)]
    top = empty(2, dtype=numpy.float32)
    layer.setup(xs, top)
    layer.Forward(xs, top)
    for x, t in zip(xs, top):
        assert t.data.dtype == numpy.float32 and t.shape == (2, 2, 4, 4)
        ref = naive_deconv(x.data.astype(float), layer.blobs[0].data.astype(float), layer.blobs[1].data.astype(float),
                           (2, 2), (0, 0), (1, 1), 1)
        numpy.testing.assert_allclose(t.data, ref, rtol=1e-5, atol=1e-5)
        t.diff[...] = 1.0
    layer.backward(top, [False, False], xs)
    first = [b.diff.copy() for b in layer.blobs]
    numpy.testing.assert_allclose(first[1], [64.0, 64.0])  # 2 tops x 2 images x 16 positions
    layer.backward(top, [False, False], xs)
    for b, f in zip(layer.blobs, first):
        numpy.testing.assert_allclose(b.diff, 2 * f, rtol=1e-6)


NATIVE_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 5, 4)),
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (3, 3, 3, 4)),                   # FCN's 2x upsampling
    ("num_output: 4 kernel_size: 8 stride: 4 pad: 2 group: 2", (2, 4, 3, 3)),          # 4x, grouped
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (1, 2, 3, 4)),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 1 group: 2", (2, 4, 3, 3)),
    ("num_output: 6 kernel_size: 1 stride: 2 group: 3", (1, 3, 3, 2)),
]


@pytest.mark.skipif(native.library() is None, reason="the native kernels are not built here")
@pytest.mark.parametrize("params,shape", NATIVE_CASES)
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_deconvolution_native_matches_numpy_paths(params, shape, dtype, monkeypatch):
    """Forward, the bottom's and the parameters' gradients, native against the numpy paths."""
    results, weights = [], None
    for use_native in (True, False):
        monkeypatch.setattr(engines, "NATIVE", use_native)
        layer = make_layer(f'type: "Deconvolution" convolution_param {{ {params} {FILLERS} }}', dtype=dtype)
        x = blob(shape, dtype=dtype, rng=numpy.random.default_rng(3))
        top = empty(dtype=dtype)
        layer.setup([x], top)
        assert (layer.engine.name == "native") == use_native
        weights = weights or [b.data.copy() for b in layer.blobs]
        for b, w in zip(layer.blobs, weights):
            b.data[...] = w
        layer.Forward([x], top)
        top[0].diff[...] = numpy.random.default_rng(4).standard_normal(top[0].shape)
        for b in layer.blobs:
            b.diff[...] = 0.5
        x.diff[...] = numpy.nan
        layer.Backward(top, [True], [x])
        results.append([top[0].data.copy(), x.diff.copy()] + [b.diff.copy() for b in layer.blobs])
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == numpy.float64 else dict(rtol=2e-4, atol=2e-4)
    for got, want in zip(*results):
        assert got.dtype == dtype
        numpy.testing.assert_allclose(got, want, **tol)


def test_deconvolution_chunked_batch_matches(monkeypatch):
    layer = deconv_layer("num_output: 2 kernel_size: 3 stride: 2 pad: 1")
    x = blob((5, 2, 3, 3))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = numpy.random.default_rng(1).standard_normal(top[0].shape)
    layer.backward(top, [True], [x])
    whole = (top[0].data.copy(), x.diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy())
    for b in layer.blobs:
        b.diff[...] = 0
    monkeypatch.setattr(conv_engines, "COL_BUFFER_BYTES", 2 * 18 * 9 * 8)  # two images per chunk
    assert len(layer.engine.chunks()) == 3
    layer.Forward([x], top)
    layer.backward(top, [True], [x])
    for a, b in zip(whole, (top[0].data, x.diff, layer.blobs[0].diff, layer.blobs[1].diff)):
        numpy.testing.assert_allclose(a, b, rtol=1e-12)


@checks_gradient("Deconvolution")
@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 3, 2)),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 group: 2 dilation: 2 pad_h: 1 pad_w: 1", (1, 2, 3, 3)),
    ("num_output: 2 kernel_size: 1", (2, 3, 2, 2)),
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 2, 2)),
])
def test_deconvolution_gradient(params, shape):
    check_gradient(deconv_layer(params), [blob(shape)], empty())


@pytest.mark.parametrize("params,shape,message", [
    ("num_output: 2", (1, 1, 4, 4), "kernel"),
    ("kernel_size: 3", (1, 1, 4, 4), "num_output"),
    ("num_output: 2 kernel_size: 3 group: 2", (1, 3, 4, 4), "3 channels are not divisible by group 2"),
    ("num_output: 3 kernel_size: 1 group: 2", (1, 2, 4, 4), "num_output 3 is not divisible by group 2"),
    ("num_output: 2 kernel_size: 1 pad: 1", (1, 1, 2, 2), r"output size \(0, 0\) is not positive"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 1, 4, 4), "stride"),
])
def test_deconvolution_errors(params, shape, message):
    with pytest.raises(CaffeishError, match=message):
        deconv_layer(params, fillers="").setup([blob(shape)], empty())

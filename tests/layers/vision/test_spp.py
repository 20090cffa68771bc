import math

import numpy
import pytest

from caffeish import caffe_pb2
from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def spp_layer(params, phase=caffe_pb2.TRAIN):
    return make_layer(f'type: "SPP" spp_param {{ {params} }}', phase=phase)


def caffe_pooled(size, k, s, p):
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def loop_level(x, level, method):
    """One pyramid level as Caffe's GetPoolingParam + Pooling Forward_cpu compute it, element by element."""
    n, c, h, w = x.shape
    bins = 2 ** level
    kh, kw = math.ceil(h / bins), math.ceil(w / bins)
    ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
    oh, ow = caffe_pooled(h, kh, kh, ph), caffe_pooled(w, kw, kw, pw)
    out = numpy.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * kh - ph, j * kw - pw
                    if method == "MAX":
                        window = x[b, ch, max(hs, 0):min(hs + kh, h), max(ws, 0):min(ws + kw, w)]
                        out[b, ch, i, j] = window.max()
                    else:
                        size = (min(hs + kh, h + ph) - hs) * (min(ws + kw, w + pw) - ws)
                        window = x[b, ch, max(hs, 0):min(hs + kh, h), max(ws, 0):min(ws + kw, w)]
                        out[b, ch, i, j] = window.sum() / size
    return out


@checks_forward("SPP")
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height,shape", [(1, (2, 3, 5, 4)), (2, (2, 2, 5, 6)), (3, (1, 2, 9, 7)), (3, (2, 1, 8, 8))])
def test_spp_forward(method, height, shape):
    x = blob(shape, rng=numpy.random.default_rng(4))
    layer = spp_layer(f"pyramid_height: {height} pool: {method}")
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    levels = [loop_level(x.data, i, method) for i in range(height)]
    if height == 1:
        ref = levels[0]  # Caffe pools straight into the top: (N, C, 1, 1)
    else:
        ref = numpy.concatenate([lv.reshape(shape[0], -1) for lv in levels], axis=1)
    assert top[0].shape == ref.shape
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-12)


def test_spp_output_size_and_reshape():
    # Caffe's TestSetup: 2 x 3 x 9 x 8, pyramid height 3 -> 3 channels x (1 + 4 + 16) bins.
    layer = spp_layer("pyramid_height: 3")
    top = empty()
    layer.setup([blob((2, 3, 9, 8))], top)
    assert top[0].shape == (2, 63)
    x = blob((1, 3, 6, 6))
    layer.Forward([x], top)  # a new input size rebuilds the levels
    assert top[0].shape == (1, 63)
    numpy.testing.assert_allclose(top[0].data[:, :3], x.data.max(axis=(2, 3)))


def test_spp_stochastic_levels_always_sample():
    # As in Caffe, the inner Pooling layers run in TRAIN whatever the SPP layer's phase.
    x = blob((1, 2, 4, 4), low=0.1, high=1.0)
    layer = spp_layer("pyramid_height: 2 pool: STOCHASTIC", phase=caffe_pb2.TEST)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == (1, 10)
    assert numpy.isin(top[0].data, x.data).all()


@checks_gradient("SPP")
@pytest.mark.parametrize("params,shape", [
    ("pyramid_height: 2 pool: MAX", (1, 2, 5, 4)),
    ("pyramid_height: 3 pool: AVE", (2, 1, 4, 7)),
    ("pyramid_height: 1 pool: AVE", (2, 2, 3, 3)),
])
def test_spp_gradient(params, shape):
    rng = numpy.random.default_rng(0)
    count = int(numpy.prod(shape))
    x = blob(rng.permutation(count).reshape(shape) / count - 0.5)  # distinct values: unique maxima
    check_gradient(spp_layer(params), [x], empty())


@pytest.mark.parametrize("params,shape,message", [
    ("pool: MAX", (1, 1, 4, 4), "pyramid_height"),
    ("pyramid_height: 0", (1, 1, 4, 4), "pyramid_height"),
    ("pyramid_height: 2", (1, 1, 4), "4-axis"),
    ("pyramid_height: 3", (1, 1, 2, 2), "pyramid level 2 .4 x 4 bins. cannot pool the 2 x 2 input"),
])
def test_spp_errors(params, shape, message):
    with pytest.raises(CaffeishError, match=message):
        spp_layer(params).setup([blob(shape)], empty())

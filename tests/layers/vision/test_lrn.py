import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def lrn_layer(params=""):
    return make_layer(f'type: "LRN" lrn_param {{ {params} }}')


def naive_lrn(x, size, alpha, beta, k, region):
    """Caffe's ReferenceLRNForward, element by element."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    y = numpy.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    if region == "ACROSS_CHANNELS":
                        scale = k
                        for cc in range(max(0, ch - half), min(c, ch + half + 1)):
                            scale += alpha / size * x[b, cc, i, j] ** 2
                    else:
                        scale = 1.0
                        for ii in range(max(0, i - half), min(h, i + half + 1)):
                            for jj in range(max(0, j - half), min(w, j + half + 1)):
                                scale += alpha / (size * size) * x[b, ch, ii, jj] ** 2
                    y[b, ch, i, j] = x[b, ch, i, j] * scale ** -beta
    return y


@checks_forward("LRN")
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1.0, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (1, 0.5, 1.5, 1.5)])
def test_lrn_forward(region, size, alpha, beta, k):
    layer = lrn_layer(f"norm_region: {region} local_size: {size} alpha: {alpha} beta: {beta} k: {k}")
    x = blob((2, 7, 4, 5), low=-2, high=2)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, naive_lrn(x.data, size, alpha, beta, k, region), rtol=1e-12)


def test_lrn_within_channel_ignores_k():
    x = blob((1, 2, 5, 5))
    tops = []
    for k in (1.0, 5.0):
        layer = lrn_layer(f"norm_region: WITHIN_CHANNEL local_size: 3 alpha: 3 k: {k}")
        top = empty()
        layer.setup([x], top)
        layer.Forward([x], top)
        tops.append(top[0].data.copy())
    numpy.testing.assert_array_equal(tops[0], tops[1])


def test_lrn_float32():
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.1 }', dtype=numpy.float32)
    x = blob((2, 4, 3, 3), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].data.dtype == numpy.float32
    numpy.testing.assert_allclose(top[0].data, naive_lrn(x.data.astype(float), 3, 0.1, 0.75, 1.0, "ACROSS_CHANNELS"),
                                  rtol=1e-5)


@checks_gradient("LRN")
@pytest.mark.parametrize("params", [
    "",                                                           # Caffe's defaults: 5, 1, 0.75, k 1
    "local_size: 3 alpha: 2 beta: 0.6 k: 2",
    "norm_region: WITHIN_CHANNEL",
    "norm_region: WITHIN_CHANNEL local_size: 3 alpha: 4 beta: 1.2",
])
def test_lrn_gradient(params):
    check_gradient(lrn_layer(params), [blob((2, 6, 3, 4), low=-2, high=2)], empty())


@pytest.mark.parametrize("params,shape,message", [
    ("local_size: 4", (1, 3, 2, 2), "odd values for local_size, got 4"),
    ("", (2, 3, 4), "4-axis"),
])
def test_lrn_errors(params, shape, message):
    with pytest.raises(CaffeishError, match=message):
        lrn_layer(params).setup([blob(shape)], empty())


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_in_place_matches(region):
    params = f"norm_region: {region} local_size: 3 alpha: 2"
    x = blob((1, 4, 3, 3))
    dy = numpy.random.default_rng(2).standard_normal(x.shape)
    layer, top = lrn_layer(params), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = dy
    layer.backward(top, [True], [x])
    y = blob(x.data.copy())
    inplace = lrn_layer(params)
    inplace.setup([y], [y])
    inplace.Forward([y], [y])
    numpy.testing.assert_allclose(y.data, top[0].data, rtol=1e-12)
    y.diff[...] = dy
    inplace.backward([y], [True], [y])
    numpy.testing.assert_allclose(y.diff, x.diff, rtol=1e-12)

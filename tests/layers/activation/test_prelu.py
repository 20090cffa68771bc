import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLER = 'filler { type: "uniform" min: 0.1 max: 0.9 }'


def reference(x, slopes, shared):
    y = numpy.empty_like(x)
    n, c = x.shape[:2]
    for i in range(n):
        for j in range(c):
            a = slopes.ravel()[0] if shared else slopes[j]
            for k, v in numpy.ndenumerate(x[i, j]):
                y[(i, j) + k] = v if v > 0 else a * v
    return y


@checks_forward("PReLU")
@pytest.mark.parametrize("shared,shape", [(False, (2, 3, 2, 2)), (True, (2, 3, 2)), (False, (4, 5))])
def test_prelu_forward(shared, shape):
    layer = make_layer(f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} {FILLER} }}')
    x, top = blob(shape), empty()
    layer.setup([x], top)
    assert layer.blobs[0].shape == (() if shared else (shape[1],))
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, reference(x.data, layer.blobs[0].data, shared), rtol=1e-14)


def test_prelu_default_slope_is_a_quarter():
    layer = make_layer('type: "PReLU"')
    layer.setup([blob((2, 3, 4))], empty())
    numpy.testing.assert_array_equal(layer.blobs[0].data, [0.25, 0.25, 0.25])


@checks_gradient("PReLU")
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient(shared):
    layer = make_layer(f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} {FILLER} }}')
    check_gradient(layer, [blob((2, 3, 2, 2))], empty(), kink_range=1e-2)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_in_place_keeps_bottom(shared):
    text = f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} {FILLER} }}'
    x_values = numpy.random.default_rng(2).uniform(-1, 1, size=(2, 3, 4))
    dy = numpy.random.default_rng(3).uniform(-1, 1, size=(2, 3, 4))
    sep = make_layer(text)
    x, top = blob(x_values), empty()
    sep.setup([x], top)
    sep.Forward([x], top)
    top[0].diff[...] = dy
    sep.backward(top, [True], [x])

    inp = make_layer(text)
    xi = blob(x_values)
    inp.setup([xi], [xi])
    inp.blobs[0].data[...] = sep.blobs[0].data
    inp.Forward([xi], [xi])
    numpy.testing.assert_allclose(xi.data, top[0].data)
    xi.diff[...] = dy
    inp.backward([xi], [True], [xi])
    numpy.testing.assert_allclose(xi.diff, x.diff)
    numpy.testing.assert_allclose(inp.blobs[0].diff, sep.blobs[0].diff)


def test_prelu_slope_gradient_accumulates():
    layer = make_layer('type: "PReLU"')
    x, top = blob((2, 3, 4)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False], [x])
    once = layer.blobs[0].diff.copy()
    layer.backward(top, [False], [x])
    numpy.testing.assert_allclose(layer.blobs[0].diff, 2 * once)
    numpy.testing.assert_allclose(once, numpy.minimum(x.data, 0).sum(axis=(0, 2)))


def test_prelu_errors():
    with pytest.raises(CaffeishError, match="at least 2 axes"):
        make_layer('type: "PReLU"').setup([blob((5,))], empty())
    layer = make_layer('type: "PReLU"')
    layer.setup([blob((2, 3))], empty())
    with pytest.raises(CaffeishError, match="3 slopes"):
        layer.reshape([blob((2, 4))], empty())

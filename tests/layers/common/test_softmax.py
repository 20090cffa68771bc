import math

import numpy
import pytest

from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def reference(x, axis):
    """Softmax by explicit loops over every fibre along ``axis``."""
    moved = numpy.moveaxis(x, axis, -1)
    out = numpy.empty_like(moved)
    for idx in numpy.ndindex(moved.shape[:-1]):
        exps = [math.exp(v) for v in moved[idx]]
        total = sum(exps)
        out[idx] = [e / total for e in exps]
    return numpy.moveaxis(out, -1, axis)


@checks_forward("Softmax")
@pytest.mark.parametrize("axis", [1, 0, 2, -1])
def test_softmax_forward(axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}')
    x = blob((2, 3, 4), low=-3, high=3)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, reference(x.data, axis), rtol=1e-12)
    numpy.testing.assert_allclose(top[0].data.sum(axis=axis), 1.0)


def test_softmax_large_values_are_stable():
    layer = make_layer('type: "Softmax"', dtype=numpy.float32)
    x = blob(numpy.array([[1000.0, 1000.0, 990.0], [-1000.0, -1000.0, -1000.0]]), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    layer.Forward([x], top)
    assert numpy.isfinite(top[0].data).all()
    numpy.testing.assert_allclose(top[0].data[1], 1 / 3, rtol=1e-6)
    numpy.testing.assert_allclose(top[0].data[0, :2], 0.5, rtol=1e-4)


@checks_gradient("Softmax")
@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}')
    check_gradient(layer, [blob((2, 3, 2))], empty())


def test_softmax_in_place():
    x_values = numpy.random.default_rng(1).uniform(-2, 2, size=(3, 4, 2))
    dy = numpy.random.default_rng(2).uniform(-1, 1, size=(3, 4, 2))
    layer = make_layer('type: "Softmax"')
    x, top = blob(x_values), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = dy
    layer.backward(top, [True], [x])

    xi = blob(x_values)
    layer2 = make_layer('type: "Softmax"')
    layer2.setup([xi], [xi])
    layer2.Forward([xi], [xi])
    numpy.testing.assert_allclose(xi.data, top[0].data)
    xi.diff[...] = dy
    layer2.backward([xi], [True], [xi])
    numpy.testing.assert_allclose(xi.diff, x.diff)

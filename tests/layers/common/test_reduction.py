import numpy
import pytest

from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

OPS = {"SUM": lambda v: v, "ASUM": abs, "SUMSQ": lambda v: v * v, "MEAN": lambda v: v}


def reference(x, op, axis, coeff):
    lead = x.shape[:axis]
    rows = x.reshape(int(numpy.prod(lead)), -1)
    out = []
    for row in rows:
        total = 0.0
        for v in row:
            total += OPS[op](float(v))
        if op == "MEAN":
            total /= row.size
        out.append(total * coeff)
    return numpy.array(out).reshape(lead)


@checks_forward("Reduction")
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 0.5), (2, -2.0), (-1, 1.0)])
def test_reduction_forward(op, axis, coeff):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}')
    x, top = blob((2, 3, 4)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == x.shape[:axis % 3]
    numpy.testing.assert_allclose(top[0].data, reference(x.data, op, axis % 3, coeff), rtol=1e-12)


def test_reduction_default_is_sum_to_a_scalar():
    layer = make_layer('type: "Reduction"')
    x, top = blob((2, 3)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == ()
    numpy.testing.assert_allclose(top[0].data, x.data.sum())


@checks_gradient("Reduction")
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, -0.5), (2, 2.0)])
def test_reduction_gradient(op, axis, coeff):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}')
    check_gradient(layer, [blob((2, 3, 2))], empty(), kink_range=1e-2 if op == "ASUM" else -1.0)

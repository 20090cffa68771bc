import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@checks_forward("EuclideanLoss")
@pytest.mark.parametrize("shape_a,shape_b", [((4, 3), (4, 3)), ((2, 3, 2), (2, 6))])
def test_euclidean_loss_forward(shape_a, shape_b):
    layer = make_layer('type: "EuclideanLoss"')
    a = blob(shape_a, rng=numpy.random.default_rng(1))
    b = blob(shape_b, rng=numpy.random.default_rng(2))
    top = empty()
    layer.setup([a, b], top)
    loss = layer.Forward([a, b], top)
    fa, fb = a.data.ravel(), b.data.ravel()
    expected = sum((fa[i] - fb[i]) ** 2 for i in range(fa.size)) / shape_a[0] / 2
    numpy.testing.assert_allclose(float(top[0].data), expected, rtol=1e-12)
    numpy.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_euclidean_loss_backward_both_bottoms_scaled_by_loss_weight():
    layer = make_layer('type: "EuclideanLoss"')
    a, b = blob((3, 2), rng=numpy.random.default_rng(1)), blob((3, 2), rng=numpy.random.default_rng(2))
    top = empty()
    layer.setup([a, b], top)
    layer.Forward([a, b], top)
    top[0].diff[...] = 3.0
    layer.backward(top, [True, True], [a, b])
    numpy.testing.assert_allclose(a.diff, 3.0 * (a.data - b.data) / 3)
    numpy.testing.assert_allclose(b.diff, -3.0 * (a.data - b.data) / 3)
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


def test_euclidean_loss_rejects_mismatched_counts():
    with pytest.raises(CaffeishError, match="same dimension"):
        make_layer('type: "EuclideanLoss"').setup([blob((2, 3)), blob((2, 4))], empty())


@checks_gradient("EuclideanLoss")
def test_euclidean_loss_gradient():
    layer = make_layer('type: "EuclideanLoss"')
    a = blob((3, 2, 2), rng=numpy.random.default_rng(1))
    b = blob((3, 2, 2), rng=numpy.random.default_rng(2))
    check_gradient(layer, [a, b], empty())

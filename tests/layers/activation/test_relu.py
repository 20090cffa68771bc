import numpy
import pytest

from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@checks_forward("ReLU")
@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_relu_forward(slope):
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    x = blob((2, 3, 4, 5))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    ref = numpy.where(x.data > 0, x.data, slope * x.data)
    numpy.testing.assert_allclose(top[0].data, ref)


@checks_gradient("ReLU")
@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_relu_gradient(slope):
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    check_gradient(layer, [blob((2, 3, 3, 2))], empty(), kink=0.0, kink_range=1e-2)


def test_relu_in_place_backward():
    layer = make_layer('type: "ReLU"')
    x = blob((3, 4))
    orig = x.data.copy()
    layer.setup([x], [x])
    layer.Forward([x], [x])
    x.diff[...] = 1.0
    layer.backward([x], [True], [x])
    numpy.testing.assert_array_equal(x.diff, (orig > 0).astype(float))

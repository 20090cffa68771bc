import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import empty, make_layer


@checks_forward("Parameter")
def test_parameter_forward():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    top = empty()
    layer.setup([], top)
    assert layer.blobs[0].shape == (2, 3) and top[0].shape == (2, 3)
    numpy.testing.assert_array_equal(layer.blobs[0].data, 0.0)
    values = numpy.arange(6.0).reshape(2, 3)
    layer.blobs[0].data[...] = values
    layer.Forward([], top)
    numpy.testing.assert_array_equal(top[0].data, values)
    # The top is a copy: writing it leaves the parameter alone.
    top[0].data[...] = -1
    numpy.testing.assert_array_equal(layer.blobs[0].data, values)


@checks_gradient("Parameter")
def test_parameter_gradient():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 3 dim: 2 } }')
    top = empty()
    layer.setup([], top)
    layer.blobs[0].data[...] = numpy.random.default_rng(0).uniform(-1, 1, size=(3, 2))
    check_gradient(layer, [], top, setup=False)


def test_parameter_backward_accumulates():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 4 } }')
    top = empty()
    layer.setup([], top)
    layer.Forward([], top)
    top[0].diff[...] = [1, 2, 3, 4]
    layer.backward(top, [], [])
    layer.backward(top, [], [])
    numpy.testing.assert_array_equal(layer.blobs[0].diff, [2, 4, 6, 8])


def test_parameter_given_blob_must_match():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 4 } } blobs { shape { dim: 3 } }')
    with pytest.raises(CaffeishError, match=r"needs parameter blob 0 \(parameter\) of shape \(4,\), but it has shape \(3,\)"):
        layer.setup([], empty())

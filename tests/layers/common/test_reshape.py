import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def _shape(*dims):
    return "shape { " + " ".join(f"dim: {d}" for d in dims) + " }"


@checks_forward("Reshape")
@pytest.mark.parametrize("param, shape, expected", [
    (_shape(6, 4), (2, 3, 4), (6, 4)),
    (_shape(0, -1), (2, 3, 4), (2, 12)),
    (_shape(-1), (2, 3, 4), (24,)),
    (_shape(0, 0, 2, 2), (2, 3, 4), (2, 3, 2, 2)),
    (_shape(2, -1) + " axis: 1", (2, 4, 5), (2, 2, 10)),
    (_shape(3, 2) + " axis: 1 num_axes: 1", (2, 6, 5), (2, 3, 2, 5)),
    (_shape(1) + " axis: 0 num_axes: 0", (2, 3), (1, 2, 3)),
    (_shape(1) + " axis: -1 num_axes: 0", (2, 3), (2, 3, 1)),
    (_shape(-1) + " axis: -3 num_axes: 2", (2, 3, 4), (2, 12)),   # -3 + 3 + 1 = axis 1
    (_shape(0, -1) + " axis: 1", (2, 3, 4, 5), (2, 3, 20)),
    (_shape(), (1, 1, 1), ()),  # no dims: every axis is dropped
])
def test_reshape_forward(param, shape, expected):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {param} }}')
    bottom = [blob(shape)]
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    assert top[0].shape == expected
    numpy.testing.assert_array_equal(top[0].data, bottom[0].data.reshape(expected))
    assert top[0].shares_data_with(bottom[0])


def test_reshape_follows_batch_size():
    layer = make_layer(f'type: "Reshape" reshape_param {{ {_shape(0, -1, 2)} }}')
    top = empty()
    layer.setup([blob((2, 3, 4))], top)
    assert top[0].shape == (2, 6, 2)
    bigger = [blob((5, 3, 4))]
    layer.Forward(bigger, top)
    assert top[0].shape == (5, 6, 2)
    numpy.testing.assert_array_equal(top[0].data, bigger[0].data.reshape(5, 6, 2))
    top[0].diff[...] = 1.5
    layer.Backward(top, [True], bigger)
    assert (bigger[0].diff == 1.5).all()


@pytest.mark.parametrize("param, shape, match", [
    (_shape(5, 5), (2, 3, 4), r"top shape \(5, 5\).*shape \(2, 3, 4\) \(24 elements\).*counts must match"),
    (_shape(-1, -1), (2, 3, 4), "at most one"),
    (_shape(-1, 5), (2, 3, 4), r"cannot infer.*\(2, 3, 4\).*24 elements.*product 5"),
    (_shape(0, 0, 0, 0), (2, 3, 4), "has a 0 at position 3.*no axis 3"),
    (_shape(2, -2), (2, 3, 4), "dim -2"),
    (_shape(-1) + " axis: 4", (2, 3, 4), "axis 4 is out of range"),
    (_shape(-1) + " axis: -5", (2, 3, 4), "axis -5 is out of range"),
    (_shape(-1) + " axis: 2 num_axes: 2", (2, 3, 4), "goes past the last axis"),
    (_shape(-1) + " num_axes: -2", (2, 3, 4), "num_axes is -2"),
])
def test_reshape_errors(param, shape, match):
    with pytest.raises(CaffeishError, match=match):
        make_layer(f'type: "Reshape" reshape_param {{ {param} }}').setup([blob(shape)], empty())


@checks_gradient("Reshape")
@pytest.mark.parametrize("param", [_shape(0, -1), _shape(3, 2) + " axis: 1 num_axes: 1"])
def test_reshape_gradient(param):
    check_gradient(make_layer(f'type: "Reshape" reshape_param {{ {param} }}'), [blob((2, 6, 2))], empty())

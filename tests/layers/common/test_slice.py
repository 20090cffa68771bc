import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@checks_forward("Slice")
@pytest.mark.parametrize("param, shape, ntop, axis, points", [
    ("slice_param { slice_point: 1 slice_point: 4 }", (2, 6, 3), 3, 1, [1, 4]),
    ("slice_param { axis: 0 }", (6, 2, 2), 3, 0, [2, 4]),
    ("slice_param { axis: -1 slice_point: 3 }", (2, 2, 5), 2, 2, [3]),
    ("slice_param { slice_dim: 0 slice_point: 1 }", (3, 4), 2, 0, [1]),
    ("", (2, 4, 3), 2, 1, [2]),
])
def test_slice_forward(param, shape, ntop, axis, points):
    layer = make_layer(f'type: "Slice" {param}')
    bottom = [blob(shape)]
    top = empty(ntop)
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    refs = numpy.split(bottom[0].data, points, axis=axis)
    for t, ref in zip(top, refs):
        assert t.shape == ref.shape
        numpy.testing.assert_array_equal(t.data, ref)


def test_slice_backward_writes_each_part():
    layer = make_layer('type: "Slice" slice_param { slice_point: 1 }')
    bottom = [blob((2, 3))]
    top = empty(2)
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1.0
    top[1].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, [[1, 2, 2], [1, 2, 2]])


def test_slice_single_top_shares():
    layer = make_layer('type: "Slice"')
    bottom = [blob((2, 3))]
    top = empty(1)
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    assert top[0].shares_data_with(bottom[0])
    numpy.testing.assert_array_equal(top[0].data, bottom[0].data)
    top[0].diff[...] = 3.0
    assert (bottom[0].diff == 3.0).all()


@pytest.mark.parametrize("param, shape, ntop, match", [
    ("slice_param { slice_point: 1 }", (2, 6), 3, "gives 1 points.*3 tops need 2"),
    ("slice_param { slice_point: 3 slice_point: 2 }", (2, 6), 3, "strictly increasing"),
    ("slice_param { slice_point: 0 }", (2, 6), 2, "strictly increasing"),
    ("slice_param { slice_point: 6 }", (2, 6), 2, r"inside \(0, 6\)"),
    ("slice_param { slice_point: 9 }", (2, 6), 2, r"inside \(0, 6\)"),
    ("", (2, 5), 2, r"2 tops do not evenly divide axis 1 \(size 5\)"),
    ("slice_param { axis: 1 slice_dim: 1 }", (2, 6), 2, "both axis"),
    ("slice_param { slice_dim: 2 }", (2, 6), 2, "slice_dim 2 is out of range"),
    ("slice_param { axis: 2 }", (2, 6), 2, "out of range"),
])
def test_slice_errors(param, shape, ntop, match):
    with pytest.raises(CaffeishError, match=match):
        make_layer(f'type: "Slice" {param}').setup([blob(shape)], empty(ntop))


@checks_gradient("Slice")
@pytest.mark.parametrize("param, shape, ntop", [
    ("slice_param { slice_point: 1 slice_point: 3 }", (2, 4, 3), 3),
    ("slice_param { axis: 0 }", (4, 3, 2), 2),
    ("slice_param { axis: -1 slice_point: 2 }", (2, 3, 3), 2),
    ("", (2, 3), 1),
])
def test_slice_gradient(param, shape, ntop):
    check_gradient(make_layer(f'type: "Slice" {param}'), [blob(shape)], empty(ntop))

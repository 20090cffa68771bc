import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def filter_layer():
    return make_layer('type: "Filter"')


@checks_forward("Filter")
def test_filter_forward_selects_items_in_order():
    data = blob((4, 3, 2, 2))
    labels = blob(numpy.arange(4.0))
    selector = blob(numpy.array([0.0, 1.0, 0.0, -2.5]).reshape(4, 1))
    layer = filter_layer()
    top = empty(2)
    bottom = [data, labels, selector]
    layer.setup(bottom, top)
    # Caffe's first reshape keeps every item, so that a Net can be built before any data is seen.
    assert top[0].shape == (4, 3, 2, 2) and top[1].shape == (4,)
    layer.Forward(bottom, top)
    kept = [i for i in range(4) if selector.data[i, 0] != 0]
    assert kept == [1, 3]
    assert top[0].shape == (2, 3, 2, 2) and top[1].shape == (2,)
    numpy.testing.assert_array_equal(top[0].data, numpy.stack([data.data[i] for i in kept]))
    numpy.testing.assert_array_equal(top[1].data, [1.0, 3.0])


def test_filter_nothing_selected_gives_empty_tops():
    data, selector = blob((3, 2)), blob(numpy.zeros((3,)))
    layer = filter_layer()
    top = empty()
    layer.setup([data, selector], top)
    layer.Forward([data, selector], top)
    assert top[0].shape == (0, 2)
    data.diff[...] = 5.0
    layer.backward(top, [True, False], [data, selector])
    numpy.testing.assert_array_equal(data.diff, 0.0)


def test_filter_backward_zeros_unselected_and_refuses_the_selector():
    data, selector = blob((4, 2)), blob(numpy.array([[1.0], [0.0], [0.0], [1.0]]))
    layer = filter_layer()
    top = empty()
    layer.setup([data, selector], top)
    layer.Forward([data, selector], top)
    data.diff[...] = 9.0
    top[0].diff[...] = [[1, 2], [3, 4]]
    layer.backward(top, [True, False], [data, selector])
    numpy.testing.assert_array_equal(data.diff, [[1, 2], [0, 0], [0, 0], [3, 4]])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(CaffeishError, match="cannot backpropagate to its selector"):
        layer.backward(top, [True, True], [data, selector])


@checks_gradient("Filter")
def test_filter_gradient():
    data, other = blob((4, 2, 3)), blob((4, 3), rng=numpy.random.default_rng(1))
    selector = blob(numpy.array([1.0, 0.0, 1.0, 1.0]).reshape(4, 1, 1))
    check_gradient(filter_layer(), [data, other, selector], empty(2), check_bottom=[0, 1])


@pytest.mark.parametrize("shapes,ntop,message", [
    ([(4, 2), (4, 2)], 1, "shape \\(N, 1, ...\\)"),
    ([(4, 2), (3, 1)], 1, "bottom 0 of shape \\(4, 2\\) must have the selector's first axis, 3"),
    ([(4, 2), (4, 2), (4,)], 1, "3 bottoms need 2 tops, but 1 given"),
])
def test_filter_errors(shapes, ntop, message):
    with pytest.raises(CaffeishError, match=message):
        filter_layer().setup([blob(s) for s in shapes], empty(ntop))

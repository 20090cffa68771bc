import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def reindex_layer():
    return make_layer('type: "BatchReindex"')


@checks_forward("BatchReindex")
def test_batch_reindex_forward():
    # Caffe's TestForward: 5 items, indices with repeats, float indices truncated.
    x = blob((5, 4, 3, 2))
    index = blob(numpy.array([2.0, 0.0, 1.0, 2.0, 3.0, 2.9, 4.0]))
    layer = reindex_layer()
    top = empty()
    layer.setup([x, index], top)
    layer.Forward([x, index], top)
    assert top[0].shape == (7, 4, 3, 2)
    for k, i in enumerate([2, 0, 1, 2, 3, 2, 4]):
        numpy.testing.assert_array_equal(top[0].data[k], x.data[i])


def test_batch_reindex_backward_accumulates():
    x = blob((3, 2))
    index = blob(numpy.array([1.0, 1.0, 2.0]))
    layer = reindex_layer()
    top = empty()
    layer.setup([x, index], top)
    layer.Forward([x, index], top)
    x.diff[...] = 7.0
    top[0].diff[...] = [[1, 2], [10, 20], [100, 200]]
    layer.backward(top, [True, False], [x, index])
    numpy.testing.assert_array_equal(x.diff, [[0, 0], [11, 22], [100, 200]])
    with pytest.raises(CaffeishError, match="cannot backpropagate to its index"):
        layer.backward(top, [True, True], [x, index])
    assert not layer.allow_force_backward(1)


@checks_gradient("BatchReindex")
def test_batch_reindex_gradient():
    x = blob((4, 2, 3))
    index = blob(numpy.array([3.0, 0.0, 3.0, 1.0, 3.0]))
    check_gradient(reindex_layer(), [x, index], empty(), check_bottom=[0])


@pytest.mark.parametrize("values,message", [
    ([0.0, 4.0], "index 4 is out of range for a batch of 4"),
    ([-0.5], "index -0.5 is out of range"),
    ([float("nan")], "index nan is out of range"),
])
def test_batch_reindex_errors(values, message):
    x, index = blob((4, 2)), blob(numpy.array(values))
    layer = reindex_layer()
    top = empty()
    layer.setup([x, index], top)
    with pytest.raises(CaffeishError, match=message):
        layer.Forward([x, index], top)


def test_batch_reindex_index_must_be_1d():
    with pytest.raises(CaffeishError, match="exactly 1 axis"):
        reindex_layer().setup([blob((4, 2)), blob((2, 1))], empty())

import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import checks_forward
from helpers import blob, empty, make_layer


def caffe_top_k(values, k):
    """std::partial_sort of (value, index) pairs with std::greater: value descending, then index descending."""
    pairs = sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)
    return pairs[:k]


def reference_no_axis(x, k, out_max_val):
    n = x.shape[0]
    out = numpy.zeros((n, 2 if out_max_val else 1, k))
    for i in range(n):
        for j, (v, idx) in enumerate(caffe_top_k(x[i].ravel(), k)):
            out[i, 0, j] = idx
            if out_max_val:
                out[i, 1, j] = v
    return out


def reference_axis(x, k, out_max_val, axis):
    moved = numpy.moveaxis(x, axis, -1)
    out = numpy.zeros(moved.shape[:-1] + (k,))
    for idx in numpy.ndindex(*moved.shape[:-1]):
        for j, (v, i) in enumerate(caffe_top_k(moved[idx], k)):
            out[idx + (j,)] = v if out_max_val else i
    return numpy.moveaxis(out, -1, axis)


def tied(shape, seed=0):
    """Values drawn from a few levels, so that ties are common."""
    return numpy.random.default_rng(seed).integers(0, 4, size=shape).astype(float)


@checks_forward("ArgMax")
@pytest.mark.parametrize("shape", [(3, 10), (2, 3, 2, 2), (4, 5, 1)])
@pytest.mark.parametrize("k,out_max_val", [(1, False), (3, False), (1, True), (4, True)])
def test_argmax_forward_no_axis(shape, k, out_max_val):
    layer = make_layer(f'type: "ArgMax" argmax_param {{ top_k: {k} out_max_val: {str(out_max_val).lower()} }}')
    x, top = blob(tied(shape)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    expected_shape = [1] * max(len(shape), 3)
    expected_shape[:3] = [shape[0], 2 if out_max_val else 1, k]
    assert top[0].shape == tuple(expected_shape)
    numpy.testing.assert_array_equal(top[0].data.reshape(shape[0], -1, k), reference_no_axis(x.data, k, out_max_val))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("k,out_max_val", [(1, False), (2, False), (2, True)])
def test_argmax_forward_axis(axis, k, out_max_val):
    layer = make_layer(f'type: "ArgMax" argmax_param {{ top_k: {k} axis: {axis} '
                       f'out_max_val: {str(out_max_val).lower()} }}')
    x, top = blob(tied((3, 4, 5), seed=1)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    shape = list(x.shape)
    shape[axis] = k
    assert top[0].shape == tuple(shape)
    numpy.testing.assert_array_equal(top[0].data, reference_axis(x.data, k, out_max_val, axis % 3))


def test_argmax_ties_take_the_larger_index():
    layer = make_layer('type: "ArgMax" argmax_param { top_k: 3 }')
    x, top = blob(numpy.array([[1.0, 5.0, 5.0, 2.0, 5.0]])), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data.ravel(), [4, 2, 1])


def test_argmax_no_backward_and_errors():
    assert not make_layer('type: "ArgMax"').has_backward
    with pytest.raises(CaffeishError, match="top_k"):
        make_layer('type: "ArgMax" argmax_param { top_k: 7 }').setup([blob((2, 3, 2))], empty())
    with pytest.raises(CaffeishError, match="top_k"):
        make_layer('type: "ArgMax" argmax_param { top_k: 4 axis: 1 }').setup([blob((2, 3, 2))], empty())
    with pytest.raises(CaffeishError, match="top_k must be at least 1"):
        make_layer('type: "ArgMax" argmax_param { top_k: 0 }').setup([blob((2, 3))], empty())

import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "uniform" min: -1 max: 1 }'


def ip(num_output=4, extra=""):
    return make_layer(f'type: "InnerProduct" inner_product_param {{ num_output: {num_output} {FILLERS} {extra} }}')


def reference(x, w, b, axis, transpose):
    M = int(numpy.prod(x.shape[:axis]))
    x2 = x.reshape(M, -1)
    W = w.T if transpose else w          # N x K
    y = numpy.zeros((M, W.shape[0]))
    for m in range(M):
        for n in range(W.shape[0]):
            y[m, n] = sum(x2[m, k] * W[n, k] for k in range(W.shape[1])) + (b[n] if b is not None else 0.0)
    return y.reshape(x.shape[:axis] + (W.shape[0],))


@checks_forward("InnerProduct")
@pytest.mark.parametrize("axis,transpose,bias", [(1, False, True), (1, True, True), (2, False, False),
                                                 (-1, True, False), (0, False, True)])
def test_inner_product_forward(axis, transpose, bias):
    layer = ip(3, f"axis: {axis} transpose: {str(transpose).lower()} bias_term: {str(bias).lower()}")
    x = blob((2, 3, 2, 2))
    top = empty()
    layer.setup([x], top)
    canonical = axis % 4
    K = int(numpy.prod(x.shape[canonical:]))
    assert layer.blobs[0].shape == ((K, 3) if transpose else (3, K))
    assert len(layer.blobs) == (2 if bias else 1)
    if bias:
        assert layer.blobs[1].shape == (3,)
    layer.Forward([x], top)
    assert top[0].shape == x.shape[:canonical] + (3,)
    ref = reference(x.data, layer.blobs[0].data, layer.blobs[1].data if bias else None, canonical, transpose)
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-12, atol=1e-12)


def test_inner_product_default_fillers_are_zero_and_float32():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', dtype=numpy.float32)
    x = blob((3, 5), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].data.dtype == numpy.float32 and top[0].shape == (3, 2)
    assert not top[0].data.any()


def test_inner_product_rejects_changed_input_size():
    layer = ip(2)
    layer.setup([blob((2, 6))], empty())
    layer.Forward([blob((5, 6))], empty())          # a new batch size is fine
    with pytest.raises(CaffeishError, match="incompatible"):
        layer.Forward([blob((2, 7))], empty())


def test_inner_product_param_diffs_accumulate():
    layer = ip(3)
    x = blob((2, 4))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], [x])
    first = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], [x])
    for b, f in zip(layer.blobs, first):
        numpy.testing.assert_allclose(b.diff, 2 * f)
    numpy.testing.assert_allclose(layer.blobs[1].diff, [4.0, 4.0, 4.0])


@checks_gradient("InnerProduct")
@pytest.mark.parametrize("axis,transpose,bias", [(1, False, True), (1, True, True), (2, True, False)])
def test_inner_product_gradient(axis, transpose, bias):
    layer = ip(3, f"axis: {axis} transpose: {str(transpose).lower()} bias_term: {str(bias).lower()}")
    check_gradient(layer, [blob((2, 3, 2, 2))], empty())

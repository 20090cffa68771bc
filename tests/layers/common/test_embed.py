import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLERS = 'weight_filler { type: "uniform" min: -1 max: 1 } bias_filler { type: "uniform" min: -1 max: 1 }'


def embed(bias=True, k=5, n=3):
    return make_layer(f'type: "Embed" embed_param {{ num_output: {n} input_dim: {k} '
                      f'bias_term: {str(bias).lower()} {FILLERS} }}')


def indices(shape, k=5, seed=0):
    return numpy.random.default_rng(seed).integers(0, k, size=shape).astype(float)


@checks_forward("Embed")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 1, 3)])
def test_embed_forward(bias, shape):
    layer = embed(bias)
    x, top = blob(indices(shape)), empty()
    layer.setup([x], top)
    assert layer.blobs[0].shape == (5, 3)
    assert len(layer.blobs) == (2 if bias else 1)
    layer.Forward([x], top)
    assert top[0].shape == shape + (3,)
    w = layer.blobs[0].data
    for idx, v in numpy.ndenumerate(x.data):
        expected = w[int(v)] + (layer.blobs[1].data if bias else 0.0)
        numpy.testing.assert_allclose(top[0].data[idx], expected, rtol=1e-15)


@checks_gradient("Embed")
@pytest.mark.parametrize("bias", [True, False])
def test_embed_gradient(bias):
    # Repeated indices: their gradients must add up in the same weight row.
    x = blob(numpy.array([[0.0, 2.0, 2.0], [4.0, 0.0, 2.0]]))
    check_gradient(embed(bias), [x], empty(), check_bottom=[])


def test_embed_weight_gradient_accumulates_repeats():
    layer = embed(False, k=3, n=2)
    x, top = blob(numpy.array([1.0, 1.0, 2.0])), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = [[1, 2], [3, 4], [5, 6]]
    layer.backward(top, [False], [x])
    numpy.testing.assert_array_equal(layer.blobs[0].diff, [[0, 0], [4, 6], [5, 6]])


@pytest.mark.parametrize("bad", [5.0, -1.0, 1.5])
def test_embed_rejects_bad_index(bad):
    layer = embed()
    x, top = blob(numpy.array([0.0, bad, 1.0])), empty()
    layer.setup([x], top)
    with pytest.raises(CaffeishError, match=f"{bad:g} at position 1"):
        layer.Forward([x], top)


def test_embed_no_gradient_to_indices():
    layer = embed()
    assert not layer.allow_force_backward(0)
    x, top = blob(indices((3,))), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    with pytest.raises(CaffeishError, match="propagate_down"):
        layer.backward(top, [True], [x])


def test_embed_parameter_errors():
    with pytest.raises(CaffeishError, match="num_output"):
        make_layer('type: "Embed" embed_param { input_dim: 3 }').setup([blob((2,))], empty())
    with pytest.raises(CaffeishError, match="input_dim"):
        make_layer('type: "Embed" embed_param { num_output: 3 }').setup([blob((2,))], empty())
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false } '
                       'blobs { shape { dim: 2 dim: 3 } }')
    with pytest.raises(CaffeishError, match=r"needs parameter blob 0 \(weights\) of shape \(3, 2\), but it has "
                                            r"shape \(2, 3\)"):
        layer.setup([blob((2,))], empty())
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 } blobs { shape { dim: 3 dim: 2 } }')
    with pytest.raises(CaffeishError, match=r"needs 2 parameter blobs \(weights \(3, 2\), bias \(2,\)\), but the "
                                            r"layer has 1"):
        layer.setup([blob((2,))], empty())

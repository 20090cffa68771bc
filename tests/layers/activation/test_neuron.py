import numpy
import pytest

from caffeish import CaffeishError, backend, caffe_pb2
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FUNCS = {"Sigmoid": lambda x: 1.0 / (1.0 + numpy.exp(-x)), "TanH": numpy.tanh}


@checks_forward("Sigmoid", "TanH")
@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_neuron_forward(kind):
    layer = make_layer(f'type: "{kind}"')
    x = blob((2, 3, 4), low=-5, high=5)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, FUNCS[kind](x.data), rtol=1e-12, atol=1e-15)


def test_sigmoid_saturates_without_overflow():
    layer = make_layer('type: "Sigmoid"', dtype=numpy.float32)
    x = blob(numpy.array([-1000.0, -80.0, 0.0, 80.0, 1000.0]), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    with numpy.errstate(all="raise"):
        layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)


@checks_gradient("Sigmoid", "TanH")
@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_neuron_gradient(kind):
    check_gradient(make_layer(f'type: "{kind}"'), [blob((2, 3, 2), low=-3, high=3)], empty())


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_neuron_in_place(kind):
    x_values = numpy.random.default_rng(3).uniform(-3, 3, size=(3, 4))
    separate = make_layer(f'type: "{kind}"')
    x, top = blob(x_values), empty()
    separate.setup([x], top)
    separate.Forward([x], top)
    dy = numpy.random.default_rng(4).uniform(-1, 1, size=(3, 4))
    top[0].diff[...] = dy
    separate.backward(top, [True], [x])

    inplace = make_layer(f'type: "{kind}"')
    xi = blob(x_values)
    inplace.setup([xi], [xi])
    inplace.Forward([xi], [xi])
    numpy.testing.assert_allclose(xi.data, top[0].data)
    xi.diff[...] = dy
    inplace.backward([xi], [True], [xi])
    numpy.testing.assert_allclose(xi.diff, x.diff)
    y = FUNCS[kind](x_values)
    expected = dy * y * (1 - y) if kind == "Sigmoid" else dy * (1 - y * y)
    numpy.testing.assert_allclose(xi.diff, expected, rtol=1e-10)


def dropout(ratio, phase=caffe_pb2.TRAIN, dtype=numpy.float64):
    return make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}', phase=phase, dtype=dtype)


@checks_forward("Dropout")
@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_dropout_train_forward(ratio):
    layer = dropout(ratio)
    x = blob(numpy.ones((100, 100)) * 3.0)
    top = empty()
    layer.setup([x], top)
    backend.set_random_seed(5)
    layer.Forward([x], top)
    y = top[0].data
    ratio32 = float(numpy.float32(ratio))       # dropout_ratio is a float field
    kept = y != 0
    numpy.testing.assert_allclose(y[kept], 3.0 / (1.0 - ratio32))
    assert abs(kept.mean() - (1.0 - ratio)) < 0.02
    # The mask is a plain reference: uniform draws >= ratio, from the seeded generator.
    backend.set_random_seed(5)
    u = backend.random_uniform(numpy, (100, 100), numpy.float64)
    numpy.testing.assert_array_equal(kept, u >= ratio32)
    # Re-seeding repeats the mask.
    backend.set_random_seed(5)
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data, y)


def test_dropout_test_phase_is_identity():
    layer = dropout(0.5, phase=caffe_pb2.TEST)
    x = blob((4, 5))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data, x.data)
    top[0].diff[...] = 2.0
    layer.backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, 2.0)
    # in place as well
    xi = blob((4, 5))
    orig = xi.data.copy()
    layer.Forward([xi], [xi])
    numpy.testing.assert_array_equal(xi.data, orig)


def test_dropout_in_place_backward_uses_forward_mask():
    layer = dropout(0.5)
    x = blob((6, 7))
    orig = x.data.copy()
    layer.setup([x], [x])
    backend.set_random_seed(11)
    layer.Forward([x], [x])
    kept = x.data != 0
    numpy.testing.assert_allclose(x.data[kept], orig[kept] * 2.0)
    x.diff[...] = 1.0
    layer.backward([x], [True], [x])
    numpy.testing.assert_array_equal(x.diff, kept * 2.0)


def test_dropout_float32():
    layer = dropout(0.5, dtype=numpy.float32)
    x = blob((10, 10), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].data.dtype == numpy.float32


def test_dropout_rejects_bad_ratio():
    with pytest.raises(CaffeishError, match="dropout_ratio"):
        dropout(1.0).setup([blob((2, 2))], empty())


@checks_gradient("Dropout")
@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_dropout_gradient(phase):
    check_gradient(dropout(0.5, phase=phase), [blob((3, 4, 2))], empty())

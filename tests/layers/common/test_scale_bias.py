import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLERS = 'filler { type: "uniform" min: -1 max: 1 } bias_filler { type: "uniform" min: -1 max: 1 }'


def reference(x, operand, axis, op):
    """Loop over every element of x, finding the operand element it meets (Caffe's outer/dim/inner walk)."""
    operand = numpy.asarray(operand)
    axis = 0 if operand.ndim == 0 else axis % x.ndim
    y = numpy.empty_like(x)
    for idx, v in numpy.ndenumerate(x):
        o = operand[idx[axis:axis + operand.ndim]]
        y[idx] = v * o if op == "mul" else v + o
    return y


# (bottom shape, axis, num_axes)
LAYOUTS = [((2, 3, 4), 1, 1), ((2, 3, 4), 0, -1), ((2, 3, 4), 1, 2), ((2, 3, 4), -1, 1), ((2, 3, 4), 1, 0),
           ((2, 3, 4, 2), 2, 1), ((2, 3), 0, 1)]


@checks_forward("Scale")
@pytest.mark.parametrize("shape,axis,num_axes", LAYOUTS)
@pytest.mark.parametrize("bias", [False, True])
def test_scale_forward_learned(shape, axis, num_axes, bias):
    layer = make_layer(f'type: "Scale" scale_param {{ axis: {axis} num_axes: {num_axes} '
                       f'bias_term: {str(bias).lower()} {FILLERS} }}')
    x, top = blob(shape), empty()
    layer.setup([x], top)
    a = axis % len(shape)
    expected = shape[a:] if num_axes == -1 else shape[a:a + num_axes]
    assert [b.shape for b in layer.blobs] == [expected] * (2 if bias else 1)
    layer.Forward([x], top)
    ref = reference(x.data, layer.blobs[0].data, axis, "mul")
    if bias:
        ref = reference(ref, layer.blobs[1].data, axis, "add")
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-14)


@pytest.mark.parametrize("shape,axis,scale_shape", [((2, 3, 4), 1, (3,)), ((2, 3, 4), 0, (2, 3)),
                                                    ((2, 3, 4), 1, ()), ((2, 3, 4), -2, (3, 4))])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_forward_two_bottoms(shape, axis, scale_shape, bias):
    layer = make_layer(f'type: "Scale" scale_param {{ axis: {axis} bias_term: {str(bias).lower()} {FILLERS} }}')
    x, s, top = blob(shape), blob(numpy.random.default_rng(4).uniform(-2, 2, size=scale_shape)), empty()
    layer.setup([x, s], top)
    assert [b.shape for b in layer.blobs] == ([scale_shape] if bias else [])
    layer.Forward([x, s], top)
    ref = reference(x.data, s.data, axis, "mul")
    if bias:
        ref = reference(ref, layer.blobs[0].data, axis, "add")
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-14)


def test_scale_default_filler_is_one():
    layer = make_layer('type: "Scale"')
    x, top = blob((2, 3)), empty()
    layer.setup([x], top)
    numpy.testing.assert_array_equal(layer.blobs[0].data, 1.0)


@checks_gradient("Scale")
@pytest.mark.parametrize("shape,axis,num_axes", [((2, 3, 2), 1, 1), ((2, 3, 2), 0, -1), ((2, 3, 2), 1, 0),
                                                 ((3, 2), 0, 1), ((2, 3, 2), 2, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_gradient_learned(shape, axis, num_axes, bias):
    layer = make_layer(f'type: "Scale" scale_param {{ axis: {axis} num_axes: {num_axes} '
                       f'bias_term: {str(bias).lower()} {FILLERS} }}')
    check_gradient(layer, [blob(shape)], empty())


@pytest.mark.parametrize("scale_shape,axis", [((3,), 1), ((2, 3, 2), 0), ((), 1), ((2, 3), 0)])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_gradient_two_bottoms(scale_shape, axis, bias):
    layer = make_layer(f'type: "Scale" scale_param {{ axis: {axis} bias_term: {str(bias).lower()} {FILLERS} }}')
    s = blob(numpy.random.default_rng(8).uniform(-2, 2, size=scale_shape))
    check_gradient(layer, [blob((2, 3, 2)), s], empty())


def test_scale_in_place():
    text = f'type: "Scale" scale_param {{ bias_term: true {FILLERS} }}'
    x_values = numpy.random.default_rng(2).uniform(-1, 1, size=(2, 3, 4))
    dy = numpy.random.default_rng(3).uniform(-1, 1, size=(2, 3, 4))
    sep = make_layer(text)
    x, top = blob(x_values), empty()
    sep.setup([x], top)
    sep.Forward([x], top)
    top[0].diff[...] = dy
    sep.backward(top, [True], [x])
    inp = make_layer(text)
    xi = blob(x_values)
    inp.setup([xi], [xi])
    for a, b in zip(inp.blobs, sep.blobs):
        a.data[...] = b.data
    inp.Forward([xi], [xi])
    numpy.testing.assert_allclose(xi.data, top[0].data)
    xi.diff[...] = dy
    inp.backward([xi], [True], [xi])
    numpy.testing.assert_allclose(xi.diff, x.diff)
    for a, b in zip(inp.blobs, sep.blobs):
        numpy.testing.assert_allclose(a.diff, b.diff)


def test_scale_param_gradient_accumulates_and_bottom_scale_is_overwritten():
    layer = make_layer('type: "Scale"')
    x, top = blob((2, 3, 2)), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    top[0].diff[...] = 1.0
    layer.backward(top, [False], [x])
    layer.backward(top, [False], [x])
    numpy.testing.assert_allclose(layer.blobs[0].diff, 2 * x.data.sum(axis=(0, 2)))

    layer = make_layer('type: "Scale"')
    s, top = blob((3,)), empty()
    layer.setup([x, s], top)
    layer.Forward([x, s], top)
    top[0].diff[...] = 1.0
    s.diff[...] = 100.0
    layer.backward(top, [False, True], [x, s])
    numpy.testing.assert_allclose(s.diff, x.data.sum(axis=(0, 2)))


def test_scale_keeps_given_blobs():
    layer = make_layer('type: "Scale" scale_param { bias_term: true } '
                       'blobs { shape { dim: 3 } data: [1, 2, 3] } blobs { shape { dim: 3 } data: [4, 5, 6] }')
    x, top = blob(numpy.ones((2, 3))), empty()
    layer.setup([x], top)
    assert len(layer.blobs) == 2
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data, [[5, 7, 9], [5, 7, 9]])
    # Only the scale given: the bias is added after it.
    layer = make_layer('type: "Scale" scale_param { bias_term: true } blobs { shape { dim: 3 } data: [1, 2, 3] }')
    layer.setup([x], top)
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    numpy.testing.assert_array_equal(layer.blobs[1].data, 0.0)


@checks_forward("Bias")
@pytest.mark.parametrize("shape,axis,num_axes", LAYOUTS)
def test_bias_forward_learned(shape, axis, num_axes):
    layer = make_layer(f'type: "Bias" bias_param {{ axis: {axis} num_axes: {num_axes} '
                       'filler { type: "uniform" min: -1 max: 1 } }')
    x, top = blob(shape), empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, reference(x.data, layer.blobs[0].data, axis, "add"), rtol=1e-14)


@pytest.mark.parametrize("shape,axis,bias_shape", [((2, 3, 4), 1, (3,)), ((2, 3, 4), 0, (2, 3, 4)),
                                                   ((2, 3, 4), 1, ())])
def test_bias_forward_two_bottoms(shape, axis, bias_shape):
    layer = make_layer(f'type: "Bias" bias_param {{ axis: {axis} }}')
    x, b, top = blob(shape), blob(numpy.random.default_rng(1).uniform(size=bias_shape)), empty()
    layer.setup([x, b], top)
    assert layer.blobs == []
    layer.Forward([x, b], top)
    numpy.testing.assert_allclose(top[0].data, reference(x.data, b.data, axis, "add"), rtol=1e-14)


@checks_gradient("Bias")
@pytest.mark.parametrize("two_bottoms", [False, True])
@pytest.mark.parametrize("axis,num_axes", [(1, 1), (0, 2), (1, 0)])
def test_bias_gradient(axis, num_axes, two_bottoms):
    x = blob((2, 3, 2))
    if two_bottoms:
        shape = x.shape[axis:axis + num_axes]
        layer = make_layer(f'type: "Bias" bias_param {{ axis: {axis} }}')
        check_gradient(layer, [x, blob(numpy.random.default_rng(1).uniform(size=shape))], empty())
    else:
        layer = make_layer(f'type: "Bias" bias_param {{ axis: {axis} num_axes: {num_axes} '
                           'filler { type: "gaussian" } }')
        check_gradient(layer, [x], empty())


def test_bias_in_place():
    layer = make_layer('type: "Bias" bias_param { filler { type: "uniform" } }')
    x = blob((2, 3, 2))
    orig = x.data.copy()
    layer.setup([x], [x])
    layer.Forward([x], [x])
    numpy.testing.assert_allclose(x.data, orig + layer.blobs[0].data.reshape(1, 3, 1))
    x.diff[...] = 1.0
    layer.backward([x], [True], [x])
    numpy.testing.assert_array_equal(x.diff, 1.0)
    numpy.testing.assert_array_equal(layer.blobs[0].diff, 4.0)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_shape_errors(kind):
    p = kind.lower() + "_param"
    with pytest.raises(CaffeishError, match="extends past"):
        make_layer(f'type: "{kind}" {p} {{ axis: 1 num_axes: 3 }}').setup([blob((2, 3, 4))], empty())
    with pytest.raises(CaffeishError, match="num_axes must be non-negative"):
        make_layer(f'type: "{kind}" {p} {{ num_axes: -2 }}').setup([blob((2, 3, 4))], empty())
    with pytest.raises(CaffeishError, match="does not match"):
        make_layer(f'type: "{kind}"').setup([blob((2, 3, 4)), blob((4,))], empty())
    layer = make_layer(f'type: "{kind}"')
    layer.setup([blob((2, 3, 4))], empty())
    with pytest.raises(CaffeishError, match="does not match"):
        layer.reshape([blob((2, 5, 4))], empty())

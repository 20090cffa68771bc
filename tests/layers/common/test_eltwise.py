import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

SHAPE = (2, 3, 2)


def _bottoms(n, shape=SHAPE, seed=0):
    rng = numpy.random.default_rng(seed)
    return [blob(shape, rng=rng) for _ in range(n)]


def _distinct_bottoms(n, shape=SHAPE, seed=0):
    """Values at least 0.02 apart, so a gradient-check step never changes the winner."""
    rng = numpy.random.default_rng(seed)
    count = int(numpy.prod(shape))
    values = (rng.permutation(n * count) * 0.02 - 0.01 * n * count).reshape(n, *shape)
    return [blob(v) for v in values]


def _run(param, bottom):
    layer = make_layer(f'type: "Eltwise" {param}')
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    return layer, top


def _caffe_max(arrays):
    """Caffe's Forward_cpu MAX, element by element."""
    a = [x.reshape(-1) for x in arrays]
    top, mask = numpy.empty_like(a[0]), numpy.empty(a[0].size, int)
    for k in range(a[0].size):
        if a[0][k] > a[1][k]:
            top[k], mask[k] = a[0][k], 0
        else:
            top[k], mask[k] = a[1][k], 1
        for i in range(2, len(a)):
            if a[i][k] > top[k]:
                top[k], mask[k] = a[i][k], i
    return top.reshape(arrays[0].shape), mask.reshape(arrays[0].shape)


@checks_forward("Eltwise")
@pytest.mark.parametrize("param, n, ref", [
    ("", 2, lambda xs: xs[0] + xs[1]),
    ("eltwise_param { operation: SUM }", 3, lambda xs: xs[0] + xs[1] + xs[2]),
    ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", 3, lambda xs: xs[0] - 0.5 * xs[1] + 2 * xs[2]),
    ("eltwise_param { operation: PROD }", 2, lambda xs: xs[0] * xs[1]),
    ("eltwise_param { operation: PROD }", 3, lambda xs: xs[0] * xs[1] * xs[2]),
    ("eltwise_param { operation: MAX }", 2, lambda xs: _caffe_max(xs)[0]),
    ("eltwise_param { operation: MAX }", 4, lambda xs: _caffe_max(xs)[0]),
])
def test_eltwise_forward(param, n, ref):
    bottom = _bottoms(n)
    _, top = _run(param, bottom)
    numpy.testing.assert_allclose(top[0].data, ref([b.data for b in bottom]), rtol=1e-12)


def test_eltwise_max_ties_follow_caffe():
    # Element 0: bottoms 0 and 1 tie -> Caffe picks bottom 1.  Element 1: bottoms 1 and 2 tie above
    # bottom 0 -> bottom 1 is kept.  Element 2: bottoms 0 and 2 tie -> bottom 0 kept (0 beat 1 strictly).
    xs = [numpy.array([1.0, 0.0, 3.0]), numpy.array([1.0, 2.0, 1.0]), numpy.array([0.0, 2.0, 3.0])]
    bottom = [blob(x) for x in xs]
    layer, top = _run("eltwise_param { operation: MAX }", bottom)
    numpy.testing.assert_array_equal(top[0].data, [1.0, 2.0, 3.0])
    top[0].diff[...] = [10.0, 20.0, 30.0]
    layer.backward(top, [True] * 3, bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 30])
    numpy.testing.assert_array_equal(bottom[1].diff, [10, 20, 0])
    numpy.testing.assert_array_equal(bottom[2].diff, [0, 0, 0])
    numpy.testing.assert_array_equal(layer.max_idx, _caffe_max(xs)[1])


def test_eltwise_backward_respects_propagate_down():
    bottom = _bottoms(2)
    layer, top = _run("eltwise_param { operation: SUM coeff: 2 coeff: 3 }", bottom)
    bottom[0].diff[...] = -7.0
    top[0].diff[...] = 1.0
    layer.backward(top, [False, True], bottom)
    assert (bottom[0].diff == -7.0).all() and (bottom[1].diff == 3.0).all()


@pytest.mark.parametrize("param, shapes, match", [
    ("eltwise_param { coeff: 1 }", [SHAPE, SHAPE], "1 coeff values but the layer has 2 bottoms"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [SHAPE, SHAPE], "only for operation SUM"),
    ("", [SHAPE, (2, 3, 3)], r"bottom\[1\] has shape \(2, 3, 3\) but bottom\[0\] has shape \(2, 3, 2\)"),
    ("", [SHAPE], "at least 2 bottom"),
])
def test_eltwise_errors(param, shapes, match):
    with pytest.raises(CaffeishError, match=match):
        make_layer(f'type: "Eltwise" {param}').setup([blob(s) for s in shapes], empty())


@checks_gradient("Eltwise")
@pytest.mark.parametrize("param, n", [
    ("", 2),
    ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", 3),
    ("eltwise_param { operation: PROD }", 2),
    ("eltwise_param { operation: PROD }", 3),
    ("eltwise_param { operation: PROD stable_prod_grad: false }", 3),
])
def test_eltwise_gradient(param, n):
    check_gradient(make_layer(f'type: "Eltwise" {param}'), _bottoms(n), empty())


@checks_gradient("Eltwise")
@pytest.mark.parametrize("n", [2, 3])
def test_eltwise_max_gradient(n):
    check_gradient(make_layer('type: "Eltwise" eltwise_param { operation: MAX }'), _distinct_bottoms(n), empty())

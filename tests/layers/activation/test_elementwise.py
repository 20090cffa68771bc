import math

import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def run_forward(text, x_values, dtype=numpy.float64):
    layer = make_layer(text, dtype=dtype)
    x, top = blob(x_values, dtype=dtype), empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    return layer, x, top


def loop(fn, x):
    """Apply a scalar reference function element by element."""
    return numpy.array([fn(float(v)) for v in x.ravel()]).reshape(x.shape)


def _power(x, power, scale, shift):
    if power * scale == 0:
        return 1.0 if power == 0 else shift ** power
    return (shift + scale * x) ** power


def _bnll(x):
    return x + math.log(1 + math.exp(-x)) if x > 0 else math.log(1 + math.exp(x))


X = numpy.random.default_rng(7).uniform(-2, 2, size=(2, 3, 4))

# (type, param text, scalar reference, input)
FORWARD_CASES = [
    ("ELU", "elu_param { alpha: 1 }", lambda v: v if v > 0 else math.exp(v) - 1, X),
    ("ELU", "elu_param { alpha: 0.5 }", lambda v: v if v > 0 else 0.5 * (math.exp(v) - 1), X),
    ("Swish", "", lambda v: v / (1 + math.exp(-v)), X),
    ("Swish", "swish_param { beta: 2.5 }", lambda v: v / (1 + math.exp(-2.5 * v)), X),
    ("Clip", "clip_param { min: -0.5 max: 1.25 }", lambda v: min(max(v, -0.5), 1.25), X),
    ("AbsVal", "", abs, X),
    ("BNLL", "", _bnll, X * 40),
    ("Power", "power_param { power: 1.5 scale: 0.5 shift: 2 }", lambda v: _power(v, 1.5, 0.5, 2), X),
    ("Power", "power_param { power: 2 scale: -1.5 shift: 0.25 }", lambda v: _power(v, 2, -1.5, 0.25), X),
    ("Power", "power_param { power: 3 }", lambda v: v ** 3, X),
    ("Power", "power_param { power: 1 scale: 3 shift: -1 }", lambda v: 3 * v - 1, X),
    ("Power", "power_param { power: 0 scale: 3 shift: 5 }", lambda v: 1.0, X),
    ("Power", "power_param { power: 2 scale: 0 shift: 3 }", lambda v: 9.0, X),
    ("Exp", "", math.exp, X),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1.5 }", lambda v: 2 ** (1.5 + 0.5 * v), X),
    ("Exp", "exp_param { base: -1 scale: 2 shift: 0.5 }", lambda v: math.exp(0.5 + 2 * v), X),
    ("Log", "", math.log, numpy.abs(X) + 0.1),
    ("Log", "log_param { base: 2 scale: 2 shift: 5 }", lambda v: math.log2(5 + 2 * v), X),
    ("Log", "log_param { base: 10 scale: 0.5 }", lambda v: math.log10(0.5 * v), numpy.abs(X) + 0.1),
    ("Threshold", "threshold_param { threshold: 0.25 }", lambda v: float(v > 0.25), X),
    ("Threshold", "", lambda v: float(v > 0), numpy.array([-1.0, 0.0, 1e-9, 3.0])),
]


@checks_forward("ELU", "Swish", "Clip", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold")
@pytest.mark.parametrize("kind,params,ref,x", FORWARD_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_elementwise_forward(kind, params, ref, x):
    _, _, top = run_forward(f'type: "{kind}" {params}', x)
    numpy.testing.assert_allclose(top[0].data, loop(ref, x), rtol=1e-12, atol=1e-14)


GRADIENT_CASES = [
    ("ELU", "elu_param { alpha: 1 }", {}),
    ("ELU", "elu_param { alpha: 0.5 }", {"kink_range": 1e-2}),
    ("Swish", "swish_param { beta: 1.5 }", {}),
    ("Clip", "clip_param { min: -0.5 max: 0.5 }", {"kink": 0.5, "kink_range": 1e-2}),
    ("AbsVal", "", {"kink_range": 1e-2}),
    ("BNLL", "", {}),
    ("Power", "power_param { power: 1.5 scale: 0.5 shift: 2 }", {}),
    ("Power", "power_param { power: 2 scale: -1.5 shift: 0.25 }", {}),
    ("Power", "power_param { power: 3 scale: 0.5 }", {"kink_range": 0.1}),
    ("Power", "power_param { power: 1 scale: 3 shift: -1 }", {}),
    ("Power", "power_param { power: 0 scale: 3 }", {}),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1.5 }", {}),
    ("Exp", "exp_param { scale: 1.5 shift: -0.5 }", {}),
    ("Log", "log_param { base: 2 scale: 2 shift: 5 }", {}),
    ("Log", "", {"x": lambda x: numpy.abs(x) + 0.5}),
]


@checks_gradient("ELU", "Swish", "Clip", "AbsVal", "BNLL", "Power", "Exp", "Log")
@pytest.mark.parametrize("kind,params,options", GRADIENT_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_elementwise_gradient(kind, params, options):
    options = dict(options)
    transform = options.pop("x", lambda x: x)
    x = blob(transform(numpy.random.default_rng(3).uniform(-2, 2, size=(2, 3, 2))))
    check_gradient(make_layer(f'type: "{kind}" {params}'), [x], empty(), **options)


@pytest.mark.parametrize("kind,params", [
    ("ELU", "elu_param { alpha: 1 }"), ("ELU", "elu_param { alpha: -0.5 }"), ("Swish", "swish_param { beta: 2 }"),
    ("Clip", "clip_param { min: -0.5 max: 0.5 }"), ("BNLL", ""), ("Power", "power_param { power: 1.5 shift: 3 }"),
    ("Power", "power_param { power: 2 scale: 2 shift: 1 }"), ("Power", "power_param { power: 3 }"),
    ("Exp", "exp_param { base: 3 scale: 0.5 }"), ("Log", "log_param { shift: 3 }"),
])
def test_in_place_matches_separate(kind, params):
    """In place, backward must give the same gradient as with separate blobs (Caffe's own would not for some)."""
    x_values = numpy.random.default_rng(5).uniform(-2, 2, size=(3, 4))
    dy = numpy.random.default_rng(6).uniform(-1, 1, size=(3, 4))
    layer, x, top = run_forward(f'type: "{kind}" {params}', x_values)
    top[0].diff[...] = dy
    layer.backward(top, [True], [x])

    inplace = make_layer(f'type: "{kind}" {params}')
    xi = blob(x_values)
    inplace.setup([xi], [xi])
    inplace.Forward([xi], [xi])
    numpy.testing.assert_allclose(xi.data, top[0].data)
    xi.diff[...] = dy
    inplace.backward([xi], [True], [xi])
    numpy.testing.assert_allclose(xi.diff, x.diff, rtol=1e-12)


def test_clip_gradient_includes_the_ends():
    layer, x, top = run_forward('type: "Clip" clip_param { min: -0.5 max: 0.5 }', numpy.array([-1, -0.5, 0, 0.5, 1.0]))
    numpy.testing.assert_array_equal(top[0].data, [-0.5, -0.5, 0, 0.5, 0.5])
    top[0].diff[...] = 2.0
    layer.backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, [0, 2, 2, 2, 0])


def test_bnll_is_stable_for_large_inputs():
    x = numpy.array([-1000.0, -60.0, 0.0, 60.0, 1000.0])
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        layer, b, top = run_forward('type: "BNLL"', x, dtype=numpy.float32)
        top[0].diff[...] = 1.0
        layer.backward(top, [True], [b])
    numpy.testing.assert_allclose(top[0].data, [0.0, 0.0, math.log(2), 60.0, 1000.0], rtol=1e-6, atol=1e-26)
    numpy.testing.assert_allclose(b.diff, [0.0, 0.0, 0.5, 1.0, 1.0], rtol=1e-6, atol=1e-26)


def test_power_uses_caffe_backward_forms():
    # shift 0: Caffe's power * y / x, which is 0/0 at x = 0 (NaN, as in Caffe).
    layer, x, top = run_forward('type: "Power" power_param { power: 3 scale: 2 }', numpy.array([0.0, 1.0, -2.0]))
    top[0].diff[...] = 1.0
    with numpy.errstate(invalid="ignore"):
        layer.backward(top, [True], [x])
    assert numpy.isnan(x.diff[0])
    numpy.testing.assert_allclose(x.diff[1:], [3 * 2 * 2.0 ** 2, 3 * 2 * 4.0 ** 2])
    # scale * power == 0: constant output, zero gradient.
    layer, x, top = run_forward('type: "Power" power_param { power: 2 scale: 0 shift: -3 }', numpy.ones(3))
    numpy.testing.assert_array_equal(top[0].data, 9.0)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, 0.0)


def test_threshold_has_no_backward():
    layer = make_layer('type: "Threshold"')
    assert not layer.has_backward


def test_float32_stays_float32():
    for kind in ("ELU", "Swish", "BNLL", "Exp", "AbsVal"):
        _, _, top = run_forward(f'type: "{kind}"', X, dtype=numpy.float32)
        assert top[0].data.dtype == numpy.float32


@pytest.mark.parametrize("text,match", [
    ('type: "AbsVal"', "in place"),
    ('type: "Clip" clip_param { min: 1 }', "clip_param.min and clip_param.max"),
    ('type: "Clip"', "clip_param.min and clip_param.max"),
    ('type: "Clip" clip_param { min: 1 max: 0 }', "greater than"),
    ('type: "Exp" exp_param { base: 0 }', "exp_param.base"),
    ('type: "Log" log_param { base: -2 }', "log_param.base"),
    ('type: "Log" log_param { base: 1 }', "log_param.base 1"),
])
def test_bad_parameters(text, match):
    layer = make_layer(text)
    x = blob((2, 3))
    with pytest.raises(CaffeishError, match=match):
        layer.setup([x], [x] if "AbsVal" in text else empty())

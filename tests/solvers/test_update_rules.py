"""Each solver type's update, a few steps, against element-by-element hand computations in float64."""
import math

import numpy
import pytest

import caffeish
from caffeish import caffe_pb2
from caffeish.prototxt import parse_text

NET = """
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }
"""
GRADS = [numpy.array([[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]]), numpy.array([[-0.3, 0.2, 1.0], [0.6, -0.1, 0.4]]),
         numpy.array([[0.1, 0.1, -0.2], [0.0, 0.9, -0.5]])]
BGRADS = [numpy.array([1.0, -2.0]), numpy.array([0.5, 0.5]), numpy.array([-1.0, 0.25])]
W0 = numpy.array([[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]])


def make(solver_type, **fields):
    text = f'type: "{solver_type}" base_lr: 0.1 lr_policy: "fixed" weight_decay: 0.01 display: 0 '
    text += " ".join(f"{k}: {v}" for k, v in fields.items())
    param = parse_text(text, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    solver = caffeish.get_solver(param, dtype=numpy.float64)
    w, b = solver.net.learnable_params
    w.data[...] = W0
    b.data[...] = 0.5
    return solver


def run(solver, steps=3):
    w, b = solver.net.learnable_params
    for k in range(steps):
        w.diff[...] = GRADS[k]
        b.diff[...] = BGRADS[k]
        solver.apply_update()
        solver.iter += 1
    return w.data.copy(), b.data.copy()


def reference(rule, steps=3, lr=0.1, decay=0.01, **h):
    """Scalar-by-scalar re-derivation of Caffe's formulas."""
    out = []
    for data0, grads, lr_mult, decay_mult in ((W0, GRADS, 1, 1), (numpy.full(2, 0.5), BGRADS, 2, 0)):
        data = data0.copy().ravel()
        state = [dict() for _ in data]
        for k in range(steps):
            g_all = grads[k].ravel()
            for i in range(data.size):
                g = g_all[i] + decay * decay_mult * data[i]
                data[i] -= rule(g, lr * lr_mult, state[i], k, **h)
        out.append(data.reshape(data0.shape))
    return out


def sgd(g, r, s, k, momentum):
    s["v"] = momentum * s.get("v", 0.0) + r * g
    return s["v"]


def nesterov(g, r, s, k, momentum):
    prev = s.get("v", 0.0)
    s["v"] = momentum * prev + r * g
    return (1 + momentum) * s["v"] - momentum * prev


def adagrad(g, r, s, k, delta):
    s["h"] = s.get("h", 0.0) + g * g
    return r * g / (math.sqrt(s["h"]) + delta)


def rmsprop(g, r, s, k, delta, rms_decay):
    s["h"] = rms_decay * s.get("h", 0.0) + (1 - rms_decay) * g * g
    return r * g / (math.sqrt(s["h"]) + delta)


def adadelta(g, r, s, k, delta, momentum):
    s["h"] = momentum * s.get("h", 0.0) + (1 - momentum) * g * g
    u = g * math.sqrt((s.get("s", 0.0) + delta) / (s["h"] + delta))
    s["s"] = momentum * s.get("s", 0.0) + (1 - momentum) * u * u
    return r * u


def adam(g, r, s, k, delta, momentum, momentum2):
    s["m"] = momentum * s.get("m", 0.0) + (1 - momentum) * g
    s["v"] = momentum2 * s.get("v", 0.0) + (1 - momentum2) * g * g
    t = k + 1
    corr = math.sqrt(1 - momentum2 ** t) / (1 - momentum ** t)
    return r * corr * s["m"] / (math.sqrt(s["v"]) + delta)


F = lambda x: float(numpy.float32(x))  # noqa: E731  proto floats are float32

CASES = [
    ("SGD", dict(momentum=0.9), sgd, dict(momentum=F(0.9))),
    ("Nesterov", dict(momentum=0.9), nesterov, dict(momentum=F(0.9))),
    ("AdaGrad", dict(delta=1e-8), adagrad, dict(delta=F(1e-8))),
    ("RMSProp", dict(delta=1e-8, rms_decay=0.98), rmsprop, dict(delta=F(1e-8), rms_decay=F(0.98))),
    ("AdaDelta", dict(delta=1e-6, momentum=0.95), adadelta, dict(delta=F(1e-6), momentum=F(0.95))),
    ("Adam", dict(delta=1e-8, momentum=0.9, momentum2=0.999), adam,
     dict(delta=F(1e-8), momentum=F(0.9), momentum2=F(0.999))),
]


@pytest.mark.parametrize("solver_type, fields, rule, hyper", CASES, ids=[c[0] for c in CASES])
def test_update_rule_matches_hand_computation(solver_type, fields, rule, hyper):
    solver = make(solver_type, **fields)
    assert type(solver).__name__ == f"{solver_type}Solver"
    w, b = run(solver)
    rw, rb = reference(rule, lr=F(0.1), decay=F(0.01), **hyper)
    numpy.testing.assert_allclose(w, rw, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(b, rb, rtol=1e-12, atol=1e-14)
    # The update left in diff is what was subtracted (Caffe's contract).
    assert solver.net.learnable_params[0].diff.any()


def test_l1_regularization():
    solver = make("SGD", momentum=0.0, regularization_type='"L1"')
    w, _ = run(solver, steps=1)
    expected = W0 - F(0.1) * (GRADS[0] + F(0.01) * numpy.sign(W0))
    numpy.testing.assert_allclose(w, expected, rtol=1e-12)


def test_clip_gradients_scales_by_global_norm():
    solver = make("SGD", momentum=0.0, weight_decay=0.0, clip_gradients=1.0)
    w, b = run(solver, steps=1)
    norm = math.sqrt((GRADS[0] ** 2).sum() + (BGRADS[0] ** 2).sum())
    numpy.testing.assert_allclose(w, W0 - F(0.1) * GRADS[0] / norm, rtol=1e-12)
    numpy.testing.assert_allclose(b, 0.5 - 2 * F(0.1) * BGRADS[0] / norm, rtol=1e-12)


def test_iter_size_normalizes_accumulated_gradient():
    solver = make("SGD", momentum=0.0, weight_decay=0.0, iter_size=4)
    w, _ = run(solver, steps=1)
    numpy.testing.assert_allclose(w, W0 - F(0.1) * GRADS[0] / 4, rtol=1e-12)


@pytest.mark.parametrize("solver_type", ["AdaGrad", "RMSProp"])
def test_momentum_refused_where_caffe_refuses_it(solver_type):
    with pytest.raises(caffeish.CaffeishError, match="momentum cannot be used"):
        make(solver_type, momentum=0.9)


def test_legacy_solver_type_enum_is_upgraded():
    param = parse_text("solver_type: ADAM base_lr: 0.1 lr_policy: 'fixed'", caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    assert type(caffeish.get_solver(param)).__name__ == "AdamSolver"

import math

import pytest

from caffeish import caffe_pb2
from caffeish.errors import CaffeishError
from caffeish.solvers.lr_policy import learning_rate


class State:
    current_step = 0


def rates(its, **fields):
    p = caffe_pb2.SolverParameter(base_lr=0.01, **fields)
    s = State()
    return [learning_rate(p, it, s) for it in its]


def f32(x):  # proto floats are float32 values
    import numpy
    return float(numpy.float32(x))


def test_fixed():
    assert rates([0, 100], lr_policy="fixed") == [f32(0.01)] * 2


def test_step():
    r = rates([0, 99, 100, 250], lr_policy="step", gamma=0.1, stepsize=100)
    assert r == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_exp():
    assert rates([3], lr_policy="exp", gamma=0.5)[0] == pytest.approx(0.01 * 0.125)


def test_inv_matches_caffe_lenet_log():
    # Caffe's LeNet log prints "Iteration 100, lr = 0.00992565".
    r = rates([0, 100, 5000], lr_policy="inv", gamma=0.0001, power=0.75)
    assert r[0] == pytest.approx(0.01)
    assert r[1] == pytest.approx(0.00992565, rel=1e-6)
    assert r[2] == pytest.approx(0.01 * (1 + 0.5) ** -0.75, rel=1e-6)


def test_multistep_advances_once_per_stepvalue():
    p = caffe_pb2.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[2, 4])
    s = State()
    got = [learning_rate(p, it, s) for it in range(6)]
    assert got == [1, 1, 0.5, 0.5, 0.25, 0.25] and s.current_step == 2


def test_poly_and_sigmoid():
    assert rates([50], lr_policy="poly", power=2, max_iter=100)[0] == pytest.approx(0.01 * 0.25)
    r = rates([100, 200], lr_policy="sigmoid", gamma=-0.05, stepsize=100)
    assert r[0] == pytest.approx(0.005) and r[1] == pytest.approx(0.01 / (1 + math.exp(5)), rel=1e-5)


def test_unknown_policy_lists_known():
    with pytest.raises(CaffeishError, match="unknown lr_policy type 'linear'.*multistep"):
        rates([0], lr_policy="linear")

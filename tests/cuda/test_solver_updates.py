"""The fused CUDA solver steps (caffeish.cuda.solver_updates) against the CPU solvers, several steps.

The kernels do the CPU's operations in its order and type with no contracted multiply-adds, so the
weights, the update values left in the diffs and the histories must be equal to the last bit.
"""
import numpy
import pytest

import caffeish
from caffeish import backend, caffe_pb2
from caffeish.prototxt import parse_text
from cuda_helpers import assert_close, compiled, needs_gpu, on_cpu_and_gpu

NET = """
layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 4 dim: 37 } shape { dim: 4 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 5 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }
"""
SOLVERS = [
    ("SGD", "momentum: 0.9"),
    ("Nesterov", "momentum: 0.95"),
    ("AdaGrad", "delta: 1e-7"),
    ("RMSProp", "delta: 1e-6 rms_decay: 0.97"),
    ("AdaDelta", "delta: 1e-6 momentum: 0.9"),
    ("Adam", "delta: 1e-8 momentum: 0.9 momentum2: 0.999"),
]
REGULARIZATION = [
    "weight_decay: 0.01",
    "weight_decay: 0.003 regularization_type: \"L1\" iter_size: 3",
    "weight_decay: 0 iter_size: 2",
]


@pytest.fixture(autouse=True)
def cpu_after():
    yield
    backend.set_mode_cpu()


def _steps(solver_type, hyper, regularization, dtype, steps=4):
    text = f'type: "{solver_type}" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 2 display: 0 '
    param = parse_text(text + f"{hyper} {regularization}", caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    solver = caffeish.get_solver(param, dtype=dtype)
    rng = numpy.random.default_rng(17)
    params = solver.net.learnable_params
    for p in params:
        p.data[...] = backend.to_current(rng.standard_normal(p.shape), dtype)
    for p in params:   # a zero weight: L1's sign(0) must stay 0
        p.data[(0,) * p.num_axes] = 0
    for _ in range(steps):
        for p in params:
            p.diff[...] = backend.to_current(rng.standard_normal(p.shape), dtype)
        solver.apply_update()
        solver.iter += 1
    return [a for p in params for a in (p.data, p.diff)] + [h.data for h in solver.history]


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("regularization", REGULARIZATION)
@pytest.mark.parametrize("solver_type,hyper", SOLVERS)
def test_fused_update_equals_the_cpu_solver(solver_type, hyper, regularization, dtype):
    cpu, gpu = on_cpu_and_gpu(_steps, solver_type, hyper, regularization, dtype)
    assert compiled("solver_updates")
    assert len(cpu) == len(gpu)
    for k, (got, want) in enumerate(zip(gpu, cpu)):
        assert_close(got, want, dtype, exact=True, what=f"{solver_type} array {k}")


@needs_gpu
def test_a_subclass_keeps_its_own_rule_on_the_gpu():
    from caffeish.solvers.sgd import SGDSolver

    class Halved(SGDSolver):
        def fused_step(self, xp, g, v, tmp, local_rate):
            super().fused_step(xp, g, v, tmp, local_rate)
            g *= 0.5

    backend.set_mode_gpu()
    param = parse_text('type: "SGD" base_lr: 0.1 lr_policy: "fixed" momentum: 0 display: 0',
                       caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    solver = Halved(param, dtype=numpy.float64)
    w = solver.net.learnable_params[0]
    w.data[...] = 1.0
    w.diff[...] = 1.0
    solver.apply_update()
    assert numpy.allclose(backend.to_cpu(w.data), 0.95)

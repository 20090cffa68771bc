"""The fused CUDA solver steps (caffeish.cuda.solver_updates) against the CPU solvers, several steps.

The kernels do the CPU's operations in its order and type with no contracted multiply-adds, so the
weights, the update values left in the diffs and the histories must be equal to the last bit.
"""
import numpy
import pytest

from caffeish import backend, caffe_pb2
from caffeish.prototxt import parse_text
from cuda_helpers import NET, REGULARIZATION, SOLVERS, assert_close, compiled, needs_gpu, on_cpu_and_gpu, solver_steps

pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("regularization", REGULARIZATION)
@pytest.mark.parametrize("solver_type,hyper", SOLVERS)
def test_fused_update_equals_the_cpu_solver(solver_type, hyper, regularization, dtype):
    cpu, gpu = on_cpu_and_gpu(solver_steps, solver_type, hyper, regularization, dtype)
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

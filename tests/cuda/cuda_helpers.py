"""Shared by the CUDA kernel tests: the GPU marker, one test body run on numpy and on CuPy, common cases."""
import numpy
import pytest

import caffeish
from caffeish import backend, caffe_pb2
from caffeish.cuda import kernels
from caffeish.prototxt import parse_text

needs_gpu = pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA device")
TOLERANCE = {numpy.dtype(numpy.float32): dict(rtol=2e-5, atol=2e-6),
             numpy.dtype(numpy.float64): dict(rtol=1e-12, atol=1e-13)}


def on_cpu_and_gpu(body, *args, **kwargs):
    """``body(*args, **kwargs)`` run in CPU mode, then in GPU mode (CuPy's numpy-vs-cupy style).

    ``body`` builds its blobs itself, so they live on the mode's device; it returns a list of arrays.
    Returns (cpu results, gpu results), both as numpy arrays.
    """
    results = []
    for gpu in (False, True):
        if gpu:
            backend.set_mode_gpu()
        try:
            out = body(*args, **kwargs)
            results.append([None if a is None else backend.to_cpu(a).copy() for a in out])
        finally:
            backend.set_mode_cpu()
    return results


def compiled(name):
    """Whether source ``name`` has been compiled (so the GPU run really went through the kernels)."""
    return any(key[1] == name for key in kernels._modules)


def assert_close(actual, expected, dtype, exact=False, what=""):
    if exact:
        numpy.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        numpy.testing.assert_allclose(actual, expected, err_msg=what, **TOLERANCE[numpy.dtype(dtype)])


def device_blob(array, dtype):
    """A Blob of the current mode holding ``array`` (copied to the device in GPU mode)."""
    from caffeish import Blob
    array = numpy.asarray(array)
    b = Blob(array.shape, dtype=dtype)
    b.data[...] = backend.to_current(array, dtype)
    return b


# Pooling layer parameters and input shapes.
POOLING_CASES = [
    ("kernel_size: 3 stride: 2", (2, 3, 7, 9)),                                    # ceil mode: last window hangs over
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 5)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", (1, 2, 5, 6)),
    ("kernel_size: 2 stride: 3 round_mode: FLOOR", (2, 2, 7, 7)),
    ("kernel_size: 3 stride: 3 pad: 2", (1, 2, 5, 5)),                            # the padding rule drops a window
    ("kernel_size: 4 stride: 1 pad: 3", (1, 1, 4, 3)),
    ("global_pooling: true", (2, 3, 5, 7)),                                         # small plane: one thread each
    ("global_pooling: true", (2, 3, 12, 13)),                                       # block reduction
]

# A small net and the solver types with their settings, for the fused updates.
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


def solver_steps(solver_type, hyper, regularization, dtype, fused=False, steps=4):
    """Weights, update values and histories after ``steps`` updates of a small net, in the current mode.

    ``fused``: every parameter through the solver type's CUDA kernel (``Solver.fused_cuda_update``), as on
    the GPU -- for running the kernel's code on the CPU (``cpu_emulation``)."""
    text = f'type: "{solver_type}" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 2 display: 0 '
    param = parse_text(text + f"{hyper} {regularization}", caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    solver = caffeish.get_solver(param, dtype=dtype)
    if fused:
        solver.update_param = solver.fused_cuda_update
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

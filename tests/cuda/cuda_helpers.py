"""Shared by the CUDA kernel tests: the GPU marker, and one test body run on numpy and on CuPy."""
import numpy
import pytest

from caffeish import backend
from caffeish.cuda import kernels

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

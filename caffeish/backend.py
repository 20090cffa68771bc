"""Array backend: numpy on the CPU, CuPy on the GPU, one code path for both.

Layer code asks ``xp = get_array_module(x)`` for the module that owns its
arrays (Chainer's convention) and never imports numpy or cupy for array work
directly.  New arrays are made on the current mode's device (``xp()``).
"""
import numpy

from .errors import CaffeishError

try:  # CuPy is the optional [gpu] extra.
    import cupy
except Exception:  # ImportError, or a CUDA library that fails to load
    cupy = None

CPU, GPU = "CPU", "GPU"
_state = {"mode": CPU, "device": 0}
_rng = {"gen": numpy.random.default_rng()}


def gpu_available():
    """Whether CuPy is importable and sees at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def set_mode_cpu():
    _state["mode"] = CPU


def set_mode_gpu():
    if cupy is None:
        raise CaffeishError("GPU mode needs CuPy: install caffeish[gpu] (pip install 'caffeish[gpu]')")
    if not gpu_available():
        raise CaffeishError("GPU mode was asked for, but CuPy sees no CUDA device on this machine")
    _state["mode"] = GPU
    cupy.cuda.Device(_state["device"]).use()


def set_device(device_id):
    device_id = int(device_id)
    if _state["mode"] == GPU or gpu_available():
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device_id < count:
            raise CaffeishError(f"device {device_id} does not exist; this machine has {count} GPU(s)")
        cupy.cuda.Device(device_id).use()
    _state["device"] = device_id


def mode():
    return _state["mode"]


def device_id():
    return _state["device"]


def current_device():
    """The GPU current on this thread: ``device_id()`` unless this thread chose another.

    One process that drives several GPUs (``caffeish.parallel.MultiDeviceSolver``) gives each replica a
    thread with its own device current (``cupy.cuda.Device(n).use()``); what a replica allocates, and its
    data layers' prefetch copies, go to that device.
    """
    if _state["mode"] == GPU and cupy is not None:
        return int(cupy.cuda.runtime.getDevice())
    return _state["device"]


def xp():
    """The array module of the current mode."""
    return cupy if _state["mode"] == GPU else numpy


def get_array_module(*arrays):
    """numpy or cupy, whichever owns ``arrays`` (numpy when CuPy is absent)."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return numpy


def to_cpu(array):
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return numpy.asarray(array)


def to_current(array, dtype=None):
    """``array`` as an array of the current mode's module."""
    if _state["mode"] == GPU:
        return cupy.asarray(array, dtype=dtype)
    return numpy.asarray(to_cpu(array), dtype=dtype)


def set_random_seed(seed):
    """Seed every generator the engine draws from (fillers, Dropout, shuffles)."""
    _rng["gen"] = numpy.random.default_rng(int(seed))
    if cupy is not None and gpu_available():
        cupy.random.seed(int(seed))


def rng():
    """The host random generator (numpy.random.Generator)."""
    return _rng["gen"]


def random_uniform(xp_module, shape, dtype):
    """Uniform [0, 1) samples on the device that ``xp_module`` drives."""
    if xp_module is numpy:
        return _rng["gen"].random(shape, dtype=numpy.float64).astype(dtype, copy=False)
    return xp_module.random.random_sample(shape).astype(dtype, copy=False)

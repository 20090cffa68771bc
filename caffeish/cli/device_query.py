"""``caffeish device-query``: what Caffe's device_query prints, for CuPy's view of the GPUs.

Per device: its name, memory (total and free), compute capability, multiprocessors and Caffe's other
properties; once: the CUDA runtime and driver versions and whether cuDNN and NCCL are usable (NCCL
sums the gradients of ``caffeish train --gpu 0,1``).
"""
import logging
import warnings

import click

from .. import backend
from ..errors import CaffeishError
from . import register_command
from .common import gpu_option, parse_gpus

log = logging.getLogger("caffeish")


OTHER_PROPERTIES = [("Total shared memory per block", "sharedMemPerBlock"),
                    ("Total registers per block", "regsPerBlock"), ("Warp size", "warpSize"),
                    ("Maximum threads per block", "maxThreadsPerBlock"), ("Clock rate", "clockRate")]


def _version(number):
    """CUDA's 12090 -> "12.9"."""
    return f"{number // 1000}.{number % 1000 // 10}" if number else "none (no CUDA driver)"


def _library(names):
    """The first importable CuPy binding of ``names`` (module paths), or None and why not."""
    reason = "CuPy has no binding for it"
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = __import__(name, fromlist=["_"])
        except Exception as e:  # ImportError, or the library failing to load
            reason = f"{type(e).__name__}: {e}"
            continue
        if getattr(module, "available", True) is False:
            reason = f"{name} is present but its library cannot be loaded"
            continue
        return module, None
    return None, reason


def cudnn_status():
    """``"yes (version 9.1.0)"`` or ``"no (why)"``."""
    module, reason = _library(["cupy.cuda.cudnn", "cupy_backends.cuda.libs.cudnn"])
    if module is None:
        return f"no ({reason})"
    try:
        number = int(module.getVersion())
    except Exception as e:
        return f"no ({type(e).__name__}: {e})"
    return f"yes (version {_library_version(number)})"


def _library_version(number):
    """cuDNN/NCCL version numbers: 90100 -> "9.1.0" (major * 10000 + ...), 8902 -> "8.9.2" (major * 1000 + ...)."""
    if number >= 10000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def nccl_status():
    """``"yes (version 2.21.5)"`` or ``"no (why)"``."""
    module, reason = _library(["cupy.cuda.nccl"])
    if module is None or not hasattr(module, "NcclCommunicator"):
        return f"no ({reason or 'cupy.cuda.nccl has no NcclCommunicator'}; pip install nvidia-nccl-cu12)"
    try:
        number = int(module.get_build_version() if hasattr(module, "get_build_version") else module.get_version())
    except Exception:
        return "yes"
    return f"yes (version {_library_version(number)})"


@register_command("device-query")
@click.command()
@gpu_option
def device_query(gpu):
    """Show the properties of the GPU(s) (or say why there are none)."""
    if backend.cupy is None:
        raise CaffeishError("device-query needs CuPy for GPU support: pip install 'caffeish[gpu]'. "
                            "Running on the CPU needs no device.")
    if not backend.gpu_available():
        raise CaffeishError("CuPy is installed but sees no CUDA device on this machine")
    ids = parse_gpus(gpu if gpu is not None else "all")
    cuda = backend.cupy.cuda
    runtime = cuda.runtime
    count = runtime.getDeviceCount()
    missing = [i for i in ids if not 0 <= i < count]
    if missing:
        raise CaffeishError(f"--gpu {gpu}: GPU(s) {', '.join(map(str, missing))} do not exist; this machine has "
                            f"{count} GPU(s) (ids 0..{count - 1})")
    log.info("CUDA runtime version:          %s", _version(runtime.runtimeGetVersion()))
    log.info("CUDA driver version:           %s", _version(runtime.driverGetVersion()))
    log.info("cuDNN usable:                  %s", cudnn_status())
    log.info("NCCL usable:                   %s", nccl_status())
    for i in ids:
        p = runtime.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        with cuda.Device(i):
            free, _ = cuda.runtime.memGetInfo()
        log.info("Querying GPUs %d", i)
        log.info("Device id:                     %d", i)
        log.info("Name:                          %s", name)
        log.info("Compute capability:            %d.%d", p["major"], p["minor"])
        log.info("Major revision number:         %d", p["major"])
        log.info("Minor revision number:         %d", p["minor"])
        log.info("Total global memory:           %d (%.1f GiB)", p["totalGlobalMem"], p["totalGlobalMem"] / 2 ** 30)
        log.info("Free global memory:            %d (%.1f GiB)", free, free / 2 ** 30)
        log.info("Number of multiprocessors:     %d", p["multiProcessorCount"])
        for label, key in OTHER_PROPERTIES:  # CUDA 13 dropped some (clockRate): those are left out
            if key in p:
                log.info("%-30s %d", label + ":", p[key])

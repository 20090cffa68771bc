"""``caffeish device-query``: what Caffe's device_query prints, for CuPy's view of the GPUs."""
import logging

import click

from .. import backend
from ..errors import CaffeishError
from . import register_command
from .common import gpu_option, parse_gpus

log = logging.getLogger("caffeish")


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
    runtime = backend.cupy.cuda.runtime
    for i in ids:
        p = runtime.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        log.info("Querying GPUs %d", i)
        log.info("Device id:                     %d", i)
        log.info("Major revision number:         %d", p["major"])
        log.info("Minor revision number:         %d", p["minor"])
        log.info("Name:                          %s", name)
        log.info("Total global memory:           %d", p["totalGlobalMem"])
        log.info("Total shared memory per block: %d", p["sharedMemPerBlock"])
        log.info("Total registers per block:     %d", p["regsPerBlock"])
        log.info("Warp size:                     %d", p["warpSize"])
        log.info("Maximum threads per block:     %d", p["maxThreadsPerBlock"])
        log.info("Clock rate:                    %d", p["clockRate"])
        log.info("Number of multiprocessors:     %d", p["multiProcessorCount"])

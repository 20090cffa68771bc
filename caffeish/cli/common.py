"""Options and set-up shared by the verbs."""
import click

from .. import backend
from ..errors import CaffeishError
from ..net import TEST, TRAIN


def parse_gpus(spec):
    """``"0"``, ``"0,1"`` or ``"all"`` -> list of device ids (empty for CPU)."""
    if spec is None or spec == "":
        return []
    if spec == "all":
        if not backend.gpu_available():
            raise CaffeishError("--gpu all: no CUDA device is visible (is CuPy installed?)")
        return list(range(backend.cupy.cuda.runtime.getDeviceCount()))
    try:
        return [int(s) for s in spec.split(",")]
    except ValueError:
        raise CaffeishError(f"--gpu takes device ids like 0 or 0,1 or 'all', not '{spec}'") from None


def select_device(spec):
    gpus = parse_gpus(spec)
    if not gpus:
        backend.set_mode_cpu()
        return []
    backend.set_mode_gpu()
    backend.set_device(gpus[0])
    return gpus


def parse_phase(name):
    try:
        return {"TRAIN": TRAIN, "TEST": TEST}[name.upper()]
    except KeyError:
        raise CaffeishError(f"--phase must be TRAIN or TEST, not '{name}'") from None


def parse_stages(spec):
    return [s for s in (spec or "").split(",") if s]


gpu_option = click.option("--gpu", default=None, help="GPU id(s) to use: 0, 0,1 or all. CPU when absent.")
level_option = click.option("--level", default=0, type=int, show_default=True, help="NetState level.")
stage_option = click.option("--stage", default="", help="Comma-separated NetState stages.")

"""caffeish: Caffe's prototxt-driven workflow on numpy (CPU) and CuPy (GPU).

The names here follow pycaffe, so ``import caffeish as caffe`` runs existing
pycaffe scripts: ``caffe.Net(prototxt, caffe.TEST)``, ``caffe.set_mode_cpu()``.
"""
import os as _os

# Keeps OpenBLAS's idle threads from spinning (~0.1 s by default) after every call, beside our element-wise
# threads (see caffeish.cpu.threads, and bench/README.md, Tuning history); read when numpy loads OpenBLAS, so
# set before numpy is imported.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

from . import layers  # noqa: E402  # registers every layer type; also NetSpec's L (see layers/__init__.py)
from . import coord_map, draw, io, net_spec, proto  # noqa: E402  # pycaffe's submodules: caffe.io, caffe.draw, ...
from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed  # noqa: E402
from .blob import Blob  # noqa: E402
from .classifier import Classifier  # noqa: E402
from .detector import Detector  # noqa: E402
from .errors import CaffeishError  # noqa: E402
from .layer import Layer, register_layer  # noqa: E402
from .nccl import NCCL, has_nccl  # noqa: E402
from .net import TEST, TRAIN, Net  # noqa: E402
from .net_spec import NetSpec, params, to_proto  # noqa: E402
from .proto import caffe_pb2  # noqa: E402
from .runtime import (Timer, init_log, layer_type_list, log, set_multiprocess, set_solver_count,  # noqa: E402
                      set_solver_rank, solver_count, solver_rank)
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,  # noqa: E402
                      SGDSolver, Solver, get_solver)

__version__ = "0.1.0"

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "CaffeishError", "Classifier", "Detector",
           "Layer", "NCCL", "NesterovSolver", "Net", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN",
           "Timer",
           "caffe_pb2", "coord_map", "draw", "get_solver", "has_nccl", "init_log", "io", "layer_type_list", "layers",
           "log", "net_spec", "params", "proto", "register_layer", "set_device", "set_mode_cpu", "set_mode_gpu",
           "set_multiprocess", "set_random_seed", "set_solver_count", "set_solver_rank", "solver_count",
           "solver_rank", "to_proto"]

"""caffeish: Caffe's prototxt-driven workflow on numpy (CPU) and CuPy (GPU).

The names here follow pycaffe, so ``import caffeish as caffe`` runs existing
pycaffe scripts: ``caffe.Net(prototxt, caffe.TEST)``, ``caffe.set_mode_cpu()``.
"""
import os as _os

# OpenBLAS's idle threads otherwise spin ~0.1 s after every call, beside our element-wise threads
# (see caffeish.image_threads); read when numpy loads OpenBLAS, so set before numpy is imported.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

from . import layers  # noqa: E402  # registers every layer type; also NetSpec's L (see layers/__init__.py)
from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .blob import Blob
from .errors import CaffeishError
from .layer import Layer, register_layer
from .net import TEST, TRAIN, Net
from .net_spec import NetSpec, params, to_proto
from .proto import caffe_pb2
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver, Solver,
                      get_solver)

__version__ = "0.1.0"

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "CaffeishError", "Layer", "NesterovSolver", "Net",
           "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN", "caffe_pb2", "get_solver", "register_layer",
           "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed", "NetSpec", "layers", "params", "to_proto"]

"""caffeish: Caffe's prototxt-driven workflow on numpy (CPU) and CuPy (GPU).

The names here follow pycaffe, so ``import caffeish as caffe`` runs existing
pycaffe scripts: ``caffe.Net(prototxt, caffe.TEST)``, ``caffe.set_mode_cpu()``.
"""
from . import layers  # registers every layer type; also NetSpec's L (see layers/__init__.py)
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

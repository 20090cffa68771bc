"""Solvers: the training loop and its update rules, registered by Caffe's type names."""
from ..prototxt import read_solver_param
from ..registry import import_modules
from .adaptive import AdaDeltaSolver, AdaGradSolver, AdamSolver, RMSPropSolver
from .sgd import NesterovSolver, SGDSolver
from .solver import SOLVERS, Solver, register_solver, upgrade_solver_type

import_modules(__name__, __path__)  # each module registers its solver types


def get_solver(solver, **kw):
    """pycaffe's get_solver: the Solver subclass the file's ``type`` (or ``solver_type``) names."""
    from ..proto import caffe_pb2
    param = caffe_pb2.SolverParameter()
    param.CopyFrom(read_solver_param(solver))
    upgrade_solver_type(param)
    cls = SOLVERS.get(param.type, context="solver")
    return cls(solver, **kw)


__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver", "RMSPropSolver", "SGDSolver",
           "SOLVERS", "Solver", "get_solver", "register_solver"]

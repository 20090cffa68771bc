"""SGD with momentum and Nesterov's accelerated gradient (Caffe's SGDSolver, NesterovSolver).

With ``r`` the local rate (rate * lr_mult), ``g`` the regularized gradient, ``m`` the momentum:

    SGD:       v <- m v + r g;                 update = v
    Nesterov:  v' <- m v + r g;                update = (1 + m) v' - m v
"""
from ..backend import get_array_module
from .solver import Solver, register_solver


@register_solver("SGD")
class SGDSolver(Solver):
    def compute_update_value(self, i, rate):
        blob, v = self.net.learnable_params[i], self.history_blob(i).data
        xp = get_array_module(v)
        tmp = self.scratch(blob, 0)
        v *= self.param.momentum
        xp.multiply(blob.diff, self.local_rate(i, rate), out=tmp)
        v += tmp
        blob.diff[...] = v


@register_solver("Nesterov")
class NesterovSolver(Solver):
    def compute_update_value(self, i, rate):
        blob, v = self.net.learnable_params[i], self.history_blob(i).data
        xp = get_array_module(v)
        m = self.param.momentum
        previous = self.scratch(blob, 1)
        previous[...] = v
        tmp = self.scratch(blob, 0)
        v *= m
        xp.multiply(blob.diff, self.local_rate(i, rate), out=tmp)
        v += tmp
        diff = blob.diff
        xp.multiply(v, 1 + m, out=diff)
        previous *= m
        diff -= previous

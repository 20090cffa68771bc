"""Per-parameter adaptive rates (Caffe's AdaGrad, RMSProp, AdaDelta and Adam solvers).

With ``g`` the regularized gradient, ``r`` the local rate, ``d`` = delta:

    AdaGrad:   h <- h + g^2;                       update = r g / (sqrt(h) + d)
    RMSProp:   h <- rms_decay h + (1 - rms_decay) g^2;  update = r g / (sqrt(h) + d)
    AdaDelta:  h <- m h + (1 - m) g^2;  u = g sqrt((s + d) / (h + d));  s <- m s + (1 - m) u^2;  update = r u
    Adam:      m1 <- b1 m1 + (1 - b1) g;  m2 <- b2 m2 + (1 - b2) g^2;
               update = r sqrt(1 - b2^t) / (1 - b1^t) * m1 / (sqrt(m2) + d),  t = iter + 1

On the GPU each type's whole step (normalize, regularize, update, apply) is one fused CUDA kernel
(``cuda_kind``; see ``caffeish.cuda.solver_updates``) with the same operations in the same order.
"""
import math

from ..backend import get_array_module
from ..errors import CaffeishError
from .solver import Solver, register_solver


def _no_momentum(solver):
    if solver.param.momentum != 0:
        raise CaffeishError(f"momentum cannot be used with {solver.type_name} (it is {solver.param.momentum:g}); "
                            "remove it from the solver")


def _divide_by_rms(xp, g, h, tmp, delta, local_rate):
    """g <- local_rate * g / (sqrt(h) + delta), in place."""
    xp.sqrt(h, out=tmp)
    tmp += delta
    xp.divide(g, tmp, out=g)
    g *= local_rate


@register_solver("AdaGrad")
class AdaGradSolver(Solver):
    cuda_kind = "AdaGrad"
    def check_parameters(self):
        _no_momentum(self)

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history_blob(i).data
        xp = get_array_module(h)
        g = blob.diff
        tmp = self.scratch(blob, 0)
        xp.multiply(g, g, out=tmp)
        h += tmp
        _divide_by_rms(xp, g, h, tmp, self.param.delta, self.local_rate(i, rate))


@register_solver("RMSProp")
class RMSPropSolver(Solver):
    cuda_kind = "RMSProp"
    def check_parameters(self):
        _no_momentum(self)
        if not 0 <= self.param.rms_decay < 1:
            raise CaffeishError(f"rms_decay must be in [0, 1), not {self.param.rms_decay:g}")

    def compute_update_value(self, i, rate):
        blob, h = self.net.learnable_params[i], self.history_blob(i).data
        xp = get_array_module(h)
        g, decay = blob.diff, self.param.rms_decay
        tmp = self.scratch(blob, 0)
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - decay
        h *= decay
        h += tmp
        _divide_by_rms(xp, g, h, tmp, self.param.delta, self.local_rate(i, rate))


@register_solver("AdaDelta")
class AdaDeltaSolver(Solver):
    cuda_kind = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        h, s = self.history_blob(i, 0).data, self.history_blob(i, 1).data
        xp = get_array_module(h)
        g, m, d = blob.diff, self.param.momentum, self.param.delta
        update, tmp = self.scratch(blob, 0), self.scratch(blob, 1)
        xp.multiply(g, g, out=update)
        update *= 1 - m
        h *= m
        h += update
        xp.add(s, d, out=update)
        xp.add(h, d, out=tmp)
        xp.divide(update, tmp, out=update)
        xp.sqrt(update, out=update)
        g *= update
        xp.multiply(g, g, out=update)
        update *= 1 - m
        s *= m
        s += update
        g *= self.local_rate(i, rate)


@register_solver("Adam")
class AdamSolver(Solver):
    cuda_kind = "Adam"
    history_sets = 2

    def check_parameters(self):
        for name in ("momentum", "momentum2"):
            value = getattr(self.param, name)
            if not 0 <= value < 1:
                raise CaffeishError(f"Adam's {name} (beta{name[-1] if name[-1] == '2' else '1'}) must be in [0, 1), "
                                    f"not {value:g}")

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        m1, m2 = self.history_blob(i, 0).data, self.history_blob(i, 1).data
        xp = get_array_module(m1)
        g, b1, b2 = blob.diff, self.param.momentum, self.param.momentum2
        t = self.iter + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        tmp = self.scratch(blob, 0)
        xp.multiply(g, 1 - b1, out=tmp)
        m1 *= b1
        m1 += tmp
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        m2 *= b2
        m2 += tmp
        xp.sqrt(m2, out=tmp)
        tmp += self.param.delta
        xp.divide(m1, tmp, out=g)
        g *= self.local_rate(i, rate) * correction

"""Per-parameter adaptive rates (Caffe's AdaGrad, RMSProp, AdaDelta and Adam solvers): each class's update
step in numpy, and beside it the same step in CUDA C (``cuda_kernel``) for the GPU's fused kernel.

On the GPU each type's whole step (normalize, regularize, update, apply) is one fused CUDA kernel: its
update step is written here in CUDA C beside the numpy one (``cuda_kernel``; the common head in
``caffeish.cuda.solver_updates``), with the same operations in the same order.
"""
import math

from ..backend import get_array_module
from ..cuda.solver_updates import update_kernel
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
    """AdaGrad.  With ``g`` the regularized gradient, ``r`` the local rate, ``d`` = delta:

        h <- h + g^2;  update = r g / (sqrt(h) + d)
    """
    cuda_kernel = update_kernel("adagrad_update", "T* history, const T delta, const T rate", """
  const T h = history[i] + g * g;
  history[i] = h;
  g = g / (sqrt(h) + delta) * rate;""")

    def cuda_scalars(self, i, rate):
        return self.param.delta, self.local_rate(i, rate)

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
    """RMSProp.  With ``g`` the regularized gradient, ``r`` the local rate, ``d`` = delta:

        h <- rms_decay h + (1 - rms_decay) g^2;  update = r g / (sqrt(h) + d)
    """
    cuda_kernel = update_kernel("rmsprop_update", "T* history, const T decay_rate, const T one_minus_decay, "
                                "const T delta, const T rate", """
  const T h = history[i] * decay_rate + g * g * one_minus_decay;
  history[i] = h;
  g = g / (sqrt(h) + delta) * rate;""")

    def cuda_scalars(self, i, rate):
        d = self.param.rms_decay
        return d, 1 - d, self.param.delta, self.local_rate(i, rate)

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
    """AdaDelta.  With ``g`` the regularized gradient, ``r`` the local rate, ``d`` = delta, ``m`` the momentum:

        h <- m h + (1 - m) g^2;  u = g sqrt((s + d) / (h + d));  s <- m s + (1 - m) u^2;  update = r u
    """
    history_sets = 2
    cuda_kernel = update_kernel("adadelta_update", "T* history, T* history2, const T momentum, "
                                "const T one_minus_momentum, const T delta, const T rate", """
  const T h = history[i] * momentum + g * g * one_minus_momentum;
  history[i] = h;
  g = g * sqrt((history2[i] + delta) / (h + delta));
  history2[i] = history2[i] * momentum + g * g * one_minus_momentum;
  g = g * rate;""")

    def cuda_scalars(self, i, rate):
        m = self.param.momentum
        return m, 1 - m, self.param.delta, self.local_rate(i, rate)

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
    """Adam.  With ``g`` the regularized gradient, ``r`` the local rate, ``d`` = delta, b1 = momentum, b2 = momentum2:

        m1 <- b1 m1 + (1 - b1) g;  m2 <- b2 m2 + (1 - b2) g^2;
        update = r sqrt(1 - b2^t) / (1 - b1^t) * m1 / (sqrt(m2) + d),  t = iter + 1
    """
    history_sets = 2
    cuda_kernel = update_kernel("adam_update", "T* history, T* history2, const T beta1, const T one_minus_beta1, "
                                "const T beta2, const T one_minus_beta2, const T delta, const T rate", """
  const T m1 = history[i] * beta1 + g * one_minus_beta1;
  const T m2 = history2[i] * beta2 + g * g * one_minus_beta2;
  history[i] = m1;
  history2[i] = m2;
  g = m1 / (sqrt(m2) + delta) * rate;""")

    def cuda_scalars(self, i, rate):
        b1, b2 = self.param.momentum, self.param.momentum2
        return b1, 1 - b1, b2, 1 - b2, self.param.delta, self.local_rate(i, rate) * self._correction()

    def _correction(self):
        """Adam's bias correction sqrt(1 - b2^t) / (1 - b1^t), t = iter + 1."""
        t = self.iter + 1
        return math.sqrt(1 - self.param.momentum2 ** t) / (1 - self.param.momentum ** t)

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
        correction = self._correction()
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

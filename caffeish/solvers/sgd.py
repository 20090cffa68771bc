"""SGD with momentum and Nesterov's accelerated gradient (Caffe's SGDSolver, NesterovSolver): each parameter's
whole step -- normalize, regularize, momentum, apply -- fused over cache-sized slices on the CPU, and one CUDA
kernel on the GPU, with the unfused sequence's results to the last bit.
"""
import numpy

from ..backend import get_array_module
from ..cuda.solver_updates import update_kernel
from ..cpu import parallel_for
from .solver import Solver, register_solver

#: Elements per slice of the fused update (4 arrays x 256 KiB for float32: well inside L2/L3).
FUSED_CHUNK = 1 << 16


class _FusedSolver(Solver):
    """The shared slice loop; ``fused_step(xp, data, diff, history, tmp, local_rate)`` does one slice.

    The whole per-parameter sequence -- normalize (iter_size), regularize (L2/L1 with decay_mult), the
    momentum step, and applying the update (data -= update) -- is fused: it runs on slices of
    ``FUSED_CHUNK`` elements of data, diff and history at a time, so that each slice is read from
    memory once and its intermediate results stay in the CPU's cache, instead of one full pass over
    memory per step; large parameters are split into one range per thread (``caffeish.cpu.parallel_for``).
    The operations and their order are those of the unfused sequence, so the results are the same to
    the last bit.  On the GPU one CUDA kernel does the whole sequence (each class's ``cuda_kernel``, its step
    in CUDA C beside the numpy one, with the common head in ``caffeish.cuda.solver_updates``: same operations,
    same results), or, for arrays it does not take, one slice (the whole parameter).
    """
    scratch_slots = 1

    def update_param(self, i, rate):
        if self.update_param_cuda(i, rate):
            return
        blob = self.net.learnable_params[i]
        data, diff = blob.data.reshape(-1), blob.diff.reshape(-1)
        history = self.history_blob(i).data.reshape(-1)
        xp = get_array_module(data)
        p = self.param
        local_rate = self.local_rate(i, rate)
        decay = p.weight_decay * self.net.params_weight_decay[i]
        l1 = p.regularization_type == "L1"
        norm = 1.0 / p.iter_size if p.iter_size > 1 else None
        size = data.size
        step = FUSED_CHUNK if xp is numpy else max(size, 1)

        def elements(start, stop):  # one contiguous range per thread, in slices of ``step``
            tmps = [xp.empty(min(step, stop - start), dtype=data.dtype) for _ in range(self.scratch_slots)]
            for lo in range(start, stop, step):
                hi = min(lo + step, stop)
                d, g, h = data[lo:hi], diff[lo:hi], history[lo:hi]
                tmp = [t[:hi - lo] for t in tmps]
                if norm is not None:
                    g *= norm
                if decay:
                    t = tmp[0]
                    if l1:
                        xp.sign(d, out=t)
                        t *= decay
                    else:
                        xp.multiply(d, decay, out=t)
                    g += t
                self.fused_step(xp, g, h, tmp, local_rate)
                d -= g
        if xp is numpy:
            parallel_for(size, elements, size * 3)
        else:
            elements(0, size)

    def compute_update_value(self, i, rate):
        """The unfused step, for callers that run the sequence themselves."""
        blob = self.net.learnable_params[i]
        g, h = blob.diff.reshape(-1), self.history_blob(i).data.reshape(-1)
        xp = get_array_module(h)
        tmps = [self.scratch(blob, k).reshape(-1) for k in range(self.scratch_slots)]
        self.fused_step(xp, g, h, tmps, self.local_rate(i, rate))


@register_solver("SGD")
class SGDSolver(_FusedSolver):
    """SGD with momentum.  With ``r`` the local rate (rate * lr_mult), ``g`` the regularized gradient, ``m``
    the momentum:  v <- m v + r g;  update = v."""
    cuda_kernel = update_kernel("sgd_update", "T* history, const T momentum, const T rate", """
  const T v = history[i] * momentum + g * rate;
  history[i] = v;
  g = v;""")

    def cuda_scalars(self, i, rate):
        return self.param.momentum, self.local_rate(i, rate)

    def fused_step(self, xp, g, v, tmp, local_rate):
        t = tmp[0]
        v *= self.param.momentum
        xp.multiply(g, local_rate, out=t)
        v += t
        g[...] = v


@register_solver("Nesterov")
class NesterovSolver(_FusedSolver):
    """Nesterov's accelerated gradient.  With ``r`` the local rate (rate * lr_mult), ``g`` the regularized
    gradient, ``m`` the momentum:  v' <- m v + r g;  update = (1 + m) v' - m v."""
    scratch_slots = 2
    cuda_kernel = update_kernel("nesterov_update", "T* history, const T momentum, const T one_plus_momentum, "
                                "const T rate", """
  const T previous = history[i];
  const T v = previous * momentum + g * rate;
  history[i] = v;
  g = v * one_plus_momentum - previous * momentum;""")

    def cuda_scalars(self, i, rate):
        m = self.param.momentum
        return m, 1 + m, self.local_rate(i, rate)

    def fused_step(self, xp, g, v, tmp, local_rate):
        t, previous = tmp
        m = self.param.momentum
        previous[...] = v
        v *= m
        xp.multiply(g, local_rate, out=t)
        v += t
        xp.multiply(v, 1 + m, out=g)
        previous *= m
        g -= previous

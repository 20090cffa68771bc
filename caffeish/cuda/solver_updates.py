"""The whole per-parameter solver step on the GPU, one fused kernel per solver type.

For each element, with g the gradient, w the weight, h / s the history (see ``caffeish.solvers.sgd``
and ``caffeish.solvers.adaptive`` for the rules):

    g <- g * norm                    if iter_size > 1
    g <- g + decay * w  (L2)  or  g + decay * sign(w)  (L1)      if decay != 0
    g <- the solver type's update value (h, s updated)
    w <- w - g                       (the diff keeps the update value, as on the CPU)

Each step is the CPU's operation, in its order and in the element type (the hyper-parameters are
rounded to it first, as numpy does with Python floats), and the module is compiled with
``--fmad=false`` so that no multiply-add is contracted: the results equal the CPU's bit for bit.
Arrays: flat and contiguous, one element per thread of a grid-stride loop.
"""
import math

from . import kernels

SOURCE = "solver_updates"

# The shared head (normalize, regularize) and tail (apply) of every kernel: KERNEL(name, params, body).
_COMMON = r"""
__device__ __forceinline__ T sign_of(const T v) {
  return v > T(0) ? T(1) : (v < T(0) ? T(-1) : (v == T(0) ? T(0) : v));  // numpy.sign: -0 -> +0, NaN stays
}

#define SOLVER_KERNEL(name, params, body)                                                     \
extern "C" __global__ void name(const int n, T* data, T* diff, const int has_norm, const T norm, \
                                const int has_decay, const int l1, const T decay, params) {     \
  CUDA_KERNEL_LOOP(i, n) {                                                                  \
    const T w = data[i];                                                                    \
    T g = diff[i];                                                                          \
    if (has_norm) g = g * norm;                                                             \
    if (has_decay) g = g + (l1 ? sign_of(w) * decay : w * decay);                           \
    body                                                                                    \
    diff[i] = g;                                                                            \
    data[i] = w - g;                                                                        \
  }                                                                                         \
}
#define P(...) __VA_ARGS__
"""

_KERNELS = r"""
// v <- m v + r g;  update = v
SOLVER_KERNEL(sgd_update, P(T* history, const T momentum, const T rate), {
  const T v = history[i] * momentum + g * rate;
  history[i] = v;
  g = v;
})

// v' <- m v + r g;  update = (1 + m) v' - m v
SOLVER_KERNEL(nesterov_update, P(T* history, const T momentum, const T one_plus_momentum, const T rate), {
  const T previous = history[i];
  const T v = previous * momentum + g * rate;
  history[i] = v;
  g = v * one_plus_momentum - previous * momentum;
})

// h <- h + g^2;  update = r g / (sqrt(h) + delta)
SOLVER_KERNEL(adagrad_update, P(T* history, const T delta, const T rate), {
  const T h = history[i] + g * g;
  history[i] = h;
  g = g / (sqrt(h) + delta) * rate;
})

// h <- decay h + (1 - decay) g^2;  update = r g / (sqrt(h) + delta)
SOLVER_KERNEL(rmsprop_update, P(T* history, const T decay_rate, const T one_minus_decay, const T delta,
                                const T rate), {
  const T h = history[i] * decay_rate + g * g * one_minus_decay;
  history[i] = h;
  g = g / (sqrt(h) + delta) * rate;
})

// h <- m h + (1 - m) g^2;  u = g sqrt((s + d) / (h + d));  s <- m s + (1 - m) u^2;  update = r u
SOLVER_KERNEL(adadelta_update, P(T* history, T* history2, const T momentum, const T one_minus_momentum,
                                 const T delta, const T rate), {
  const T h = history[i] * momentum + g * g * one_minus_momentum;
  history[i] = h;
  g = g * sqrt((history2[i] + delta) / (h + delta));
  history2[i] = history2[i] * momentum + g * g * one_minus_momentum;
  g = g * rate;
})

// m1 <- b1 m1 + (1 - b1) g;  m2 <- b2 m2 + (1 - b2) g^2;  update = r c m1 / (sqrt(m2) + d)
SOLVER_KERNEL(adam_update, P(T* history, T* history2, const T beta1, const T one_minus_beta1, const T beta2,
                             const T one_minus_beta2, const T delta, const T rate), {
  const T m1 = history[i] * beta1 + g * one_minus_beta1;
  const T m2 = history2[i] * beta2 + g * g * one_minus_beta2;
  history[i] = m1;
  history2[i] = m2;
  g = m1 / (sqrt(m2) + delta) * rate;
})
"""


@kernels.register_source(SOURCE, options=("--fmad=false",))
def _source(dtype):
    return _COMMON + _KERNELS


def apply(kind, data, diff, histories, *, iter_size, decay, l1, hyper):
    """One solver step for one parameter: ``kind`` is the solver type ("SGD", ..., "Adam").

    data, diff, histories: flat contiguous CuPy arrays of one dtype; ``hyper``: the type's
    scalars (momentum, delta, rate, ...), see ``_arguments``.
    """
    dtype = data.dtype
    t = lambda v: kernels.scalar(dtype, v)
    head = (data.size, data, diff, iter_size > 1, t(1.0 / iter_size if iter_size > 1 else 1.0),
            bool(decay), l1, t(decay))
    name, tail = _arguments(kind, t, hyper)
    kernels.launch(SOURCE, dtype, name, data.size, head + tuple(histories) + tail)


def _arguments(kind, t, hyper):
    """(kernel name, scalar arguments) for solver ``kind``; each scalar rounded to the element type
    from the same Python float the CPU path uses (``1 - m`` is computed in double, then rounded)."""
    rate = hyper["rate"]
    if kind == "SGD":
        return "sgd_update", (t(hyper["momentum"]), t(rate))
    if kind == "Nesterov":
        m = hyper["momentum"]
        return "nesterov_update", (t(m), t(1 + m), t(rate))
    if kind == "AdaGrad":
        return "adagrad_update", (t(hyper["delta"]), t(rate))
    if kind == "RMSProp":
        d = hyper["rms_decay"]
        return "rmsprop_update", (t(d), t(1 - d), t(hyper["delta"]), t(rate))
    if kind == "AdaDelta":
        m = hyper["momentum"]
        return "adadelta_update", (t(m), t(1 - m), t(hyper["delta"]), t(rate))
    if kind == "Adam":
        b1, b2, step = hyper["momentum"], hyper["momentum2"], hyper["t"]
        correction = math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        return "adam_update", (t(b1), t(1 - b1), t(b2), t(1 - b2), t(hyper["delta"]), t(rate * correction))
    raise ValueError(f"no fused CUDA update for solver type {kind!r}")

"""The whole per-parameter solver step on the GPU, one fused kernel per solver type: a common head and tail
(normalize, regularize, apply) around each type's update step, registered beside its CPU rule
(``update_kernel``) and run by ``apply``; the results equal the CPU's bit for bit.
"""
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

#: kernel name -> (CUDA C parameter list, body): each solver type's update step, registered beside its CPU rule
#: (``caffeish.solvers.sgd``, ``caffeish.solvers.adaptive``) by ``update_kernel``.
UPDATES = {}


def update_kernel(name, params, body):
    """Register solver step ``name``: ``body`` turns ``g`` (the normalized, regularized gradient of element ``i``)
    into the update value, reading and writing the history arrays named in ``params`` (``T* history, const T
    rate, ...``: the arguments after the common ones).  Returns ``name``, for the solver class to keep."""
    if name in UPDATES:
        raise ValueError(f"solver update kernel {name!r} is registered twice")
    UPDATES[name] = (params, body)
    return name


@kernels.register_source(SOURCE, options=("--fmad=false",))
def _source(dtype):
    """Every registered update kernel, each wrapped in the common head and tail (``_COMMON``).

    Compiled with ``--fmad=false`` so that no multiply-add is contracted: with each step the CPU's
    operation in its order, the results equal the CPU's bit for bit.
    """
    return _COMMON + "".join(f"SOLVER_KERNEL({name}, P({params}), {{{body}}})\n"
                             for name, (params, body) in UPDATES.items())


def apply(kernel, data, diff, histories, *, iter_size, decay, l1, scalars):
    """One solver step for one parameter by update kernel ``kernel``.

    data, diff, histories: flat contiguous CuPy arrays of one dtype; ``scalars``: the kernel's own scalar
    arguments as Python floats, each rounded to the element type here (as numpy rounds a Python float).
    One element per thread of a grid-stride loop; for each element, with g the gradient, w the weight,
    h / s the history (each solver type's step is written beside its CPU rule, in ``caffeish.solvers.sgd``
    and ``caffeish.solvers.adaptive``):

        g <- g * norm                    if iter_size > 1
        g <- g + decay * w  (L2)  or  g + decay * sign(w)  (L1)      if decay != 0
        g <- the solver type's update value (h, s updated)
        w <- w - g                       (the diff keeps the update value, as on the CPU)

    Each step is the CPU's operation, in its order and in the element type (the hyper-parameters are
    rounded to it first, as numpy does with Python floats).
    """
    dtype = data.dtype
    t = lambda v: kernels.scalar(dtype, v)
    head = (data.size, data, diff, iter_size > 1, t(1.0 / iter_size if iter_size > 1 else 1.0),
            bool(decay), l1, t(decay))
    kernels.launch(SOURCE, dtype, kernel, data.size, head + tuple(histories) + tuple(t(v) for v in scalars))

"""Hand-written CUDA kernels for the layers and solvers where CuPy's generic array code is slow.

One module per family (``im2col``, ``pooling``, ``lrn``, ``softmax_loss``, ``solver_updates``,
and ``cudnn`` for cuDNN convolutions when CuPy provides them); ``kernels`` compiles and caches them.
The layers call them only for CuPy arrays: the numpy path never comes here.  Importing this
package imports no CuPy and compiles nothing -- it works on machines without CUDA.
"""
from . import im2col, kernels, lrn, pooling, softmax_loss, solver_updates  # noqa: F401  (registers SOURCES)
from .kernels import SOURCES  # noqa: F401

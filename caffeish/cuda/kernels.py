"""Compiling and launching the hand-written CUDA kernels: each family's registered CUDA C source, compiled
once per (device, name, dtype) with ``cupy.RawModule`` (``function``) and run over ``n`` elements with a
grid-stride loop (``launch``).  Nothing here imports CuPy at import time: the package works without a CUDA driver.
"""
import numpy

from .. import backend
from ..errors import CaffeishError

#: name -> function(dtype) -> CUDA C source.  Filled by the family modules when they are imported.
SOURCES = {}
#: name -> extra NVRTC options (beyond ``BASE_OPTIONS``).
OPTIONS = {}
BASE_OPTIONS = ("-std=c++14",)
#: The element types every kernel is compiled for.
DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
#: Threads per block: Caffe's CAFFE_CUDA_NUM_THREADS on recent GPUs.
BLOCK = 256
#: Grid-stride loops cover any size; more blocks than this only add scheduling work.
MAX_BLOCKS = 65536
INT32_MAX = 2 ** 31 - 1
#: The most elements a kernel takes: the grid-stride loop's int index goes up to n - 1 + BLOCK * MAX_BLOCKS,
#: which must not overflow.
MAX_ELEMENTS = INT32_MAX - BLOCK * MAX_BLOCKS

_CTYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
_modules = {}

# Shared by every source: the element type, FLT_MAX as Caffe spells it (a float literal, so that in double
# kernels too it is exactly float32's largest value, as on the CPU), and the loop every element-wise kernel
# uses (so one launch size serves any n).
PRELUDE = """
typedef {ctype} T;
#define CAFFEISH_FLT_MAX 3.402823466e+38F
#define CUDA_KERNEL_LOOP(i, n) \\
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
"""


def register_source(name, options=()):
    """Decorator: record ``fn(dtype) -> source`` under ``name`` (with extra NVRTC ``options``).

    Every kernel family registers its CUDA C source this way: a function of the element dtype returning the
    source text, in which ``T`` is the element type (``typedef``'d in a common prelude) -- so each kernel
    exists for float32 and float64 (the gradient checks run in float64).  ``SOURCES`` maps each name to that
    function, so a test can compile them all with NVRTC without a GPU.
    """
    def deco(fn):
        if name in SOURCES:
            raise CaffeishError(f"CUDA source {name!r} is registered twice")
        SOURCES[name] = fn
        OPTIONS[name] = tuple(options)
        return fn
    return deco


def supported_dtype(dtype):
    return numpy.dtype(dtype) in _CTYPES


def full_source(name, dtype):
    """The complete CUDA C text of source ``name`` for ``dtype`` (prelude included)."""
    dtype = numpy.dtype(dtype)
    if dtype not in _CTYPES:
        raise CaffeishError(f"CUDA kernels support float32 and float64, not {dtype}")
    if name not in SOURCES:
        raise CaffeishError(f"no CUDA source named {name!r}; known: {sorted(SOURCES)}")
    return PRELUDE.format(ctype=_CTYPES[dtype]) + SOURCES[name](dtype)


def compile_options(name):
    return BASE_OPTIONS + OPTIONS.get(name, ())


def function(name, dtype, kernel):
    """The compiled ``kernel`` of source ``name`` for ``dtype`` on the current device (compiled once)."""
    cupy = backend.cupy
    dtype = numpy.dtype(dtype)
    key = (cupy.cuda.runtime.getDevice(), name, dtype.str)
    module = _modules.get(key)
    if module is None:
        module = _modules[key] = cupy.RawModule(code=full_source(name, dtype), options=compile_options(name))
    return module.get_function(kernel)


def blocks(n, block=BLOCK):
    """Blocks for ``n`` elements in a grid-stride loop (at least 1)."""
    return max(1, min(MAX_BLOCKS, -(-int(n) // block)))


def int_args(args):
    """``args`` with Python ints (and bools) as int32: CuPy would pass them as 64-bit, the kernels take ``int``.

    numpy scalars keep their type (``numpy.int64`` for a ``long long`` parameter)."""
    return tuple(numpy.int32(a) if isinstance(a, int) else a for a in args)


def launch(name, dtype, kernel, n, args, block=BLOCK):
    """Run ``kernel`` (a grid-stride loop over ``n`` elements) with ``args``; nothing for n == 0."""
    if n <= 0:
        return
    function(name, dtype, kernel)((blocks(n, block),), (block,), int_args(args))


def fits_int32(*arrays):
    """Whether every array's element count fits the kernels' 32-bit indices (``MAX_ELEMENTS``).

    Indices are 32-bit ``int`` (64-bit division is several times slower on the GPU); the layers keep the
    generic path for arrays too large for them."""
    return all(a.size <= MAX_ELEMENTS for a in arrays)


def is_cupy(array):
    """Whether ``array`` is a CuPy array (False without CuPy)."""
    cupy = backend.cupy
    return cupy is not None and isinstance(array, cupy.ndarray)


def usable(*arrays):
    """Whether the kernels apply: CuPy arrays of a supported float dtype, small enough for int indices."""
    return (all(is_cupy(a) for a in arrays) and supported_dtype(arrays[0].dtype)
            and all(a.dtype == arrays[0].dtype for a in arrays) and fits_int32(*arrays))


def scalar(dtype, value):
    """``value`` as a kernel argument of element type ``dtype`` (rounded to it as numpy would)."""
    return numpy.dtype(dtype).type(value)


def contiguous(array):
    """``array`` itself when C-contiguous, else a contiguous copy (the kernels index flat memory)."""
    if array.flags.c_contiguous:
        return array
    return backend.cupy.ascontiguousarray(array)

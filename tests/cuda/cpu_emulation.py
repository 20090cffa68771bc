"""The project's CUDA kernels run on the CPU: their CUDA C compiled as C++ with a small shim, launched through ctypes.

This checks what the kernels compute -- indexing, Caffe's rules, float order -- on machines without a GPU; it
does not check CUDA itself (launch limits, memory spaces, real concurrency between blocks).  The shim gives
``threadIdx``/``blockIdx`` as thread-local variables, ``__shared__`` as static storage and ``__syncthreads`` as a
barrier.  A kernel whose body synchronises runs each block with ``blockDim`` real threads (blocks one after
another); every other kernel is a grid-stride loop, run once as a single thread covering all its elements.
``function(name, dtype, kernel)`` stands in for ``caffeish.cuda.kernels.function``: the callable it returns
takes ``(grid, block, args)`` like a CuPy RawKernel, with numpy arrays in place of device arrays.
"""
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import threading

import numpy

from caffeish.cuda import kernels

SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
struct emu_dim3 { unsigned int x, y, z; };
thread_local emu_dim3 threadIdx = {0, 0, 0};
thread_local emu_dim3 blockIdx = {0, 0, 0};
emu_dim3 blockDim = {1, 1, 1};
emu_dim3 gridDim = {1, 1, 1};
static std::barrier<>* emu_barrier = nullptr;
extern "C" void emu_configure(unsigned grid, unsigned block) {
  gridDim.x = grid; blockDim.x = block;
  delete emu_barrier; emu_barrier = new std::barrier<>(block);
}
extern "C" void emu_thread(unsigned block, unsigned thread) { blockIdx.x = block; threadIdx.x = thread; }
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
using std::exp; using std::log; using std::max; using std::min; using std::pow; using std::sqrt;
"""
CTYPES = {"int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
          "long long": ctypes.c_longlong, "bool": ctypes.c_bool}
_libraries = {}
_lock = threading.Lock()


def compiler():
    """The C++ compiler (None: the emulation tests skip)."""
    return shutil.which(os.environ.get("CXX", "g++"))


class Kernel:
    def __init__(self, fn, params, syncs, lib, dtype):
        self.fn, self.params, self.syncs, self.lib, self.dtype = fn, params, syncs, lib, dtype
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p if "*" in p else self._scalar(p) for p in params]

    def _scalar(self, param):
        kind = re.sub(r"\bconst\b", "", param).rsplit(None, 1)[0].strip()
        if kind == "T":
            return ctypes.c_float if self.dtype == numpy.float32 else ctypes.c_double
        return CTYPES[kind]

    def __call__(self, grid, block, args):
        if len(args) != len(self.params):
            raise TypeError(f"{len(args)} arguments for {len(self.params)} parameters")
        values = []
        for arg, param in zip(args, self.params):
            if "*" in param:
                if not (isinstance(arg, numpy.ndarray) and arg.flags.c_contiguous):
                    raise TypeError(f"parameter {param!r} needs a contiguous array, got {type(arg)}")
                values.append(arg.ctypes.data)
            else:
                if isinstance(arg, numpy.ndarray) or not isinstance(arg, (numpy.generic, int, float)):
                    raise TypeError(f"parameter {param!r} needs a scalar, got {type(arg)}")
                values.append(arg.item() if isinstance(arg, numpy.generic) else arg)
        with _lock:  # the launch configuration is global to the library
            if not self.syncs:
                self.lib.emu_configure(1, 1)
                self.lib.emu_thread(0, 0)
                self.fn(*values)
                return
            self.lib.emu_configure(grid[0], block[0])
            for b in range(grid[0]):
                threads = [threading.Thread(target=self._run, args=(b, t, values)) for t in range(block[0])]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

    def _run(self, block, thread, values):
        self.lib.emu_thread(block, thread)
        self.fn(*values)


def _build(name, dtype):
    """Compile source ``name`` for ``dtype``: (library, {kernel: (parameters, synchronises)})."""
    source = SHIM + kernels.full_source(name, dtype)
    folder = tempfile.mkdtemp(prefix="caffeish-emu-")
    path = os.path.join(folder, f"{name}.cpp")
    with open(path, "w") as f:
        f.write(source)
    flags = ["-std=c++20", "-O1", "-fPIC", "-pthread", "-ffp-contract=off"]  # no fused multiply-adds, as nvcc's
    expanded = subprocess.run([compiler(), "-E", "-P"] + flags + [path], capture_output=True, text=True, check=True)
    library = os.path.join(folder, f"{name}.so")
    subprocess.run([compiler(), "-shared"] + flags + [path, "-o", library], capture_output=True, text=True,
                   check=True)
    lib = ctypes.CDLL(library)
    lib.emu_configure.argtypes = lib.emu_thread.argtypes = [ctypes.c_uint, ctypes.c_uint]
    text = expanded.stdout
    found = {}
    heads = list(re.finditer(r'extern "C"\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{', text))
    for k, m in enumerate(heads):
        if m.group(1).startswith("emu_"):
            continue
        body = text[m.end():heads[k + 1].start() if k + 1 < len(heads) else len(text)]
        params = [p.strip() for p in m.group(2).split(",") if p.strip()]
        found[m.group(1)] = (params, "__syncthreads" in body or "emu_barrier" in body)
    return lib, found


def function(name, dtype, kernel):
    """``caffeish.cuda.kernels.function`` on the CPU."""
    dtype = numpy.dtype(dtype)
    key = (name, dtype.str)
    if key not in _libraries:
        _libraries[key] = _build(name, dtype)
    lib, found = _libraries[key]
    params, syncs = found[kernel]
    return Kernel(getattr(lib, kernel), params, syncs, lib, dtype)

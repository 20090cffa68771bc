"""Threads on the CPU: numpy's element-wise work split across a shared pool (``parallel_for``), the batch
split image by image, each thread with a single-threaded BLAS (``for_image_chunks``), and OpenBLAS's idle
worker threads kept from spinning beside ours (``quiet_idle_blas_threads``).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy

# -- threads for the element-wise work ----------------------------------------------------------
#: Below this many elements a split across threads costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 17
_threads = {"count": None, "executor": None, "pid": None}
_local = threading.local()  # in_parallel: set while this thread runs a part (nested calls run serially)


def num_threads():
    """Threads for numpy's element-wise work (copies, sums, masks): as many as the BLAS uses.

    CAFFEISH_NUM_THREADS, else OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS, else the CPUs
    this process may run on.  numpy releases the GIL inside its loops, so threads run them in parallel.
    """
    if _threads["count"] is None:
        count = None
        for var in ("CAFFEISH_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            value = os.environ.get(var, "").strip()
            if value.isdigit() and int(value) > 0:
                count = int(value)
                break
        if count is None:
            count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _threads["count"] = max(1, count)
    return _threads["count"]


def set_num_threads(count):
    """Use ``count`` threads for the element-wise work (None: decide again from the environment)."""
    _threads["count"] = None if count is None else max(1, int(count))


def parallel_for(total, fn, elements=None, xp=numpy):
    """Run ``fn(lo, hi)`` over ``[0, total)`` cut into one contiguous part per thread; the caller runs one.

    The parts run on a shared pool of ``num_threads()`` threads (as many as the BLAS uses); numpy releases
    the GIL inside its loops, so they run in parallel.  ``parallel_copy`` is a copy split this way.
    ``elements`` is the amount of work (array elements touched) deciding whether a split pays; ``xp`` the
    array module (CuPy's work is queued on the device: it runs in one call).  The parts must write disjoint
    memory.  ``fn`` must not ask for ``workspace`` buffers (they are per thread) nor call ``parallel_for``
    (nested calls run serially).
    """
    if xp is not numpy:
        fn(0, total)
        return
    count = min(num_threads(), total)
    if elements is not None:
        count = min(count, max(1, int(elements) // PARALLEL_MIN_ELEMENTS))
    if count <= 1 or getattr(_local, "in_parallel", False):
        fn(0, total)
        return
    if _threads["executor"] is None or _threads["pid"] != os.getpid() or \
            _threads["executor"]._max_workers < count - 1:
        _threads["executor"] = ThreadPoolExecutor(max_workers=max(1, num_threads() - 1),
                                                  thread_name_prefix="caffeish-numpy")
        _threads["pid"] = os.getpid()  # a forked child makes its own: the parent's threads are not in it
    bounds = [total * i // count for i in range(count + 1)]

    def run(lo, hi):
        _local.in_parallel = True
        try:
            fn(lo, hi)
        finally:
            _local.in_parallel = False
    futures = [_threads["executor"].submit(run, bounds[i], bounds[i + 1]) for i in range(count - 1)]
    try:
        run(bounds[-2], bounds[-1])
    finally:
        for f in futures:
            f.result()


def parallel_copy(dst, src, axis=0):
    """dst[...] = src, split along ``axis`` across threads (numpy; CuPy copies at once)."""
    if not isinstance(dst, numpy.ndarray) or dst.ndim == 0:
        dst[...] = src
        return
    index = [slice(None)] * dst.ndim

    def part(lo, hi):
        index_ = list(index)
        index_[axis] = slice(lo, hi)
        dst[tuple(index_)] = src[tuple(index_)]
    parallel_for(dst.shape[axis], part, dst.size)


# -- image-parallel work -------------------------------------------------------------------------
#: Column bytes per chunk of images: about one core's L2 cache (the chunk's columns are written, then
#: read by the GEMM while still cached).  At least one image per chunk, however large.
CHUNK_BYTES = 1 << 20
#: Switch for the image-parallel paths (tests turn it off to compare with the whole-batch paths).
ENABLED = True

_blas = {"controllers": None, "quieted": False}
_lock = threading.Lock()


def _controllers():
    """threadpoolctl's controllers of the BLAS libraries numpy uses ([] when threadpoolctl is absent)."""
    if _blas["controllers"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas["controllers"] = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # not installed, or a BLAS it cannot drive: keep the whole-batch paths
            _blas["controllers"] = []
    return _blas["controllers"]


def quiet_idle_blas_threads():
    """Give an OpenBLAS loaded before caffeish the ``OPENBLAS_THREAD_TIMEOUT`` now in the environment
    (once per process).

    After each call OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) before they sleep: in a
    training iteration that is always, so every element-wise pass split across our threads
    (``parallel_for``), and every chunk of ``for_image_chunks``, ran beside a spinning thread and took longer
    (see bench/README.md, Tuning history).  ``OPENBLAS_THREAD_TIMEOUT`` (log2 of the cycles) sets that spin:
    ``caffeish/__init__.py`` sets 12 (a few microseconds) unless the user set it, which takes effect when
    numpy is imported after caffeish; this applies the setting once to an OpenBLAS that was loaded before
    (it re-reads the environment and restarts the threads).
    """
    if _blas["quieted"]:
        return
    _blas["quieted"] = True
    wanted = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    if not wanted.isdigit():
        return
    for c in _controllers():
        lib = getattr(c, "dynlib", None)
        try:
            if c.internal_api != "openblas" or lib.openblas_thread_timeout() == int(wanted):
                continue  # not OpenBLAS, or it has the setting already
            lib.openblas_read_env()
            lib.blas_thread_shutdown_()  # the threads start again at the next call, with the new timeout
        except Exception:  # an OpenBLAS without these entry points: keep its default
            continue


def available(xp, num):
    """Whether ``num`` images of ``xp`` arrays should be split across threads image by image."""
    if not ENABLED or xp is not numpy or num < 2:
        return False
    return num_threads() == 1 or bool(_controllers())


@contextmanager
def single_threaded_blas():
    """The BLAS runs one thread per call while inside (the callers' threads are the parallelism)."""
    controllers = _controllers()
    with _lock:  # nested or concurrent users restore the outermost setting
        saved = [c.get_num_threads() for c in controllers]
        for c in controllers:
            c.set_num_threads(1)
    try:
        yield
    finally:
        with _lock:
            for c, n in zip(controllers, saved):
                c.set_num_threads(n)


def images_per_chunk(bytes_per_image):
    return max(1, int(CHUNK_BYTES // max(1, int(bytes_per_image))))


def num_parts(num, step):
    """How many runs of chunks ``for_image_chunks`` deals out (one per thread)."""
    return max(1, min(num_threads(), -(-num // step)))


def for_image_chunks(num, step, fn):
    """Call ``fn(start, stop, part)`` for chunks of ``step`` images covering ``[0, num)``.

    Image-parallel work: one multi-threaded GEMM over a whole batch's columns streams them through memory
    (for CIFAR-10's second convolution, 100 images of 32 x 16 x 16 with a 5x5 kernel, the columns are
    82 MB, written by im2col and read back by the GEMM from DRAM), and a GEMM with 32 output rows splits
    poorly over threads.  Caffe's CPU path (and oneDNN's) works image by image instead.  Here each thread
    takes its own share of the images and, a few at a time, builds their columns in its own work buffer --
    small enough to stay in the core's L2 cache (``CHUNK_BYTES``, ``images_per_chunk``) -- and multiplies
    them with a single-threaded GEMM; the BLAS's own threads are set to one meanwhile (``threadpoolctl``)
    so that the threads do not fight.  Used where it pays (the layers decide, through ``available``):
    numpy arrays, more than one image, threadpoolctl importable.

    The chunks are dealt out in contiguous runs, one run per thread (the caller runs one); ``part`` is
    the run's index in ``[0, parts)``, so that a thread can keep private accumulators.  Returns
    ``parts``.  The BLAS is single-threaded meanwhile.  (A pool thread may run several parts in turn,
    so per-part state belongs to the part, not to the thread.)
    """
    chunks = -(-num // step)
    parts = num_parts(num, step)
    bounds = [chunks * i // parts for i in range(parts + 1)]

    def run(lo, hi):
        for p in range(lo, hi):
            for c in range(bounds[p], bounds[p + 1]):
                fn(c * step, min(num, (c + 1) * step), p)
    with single_threaded_blas():
        parallel_for(parts, run, None)
    return parts

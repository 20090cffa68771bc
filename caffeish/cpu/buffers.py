"""Work buffers kept and reused across calls and layers, as Caffe's shared column buffer is.

One flat buffer per (array module, dtype, slot name), thread and GPU: numpy and CuPy arrays alike (the
CuPy ones per device), so layers and the CUDA column transforms use the same store.
"""
import threading

import numpy

_local = threading.local()  # pool: this thread's buffers, by (module, dtype, slot[, device])


def workspace(xp, dtype, slot, size):
    """A flat work array of at least ``size`` elements, kept and reused across calls and layers.

    One buffer per (array module, dtype, slot), thread and GPU, grown when a larger one is asked for --
    Caffe's shared column buffer: layers run one at a time, so a slot's contents only live until the
    next call that asks for the same slot.  Returns the first ``size`` elements.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    dtype = numpy.dtype(dtype)
    # a thread may drive several GPUs in turn (replicas run one after the other): a buffer per device
    key = (xp.__name__, dtype.str, slot) if xp is numpy else (xp.__name__, dtype.str, slot, xp.cuda.get_device_id())
    buf = pool.get(key)
    if buf is None or buf.size < size:
        pool[key] = None  # drop the old buffer before allocating its successor
        buf = pool[key] = xp.empty(max(int(size), 1), dtype=dtype)
    return buf[:size]


def release_workspace():
    """Free this thread's work buffers (they are made again on demand)."""
    _local.pool = {}


def buffer(xp, dtype, slot, shape):
    """An array of ``shape``: the ``workspace`` buffer ``slot``, or a fresh array when ``slot`` is None."""
    if slot is None:
        return xp.empty(shape, dtype=dtype)
    size = 1
    for s in shape:
        size *= int(s)
    return workspace(xp, dtype, slot, size).reshape(shape)

"""Process-wide helpers that pycaffe exposes at the top of ``caffe``: a timer, glog-style logging, the list
of layer types, and the solver count and rank of multi-process (NCCL-style) training."""
import logging
import time

from . import backend

_state = {"solver_count": 1, "solver_rank": 0, "multiprocess": False}
_log = logging.getLogger("caffeish")


class Timer:
    """pycaffe's ``caffe.Timer``: ``start()``, ``stop()``, then ``ms`` (milliseconds between them).  In GPU mode
    the device is synchronised at both ends, so ``ms`` covers the queued kernels as Caffe's CUDA-event timer does."""

    def __init__(self):
        self._start = self._stop = None

    def _now(self):
        if backend.mode() == "gpu":
            import cupy
            cupy.cuda.Device().synchronize()
        return time.perf_counter()

    def start(self):
        self._start, self._stop = self._now(), None

    def stop(self):
        if self._start is not None:
            self._stop = self._now()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        return 1e3 * ((self._stop if self._stop is not None else self._now()) - self._start)

    @property
    def seconds(self):
        return self.ms / 1e3


def init_log(level=0, stderr=False):
    """pycaffe's ``caffe.init_log([level[, stderr]])``: log to stderr in glog's line format from glog ``level`` up
    (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).  ``stderr`` is accepted for pycaffe's signature; logs go to stderr."""
    from .cli import setup_logging
    setup_logging({0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}.get(int(level), logging.CRITICAL))


def log(message):
    """pycaffe's ``caffe.log(message)``: one INFO line through the caffeish logger."""
    _log.info("%s", message)


def layer_type_list():
    """The registered layer types, sorted (pycaffe's ``caffe.layer_type_list()``)."""
    from .layer import LAYERS
    return sorted(LAYERS.names())


def set_solver_count(count):
    _state["solver_count"] = int(count)


def solver_count():
    return _state["solver_count"]


def set_solver_rank(rank):
    _state["solver_rank"] = int(rank)


def solver_rank():
    return _state["solver_rank"]


def set_multiprocess(multiprocess):
    _state["multiprocess"] = bool(multiprocess)


def multiprocess():
    return _state["multiprocess"]

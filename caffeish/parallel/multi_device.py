"""Data-parallel training on several devices of one process, without MPI (Caffe's P2PSync).

``MultiDeviceSolver`` is the in-process front end of ``replicas.Replicas``: a replica per GPU (or per
``"cpu"`` entry), summed by a local reducer (``local_reducers``).
"""
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy

from .. import backend
from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..prototxt import read_solver_param
from ..weights import load_weights
from .local_reducers import make_local_reducer
from .replicas import Replicas

log = logging.getLogger("caffeish")
_quiet = threading.local()


class _QuietReplicas(logging.Filter):
    """Drops the INFO (and DEBUG) records of replicas other than the root: the root alone logs."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or not getattr(_quiet, "on", False)


_FILTER = _QuietReplicas()


@contextlib.contextmanager
def _quietly(on=True):
    before = getattr(_quiet, "on", False)
    _quiet.on = on
    try:
        yield
    finally:
        _quiet.on = before


def parse_devices(devices):
    """``[0, 1]``, ``"0,1"``, ``"all"`` or ``["cpu", "cpu"]`` -> a list of GPU ids, or of "cpu" entries."""
    if isinstance(devices, str):
        if devices == "all":
            if not backend.gpu_available():
                raise CaffeishError("devices 'all': CuPy sees no CUDA device on this machine")
            return list(range(backend.cupy.cuda.runtime.getDeviceCount()))
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    out = []
    for d in devices:
        if isinstance(d, str) and d.lower() == "cpu":
            out.append("cpu")
            continue
        try:
            out.append(int(d))
        except (TypeError, ValueError):
            raise CaffeishError(f"device '{d}' is neither a GPU id nor 'cpu'") from None
    if not out:
        raise CaffeishError("data-parallel training needs at least one device")
    cpu = [d == "cpu" for d in out]
    if any(cpu) and not all(cpu):
        raise CaffeishError(f"devices {out} mix CPU and GPU replicas: give GPU ids only, or 'cpu' entries only")
    if not any(cpu) and len(set(out)) != len(out):
        raise CaffeishError(f"GPU devices {out} name a GPU twice: give each GPU once")
    return out


def check_gpus(gpus, what=None):
    """Every id of ``gpus`` is a CUDA device CuPy sees; otherwise a CaffeishError saying what to do."""
    what = what or f"training on GPUs {', '.join(map(str, gpus))} (one replica per GPU, gradients summed with NCCL)"
    if backend.cupy is None:
        raise CaffeishError(f"{what} needs CuPy: pip install 'caffeish[gpu]'. To train on the CPU, leave out --gpu "
                            "(and solver_mode: GPU)")
    if not backend.gpu_available():
        raise CaffeishError(f"{what} needs {len(gpus)} CUDA device(s), but CuPy sees none on this machine (no GPU, "
                            "or no CUDA driver). To train on the CPU, leave out --gpu (and solver_mode: GPU); "
                            "'caffeish device-query' lists the GPUs CuPy sees")
    count = backend.cupy.cuda.runtime.getDeviceCount()
    missing = [g for g in gpus if not 0 <= g < count]
    if missing:
        raise CaffeishError(f"{what}: GPU(s) {', '.join(map(str, missing))} do not exist; this machine has {count} "
                            f"GPU(s) (ids 0..{count - 1}; --gpu all takes every one)")


class MultiDeviceSolver(Replicas):
    """N synchronous replicas of one solver in this process, one per device.

    ``MultiDeviceSolver(solver, devices=[0, 1])`` (``caffeish train --gpu 0,1``) makes one solver, with
    its own nets, per device -- GPUs, or ``"cpu"`` replicas that train the same way on numpy -- all
    built from the same seed.  An iteration runs every replica's forward and backward passes, sums each
    gradient over the replicas with a local reducer (NCCL between GPUs, or host memory), divides it by
    N and lets every replica apply the same update -- so N replicas with batch B train as one solver
    with ``iter_size`` N on the same records, to float rounding (``Replicas`` says why).  The root
    alone logs, tests and snapshots; its snapshots resume on any number of replicas, or on one solver.

    ``solver``: a solver file or SolverParameter; ``devices``: GPU ids or ``"cpu"`` entries (see
    ``parse_devices``); ``reducer``: "nccl", "host" or None (NCCL for GPUs when CuPy has it);
    ``threads``: one thread per replica (default: with GPUs only).  ``root`` is replica 0's Solver:
    load weights or a snapshot into it (or use ``restore``/``load_weights`` here), call
    ``sync_from_root``, then ``step``/``solve`` here or on ``root``; ``close`` at the end.

    Threads.  With GPUs each replica has a thread of its own with its device current (CuPy releases
    the GIL while kernels run, so the replicas' passes overlap).  CPU replicas run one after the other
    on the calling thread by default: numpy's BLAS already spreads each call over the cores, and one
    thread keeps the draws from the shared host generator (Dropout masks) in a fixed order, so runs
    repeat exactly; ``threads=True`` runs them on threads too.  The gradients are summed after the
    backward passes, in buckets, not overlapped with them.  Every replica computes on CuPy's default
    stream; the work a replica's thread queues is waited for before the calling thread goes on (and
    the other way round), so nothing depends on how CuPy's per-thread streams are configured.
    """

    def __init__(self, solver, devices, *, solver_type=None, level=None, stages=None, dtype=numpy.float32,
                 reducer=None, threads=None, bucket_bytes=None, source=None):
        from ..solvers import SOLVERS, upgrade_solver_type
        self.devices = parse_devices(devices)
        self.size = len(self.devices)
        self.gpu = self.devices[0] != "cpu"
        if not isinstance(solver, caffe_pb2.SolverParameter):
            source = os.fspath(solver)
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(read_solver_param(solver))  # parsed once for every replica
        upgrade_solver_type(param)
        cls = SOLVERS.get(solver_type or param.type)
        if self.gpu:
            check_gpus(self.devices)
            backend.set_mode_gpu()
            backend.set_device(self.devices[0])  # the root's device is this thread's
        else:
            backend.set_mode_cpu()
        seed = int(param.random_seed)
        if seed < 0:  # every replica gets the same fillers
            seed = int(numpy.random.SeedSequence().generate_state(1, numpy.uint32)[0])
        self.threads = self.gpu if threads is None else bool(threads)
        self.replicas, self._pools, self.reducer = [], [], None
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
        try:
            for r in range(self.size):
                with self._on(r):
                    backend.set_random_seed(seed)
                    if r and self.gpu:  # each GPU its own random stream (Dropout masks differ between replicas)
                        backend.cupy.random.seed(int(numpy.random.SeedSequence([seed, r]).generate_state(1)[0]))
                    self.replicas.append(cls(param, level=level, stages=stages, dtype=dtype, source=source))
            self.reducer = make_local_reducer(self.devices, reducer)
            super().__init__(self.replicas, self.reducer, bucket_bytes=bucket_bytes)
        except BaseException:
            self.close()
            raise
        if self.threads:
            self._pools = [ThreadPoolExecutor(1, f"caffeish-replica-{r}", self._thread_init, (r,))
                           for r in range(self.size)]
        self._log_setup()

    # -- devices and threads -------------------------------------------------------------------------------------
    def _device(self, r):
        return backend.cupy.cuda.Device(self.devices[r]) if self.gpu else contextlib.nullcontext()

    @contextlib.contextmanager
    def _on(self, r):
        """Replica ``r``'s device current and, for all but the root, its INFO lines dropped."""
        with self._device(r), _quietly(r > 0):
            yield

    def on(self, i):
        return self._on(i)

    def _thread_init(self, r):
        if self.gpu:
            backend.cupy.cuda.Device(self.devices[r]).use()

    def _call_synced(self, r, fn):
        """On a replica's thread: ``fn``, then wait for the GPU work it queued (the next step runs elsewhere)."""
        with self._on(r):
            result = fn(self.replicas[r])
            if self.gpu:
                backend.cupy.cuda.get_current_stream().synchronize()
            return result

    def _synchronize(self):
        """Wait for the work this thread queued on every replica's GPU."""
        if self.gpu and self.threads:
            for r in range(self.size):
                with self._device(r):
                    backend.cupy.cuda.get_current_stream().synchronize()

    def map(self, fn, indices=None):
        """``fn(replica)`` for each replica of ``indices`` (all by default), on its device (and, with threads, on
        its thread): their results."""
        if not self._pools:
            return super().map(fn, indices)
        indices = range(self.size) if indices is None else indices
        self._synchronize()
        futures = [self._pools[r].submit(self._call_synced, r, fn) for r in indices]
        errors = [f.exception() for f in futures]  # wait for every one before raising
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    # -- set-up ------------------------------------------------------------------------------------------------------
    def _log_setup(self):
        where = f"GPUs {', '.join(map(str, self.devices))}" if self.gpu else f"{self.size} CPU replicas"
        megabytes = sum(b.nbytes for b in self.buckets) / 2 ** 20
        log.info("Data-parallel training in this process on %s: gradients (%.3g MB) are summed with %s all-reduce "
                 "in %d bucket(s) after the backward passes; replicas run %s", where, megabytes, self.reducer.name,
                 len(self.buckets), "on a thread each" if self.threads else "one after the other")
        batch = self.batch_size() if self.sharded else 0
        iters = self.iter_size
        log.info("Effective batch: %d replicas x batch_size %d x iter_size %d = %d (as one solver with iter_size %d)",
                 self.size, batch, iters, self.size * batch * iters, self.size * iters)
        for layer in self.sharded:
            log.info("TRAIN data layer %s (%s) is sharded: replica r reads records r, r+%d, r+%d, ...", layer.name,
                     layer.type, self.size, 2 * self.size)

    def restore(self, path):
        """Resume from a .solverstate (of any number of replicas, or of one solver)."""
        with self._on(0):
            self.root.restore(path)
        self.sync_from_root(resumed=True)

    def load_weights(self, path):
        """Fine-tune from a .caffemodel: into the root's nets, then onto every replica."""
        with self._on(0):
            for net in [self.root.net] + self.root.test_nets:
                load_weights(net, path)
        self.sync_from_root()

    # -- training ---------------------------------------------------------------------------------------------------
    def step(self, iters):
        with self._on(0):
            return self.root.step(iters)

    def solve(self, resume_file=None):
        if resume_file:
            self.restore(resume_file)
        with self._on(0):
            return self.root.solve()

    def snapshot(self):
        with self._on(0):
            return self.root.snapshot()

    @property
    def root(self):
        """Replica 0's Solver."""
        return self.solver

    @property
    def test_nets(self):
        return self.root.test_nets

    @property
    def iter(self):
        return self.root.iter

    def same_weights(self):
        """Whether every replica holds exactly the root's weights."""
        hosts = [backend.to_cpu(b.data) for b in self.root.net.learnable_params]
        for replica in self.replicas[1:]:
            for blob, host in zip(replica.net.learnable_params, hosts):
                if not numpy.array_equal(backend.to_cpu(blob.data), host):
                    return False
        return True

    def close(self):
        """Stop the replicas' data threads and worker threads and release the NCCL communicators."""
        for replica in self.replicas:
            for net in [replica.net] + replica.test_nets:
                net.close()
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._pools = []
        if self.reducer is not None:
            self.reducer.close()
            self.reducer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Reducers across MPI ranks for the gradient buckets: MPI on host arrays, NCCL on GPU arrays.

Each sums the one flat array of a rank's replica over the ranks, in place, without blocking
(the interface ``replicas.Replicas`` drives; ``make_reducer`` picks one).
"""
import os
import threading
import time

import numpy

from .. import backend


PROGRESS_ENV = "CAFFEISH_MPI_PROGRESS"
PROGRESS_TAG = 7002


class _ProgressThread:
    """Drives MPI's progress engine while all-reduces are in flight.

    MPICH (and Open MPI) advance a non-blocking collective only inside MPI calls, a step per call, so
    an all-reduce started in the middle of the backward pass would sit idle until the next layer's hook.
    This thread calls ``MPI_Iprobe`` (on a communicator of its own, never on the requests) every
    ``interval`` seconds while requests are in flight, and sleeps on an event otherwise.  It needs
    ``MPI_THREAD_MULTIPLE`` (mpi4py's default); set ``CAFFEISH_MPI_PROGRESS=0`` to go without it.
    """

    def __init__(self, comm, MPI, interval=1e-4):
        self.comm, self.MPI, self.interval = comm, MPI, interval
        self.active = threading.Event()
        self.thread = threading.Thread(target=self._run, name="caffeish-mpi-progress", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            self.active.wait()
            while self.active.is_set():
                self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=PROGRESS_TAG)
                time.sleep(self.interval)


def progress_thread_wanted(MPI):
    if os.environ.get(PROGRESS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


class MPIReducer:
    """``MPI_Iallreduce(MPI_IN_PLACE, ..., MPI_SUM)`` on host (numpy) arrays.

    ``start(arrays)`` (``arrays``: the one array of this rank's replica) returns a handle,
    ``done(handles)`` tests (and drives progress), ``finish(handle, arrays)`` makes the sum visible
    to what runs next.  A thread drives MPI's progress engine while all-reduces are in flight
    (``_ProgressThread``): without it they advance only when the next layer's hook calls into MPI.
    """
    name = "MPI"

    def __init__(self, world):
        self.world = world
        self.MPI = world.MPI
        wanted = world.all_agree(progress_thread_wanted(self.MPI), "the progress thread agreement")
        self.pump = _ProgressThread(world.world.Dup(), self.MPI) if wanted else None

    def start(self, arrays):
        (array,) = arrays
        request = self.world.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        if self.pump is not None:
            self.pump.active.set()
        return request

    def done(self, handles):
        return self.MPI.Request.Testall(handles)

    def progress(self, handles):
        if handles:
            self.MPI.Request.Testall(handles)

    def finish(self, handle, arrays):
        if self.pump is not None:
            self.pump.active.clear()


class HostStagingReducer(MPIReducer):
    """GPU arrays over MPI through host copies (when NCCL is not available)."""
    name = "MPI (through host memory)"

    def __init__(self, world):
        super().__init__(world)
        self.host = {}

    def start(self, arrays):
        host = backend.to_cpu(arrays[0])
        request = super().start([host])
        self.host[id(request)] = host
        return request

    def finish(self, handle, arrays):
        super().finish(handle, arrays)
        arrays[0][...] = backend.cupy.asarray(self.host.pop(id(handle)))


def nccl_type(nccl, dtype):
    """NCCL's data type constant for a numpy/CuPy dtype."""
    types = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32, numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64,
             numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16}
    return types[numpy.dtype(dtype)]


class NCCLReducer:
    """ncclAllReduce (sum) on a communication stream of its own (``--gpu`` under MPI).

    One communicator over the job, bootstrapped with a unique id that rank 0 makes and broadcasts
    over MPI; each all-reduce runs on a stream of its own after an event recorded on the compute
    stream, so it overlaps the rest of the backward pass.  It is written for CuPy's
    ``cupy.cuda.nccl`` and has NOT been run here (no GPU on the machines this was written on).
    """
    name = "NCCL"

    def __init__(self, world):
        import cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if world.root else None
        uid = world.bcast_object(uid, "the NCCL unique id broadcast")
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        world.on_abort.append(self.comm.abort)

    def start(self, arrays):
        (array,) = arrays
        ready = self.cupy.cuda.get_current_stream().record()
        self.stream.wait_event(ready)
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, nccl_type(self.nccl, array.dtype),
                            self.nccl.NCCL_SUM, self.stream.ptr)
        return self.stream.record()

    def done(self, handles):
        return all(event.done for event in handles)

    def progress(self, handles):
        pass

    def finish(self, handle, arrays):
        self.cupy.cuda.get_current_stream().wait_event(handle)


def nccl_available():
    """Whether CuPy's NCCL binding is importable and usable."""
    if backend.cupy is None:
        return False
    try:
        from cupy.cuda import nccl
    except Exception:
        return False
    return bool(getattr(nccl, "available", True))


def make_reducer(world, gpu):
    """NCCL for GPU arrays when CuPy has it (else MPI through the host), MPI for host arrays."""
    if not gpu:
        return MPIReducer(world)
    if world.all_agree(nccl_available()):  # NCCL on every rank or on none
        return NCCLReducer(world)
    return HostStagingReducer(world)

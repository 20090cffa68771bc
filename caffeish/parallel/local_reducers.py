"""Reducers between the replicas of one process: NCCL across the GPUs, or a sum in host memory.

Each sums N same-shaped flat arrays, one per replica, leaving the sum in every one of them
(``allreduce(arrays)``; ``make_local_reducer`` picks one).
"""
import logging

import numpy

from .. import backend
from ..errors import CaffeishError
from .reducers import nccl_available, nccl_type

log = logging.getLogger("caffeish")


class LocalReducer:
    """A reducer of one process: its sums are complete (for NCCL, queued on the replicas' streams) when ``start``
    returns, so the non-blocking interface of ``reducers`` (which ``replicas.Replicas`` drives) is trivial here."""
    name = "local"

    def allreduce(self, arrays):
        raise NotImplementedError

    def start(self, arrays):
        self.allreduce(arrays)

    def done(self, handles):
        return True

    def progress(self, handles):
        pass

    def finish(self, handle, arrays):
        pass

    def close(self):
        pass


class HostReducer(LocalReducer):
    """The replicas' arrays summed in host memory (numpy arrays in place; CuPy arrays through host copies)."""
    name = "host"

    def __init__(self, devices):
        self.devices = list(devices)

    def allreduce(self, arrays):
        hosts = [backend.to_cpu(a) for a in arrays]
        total = hosts[0].copy()
        for host in hosts[1:]:
            total += host
        for device, array in zip(self.devices, arrays):
            if isinstance(array, numpy.ndarray):
                array[...] = total
            else:
                with backend.cupy.cuda.Device(device):
                    array.set(total)


class NCCLReducer(LocalReducer):
    """One NCCL communicator per GPU (``NcclCommunicator.initAll``), all-reduces issued as one group.

    As Caffe's NCCL-based P2PSync did: one ``ncclAllReduce`` per GPU between ``groupStart`` and
    ``groupEnd``, each on the stream its replica computes on (so what comes next on that GPU waits for
    it and nothing else does).
    """
    name = "NCCL"

    def __init__(self, devices):
        from cupy.cuda import nccl
        self.cupy, self.nccl = backend.cupy, nccl
        self.devices = [int(d) for d in devices]
        self.comms = nccl.NcclCommunicator.initAll(self.devices)

    def allreduce(self, arrays):
        nccl = self.nccl
        nccl.groupStart()
        try:
            for device, comm, array in zip(self.devices, self.comms, arrays):
                with self.cupy.cuda.Device(device):
                    stream = self.cupy.cuda.get_current_stream()
                    comm.allReduce(array.data.ptr, array.data.ptr, array.size, nccl_type(nccl, array.dtype),
                                   nccl.NCCL_SUM, stream.ptr)
        finally:
            nccl.groupEnd()

    def close(self):
        for comm in self.comms:
            comm.destroy()
        self.comms = []


def make_local_reducer(devices, kind=None):
    """``kind``: "nccl", "host" or None (NCCL for GPU replicas when available, else host memory)."""
    gpu = all(isinstance(d, int) for d in devices)
    if kind is None:
        kind = "nccl" if gpu and nccl_available() else "host"
    if kind == "host":
        if gpu:
            log.warning("NCCL is not available to CuPy: the replicas' gradients are summed through host memory")
        return HostReducer(devices)
    if kind != "nccl":
        raise CaffeishError(f"unknown reducer '{kind}': nccl or host")
    if not gpu:
        raise CaffeishError("the NCCL reducer needs GPU replicas, not CPU ones")
    if not nccl_available():
        raise CaffeishError("the NCCL reducer was asked for, but CuPy's NCCL binding (cupy.cuda.nccl) is not "
                            "available: install NCCL for CuPy (pip install nvidia-nccl-cu12) or use the host reducer")
    return NCCLReducer(devices)

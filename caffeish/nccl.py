"""pycaffe's ``caffe.NCCL``: synchronous data-parallel training across processes that pycaffe scripts start
themselves (Caffe's python/train.py): one solver per process, gradients summed and averaged every iteration.
"""
import os
import socket
import struct
import tempfile
import time

import numpy

from . import backend, runtime
from .errors import CaffeishError

#: Seconds a rank waits for the others to join, and for each exchange.
TIMEOUT = 300.0
_HEADER = struct.Struct("<Q")


def has_nccl():
    """True: ``caffe.NCCL`` is available (pycaffe's ``has_nccl()`` tells whether Caffe was built with it)."""
    return True


class NCCL:
    """``NCCL(solver, uid)``: this process's seat in a group of ``caffe.solver_count()`` solvers.

    Each process calls ``caffe.set_solver_count(N)`` and ``caffe.set_solver_rank(r)``, builds its solver, then
    ``nccl = caffe.NCCL(solver, uid)`` with a ``uid`` from ``caffe.NCCL.new_uid()`` made once by the parent,
    ``nccl.bcast()`` (every rank starts from rank 0's weights) and ``solver.add_callback(nccl)``.  Each rank's
    TRAIN data layers read their own shard (rank r reads records r, r + N, ...), as in ``caffeish train`` with
    MPI.  The processes meet over a local socket named by the uid and reduce through rank 0 in rank order, so
    every run gives the same sums; arrays on a GPU go through host memory.  For many GPUs on one machine
    ``caffeish train --gpu 0,1,...`` (NCCL proper, through CuPy) is the faster road.
    """

    def __init__(self, solver, uid):
        if not isinstance(uid, (bytes, bytearray)) or not bytes(uid).startswith(b"caffeish-nccl-"):
            raise CaffeishError(f"NCCL needs a uid from caffe.NCCL.new_uid(), not {uid!r}")
        self.solver = solver
        self.rank, self.size = runtime.solver_rank(), runtime.solver_count()
        if not 0 <= self.rank < self.size:
            raise CaffeishError(f"solver rank {self.rank} is outside 0..{self.size - 1}: call "
                                "caffe.set_solver_count(N) and caffe.set_solver_rank(r) before building the solver")
        self._group = _SocketGroup(bytes(uid), self.rank, self.size) if self.size > 1 else None
        self._flat = None
        if self.size > 1:
            for layer in solver.net.layers:
                if hasattr(layer, "set_shard"):
                    layer.set_shard(self.rank, self.size)

    @staticmethod
    def new_uid():
        """A fresh id naming one group of processes (bytes, as pycaffe's under Python 3)."""
        return b"caffeish-nccl-" + os.urandom(12).hex().encode()

    def _gather(self, field):
        """The parameters' ``field`` (data or diff) side by side in one host buffer, kept between iterations."""
        params = self.solver.net.learnable_params
        if self._flat is None:
            self._flat = numpy.empty(sum(p.count for p in params), dtype=self.solver.net.dtype)
        offset = 0
        for blob in params:
            self._flat[offset:offset + blob.count] = backend.to_cpu(getattr(blob, field)).ravel()
            offset += blob.count
        return self._flat

    def _scatter(self, field):
        offset = 0
        for blob in self.solver.net.learnable_params:
            part = self._flat[offset:offset + blob.count].reshape(blob.shape)
            getattr(blob, field)[...] = backend.to_current(part, blob.dtype)
            offset += blob.count

    def bcast(self):
        """Give every rank rank 0's parameters."""
        if self._group is None:
            return
        self._group.broadcast(self._gather("data"))
        self._scatter("data")

    def on_start(self):
        pass

    def on_gradients_ready(self):
        """Sum the parameter gradients over the ranks and divide by their number (Caffe's NCCL)."""
        if self._group is None:
            return
        flat = self._gather("diff")
        self._group.allreduce(flat)
        flat /= flat.dtype.type(self.size)
        self._scatter("diff")

    def __call__(self, layer_id):
        # ``solver.net.after_backward(nccl)`` (layer-wise reduction in Caffe): the whole reduction happens in
        # on_gradients_ready instead, with the same result.
        pass

    def close(self):
        if self._group is not None:
            self._group.close()
            self._group = None


def _recv_exact(sock, view):
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise CaffeishError("NCCL: another rank closed its connection (did it fail?)")
        got += n


class _SocketGroup:
    """Rank 0 listens on a Unix socket named by the uid; the others connect.  Messages are length-prefixed."""

    def __init__(self, uid, rank, size):
        self.rank, self.size = rank, size
        self._part = None  # rank 0's receive buffer
        self.path = os.path.join(tempfile.gettempdir(), uid.decode("ascii") + ".sock")
        deadline = time.monotonic() + TIMEOUT
        if rank == 0:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.path)
            server.listen(size)
            server.settimeout(TIMEOUT)
            peers = {}
            try:
                while len(peers) < size - 1:
                    conn, _ = server.accept()
                    conn.settimeout(TIMEOUT)
                    head = bytearray(_HEADER.size)
                    _recv_exact(conn, memoryview(head))
                    peers[_HEADER.unpack(head)[0]] = conn
            except socket.timeout:
                raise CaffeishError(f"NCCL: only {len(peers) + 1} of {size} ranks joined within {TIMEOUT:g} s") \
                    from None
            finally:
                server.close()
                os.unlink(self.path)
            self.peers = [peers[r] for r in range(1, size)]
        else:
            while True:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(self.path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    conn.close()
                    if time.monotonic() > deadline:
                        raise CaffeishError(f"NCCL: rank 0 did not start within {TIMEOUT:g} s") from None
                    time.sleep(0.01)
            conn.settimeout(TIMEOUT)
            conn.sendall(_HEADER.pack(rank))
            self.peers = [conn]

    def _send(self, conn, array):
        conn.sendall(_HEADER.pack(array.nbytes))
        conn.sendall(memoryview(array).cast("B"))

    def _recv(self, conn, out):
        head = bytearray(_HEADER.size)
        _recv_exact(conn, memoryview(head))
        if _HEADER.unpack(head)[0] != out.nbytes:
            raise CaffeishError("NCCL: the ranks hold parameters of different sizes (are they training the same "
                                "net?)")
        _recv_exact(conn, memoryview(out).cast("B"))

    def broadcast(self, array):
        if self.rank == 0:
            for conn in self.peers:
                self._send(conn, array)
        else:
            self._recv(self.peers[0], array)

    def allreduce(self, array):
        """``array`` becomes the sum over the ranks (added in rank order, so every rank gets the same bits)."""
        if self.rank == 0:
            if self._part is None or self._part.shape != array.shape or self._part.dtype != array.dtype:
                self._part = numpy.empty_like(array)
            for conn in self.peers:
                self._recv(conn, self._part)
                array += self._part
        else:
            self._send(self.peers[0], array)
        self.broadcast(array)

    def close(self):
        for conn in self.peers:
            conn.close()
        self.peers = []

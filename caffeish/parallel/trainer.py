"""Data-parallel training over MPI: each rank of ``mpiexec -n N caffeish train`` one replica of the solver.

``DataParallel`` is the MPI front end of ``replicas.Replicas``; ``shared_seed`` and ``rank_gpu`` set a rank up.
"""
import logging
import time

import numpy

from .. import backend
from .reducers import make_reducer
from .replicas import Replicas

log = logging.getLogger("caffeish")


class DataParallel(Replicas):
    """Makes ``solver`` one of ``world.size`` synchronous data-parallel replicas, one per MPI rank.

    Make it on every rank right after the solver (all ranks built from the same seed: ``shared_seed``),
    let rank 0 load any weights or snapshot, call ``broadcast_from_root`` on every rank, set
    ``solver.action_request = dp.agree(...)``, train, and call ``finish`` on every rank.  What the
    replicas compute, and the data order, are ``Replicas``'.

    Overlap.  The gradients are all-reduced (``reducers``: MPI, or NCCL with ``--gpu``) in buckets, each
    started with a non-blocking all-reduce as soon as the backward pass has gone through every layer
    holding its parameters, in backward order; the solver waits for all of them (``on_gradients_ready``)
    before ``apply_update``.  Parameters no layer computes a gradient for (``lr_mult: 0``, frozen
    layers) are not sent.

    Roles.  Rank 0 alone logs at INFO (the others log warnings and errors), runs the test nets and
    writes the snapshots.  Stop/snapshot requests (SIGINT, SIGHUP) are exchanged with the gradients and
    acted on by every rank at the same iteration, one iteration after they arrive.
    """
    unit = "rank"

    def __init__(self, solver, world, bucket_bytes=None):
        self.world = world
        super().__init__([solver], make_reducer(world, backend.mode() == backend.GPU), ranks=[world.rank],
                         size=world.size, bucket_bytes=bucket_bytes, overlap=True)
        self.control = numpy.zeros(3, dtype=numpy.float64)  # loss, stop requests, snapshot requests
        self._pending, self._agreed = set(), "none"
        self._root_snapshotted = False
        #: Seconds spent waiting for the all-reduce after the backward pass, and iterations.
        self.stats = {"wait_s": 0.0, "iterations": 0}
        self._log_setup()

    def _log_setup(self):
        if not self.world.root:
            return
        n, batch, iters = self.size, self.batch_size(), self.iter_size
        megabytes = sum(b.nbytes for b in self.buckets) / 2 ** 20
        log.info("Data-parallel training on %d MPI ranks: gradients (%.3g MB) are summed with %s all-reduce in %d "
                 "bucket(s) of up to %.3g MB, each started as the backward pass finishes its layers", n, megabytes,
                 self.reducer.name, len(self.buckets), self.bucket_bytes / 2 ** 20)
        log.info("Effective batch: %d ranks x batch_size %d x iter_size %d = %d (as one process with iter_size %d)",
                 n, batch, iters, n * batch * iters, n * iters)
        for layer in self.sharded:
            log.info("TRAIN data layer %s (%s) is sharded: rank r reads records r, r+%d, r+%d, ...", layer.name,
                     layer.type, n, 2 * n)
        others = f"; ranks 1..{n - 1} only train" if n > 2 else "; rank 1 only trains" if n == 2 else ""
        log.info("Rank 0 alone logs, runs the test nets%s and writes the snapshots%s",
                 "" if self.root_tests else " (there are none)", others)

    # -- rank 0's state on every rank ------------------------------------------------------------------------------
    def broadcast_from_root(self, resumed=False):
        """Rank 0's weights (and, resuming, its history, iteration and data positions) on every rank; then each
        rank other than 0 takes a random stream of its own (dropout masks differ between ranks)."""
        self.sync_from_root(resumed)

    def share_arrays(self, arrays):
        for host in arrays:
            self.world.bcast_array(host, "the weight broadcast from rank 0")

    def share_object(self, obj):
        return self.world.bcast_object(obj, "the solver state broadcast from rank 0")

    def root_state(self, resumed):
        """Each rank has a random generator and data readers of its own: rank 0's go with every broadcast."""
        state = self.solver.resume_state()
        return {"iter": self.solver.iter, "current_step": self.solver.current_step, "rng": state["rng"],
                "train": state["train"]}

    def take_state(self, solver, state):
        super().take_state(solver, state)
        base = int(backend.rng().integers(2 ** 63 - 1))
        backend.set_random_seed(int(numpy.random.SeedSequence([base, self.world.rank]).generate_state(1)[0]))

    # -- requests (SIGINT/SIGHUP) -----------------------------------------------------------------------------------
    def agree(self, local):
        """``solver.action_request`` for every rank: local requests are exchanged with the next gradients and
        returned on every rank at the same iteration."""
        def request():
            self.world.check_notices()
            effect = local() if local is not None else "none"
            if effect in ("stop", "snapshot"):
                self._pending.add(effect)
            agreed, self._agreed = self._agreed, "none"
            return agreed
        return request

    # -- the gradients ----------------------------------------------------------------------------------------------
    def _timeout(self):
        """No limit for the other ranks while rank 0 tests or snapshots (its test nets may take long)."""
        if self.world.root:
            return None
        p, it = self.solver.param, self.solver.iter
        testing = self.root_tests and p.test_interval and it % p.test_interval == 0 and (it > 0 or
                                                                                         p.test_initialization)
        return 0 if testing or self._root_snapshotted else None

    def wait_for_sums(self, handles):
        """Wait for every bucket's all-reduce, with the loss and the stop/snapshot requests summed alongside."""
        self.control[:] = (self.solver.iteration_loss, "stop" in self._pending, "snapshot" in self._pending)
        self._pending.clear()
        MPI = self.world.MPI
        control = self.world.comm.Iallreduce(MPI.IN_PLACE, self.control, op=MPI.SUM)
        start = time.perf_counter()
        timeout = self._timeout()
        self.world.wait(lambda: self.reducer.done(handles), "the gradient all-reduce", timeout)
        self.world.wait_requests([control], "the loss all-reduce", timeout)
        self.stats["wait_s"] += time.perf_counter() - start
        self.stats["iterations"] += 1

    def on_gradients_ready(self):
        """The gradients' and the loss's means over the ranks; the requests every rank acts on next."""
        super().on_gradients_ready()
        self._root_snapshotted = False
        self._agreed = "stop" if self.control[1] > 0 else "snapshot" if self.control[2] > 0 else "none"
        self.solver.iteration_loss = float(self.control[0]) / self.size

    def before_snapshot(self):
        """Every rank checks that the weights are still the same everywhere; rank 0 alone writes the files."""
        self.check_same_weights()
        self._root_snapshotted = True
        return self.world.root

    def check_same_weights(self):
        """Whether every rank holds the same weights (per-parameter sums compared); rank 0 warns if not."""
        params = self.net.learnable_params
        if not params or self.size == 1:
            return True
        sums = numpy.array([float(backend.get_array_module(b.data).sum(b.data, dtype=numpy.float64)) for b in params])
        both = numpy.concatenate([sums, -sums])
        MPI = self.world.MPI
        self.world.wait_requests([self.world.comm.Iallreduce(MPI.IN_PLACE, both, op=MPI.MAX)],
                                 "the weight check", 0 if not self.world.root else None)
        high, low = both[:len(sums)], -both[len(sums):]
        differ = numpy.flatnonzero(~((high == low) | (numpy.isnan(high) & numpy.isnan(low))))
        if differ.size and self.world.root:
            names = ", ".join(self.net.learnables[i].name for i in differ[:5])
            log.warning("The weights differ between ranks at iteration %d (%d parameter blob(s): %s): the ranks no "
                        "longer train one model", self.solver.iter, differ.size, names)
        return not differ.size

    # -- the end ----------------------------------------------------------------------------------------------------
    def finish(self):
        """Wait for every rank (rank 0 may still be testing or snapshotting), then log the all-reduce waits."""
        timeout = None if self.world.root else 0
        self.world.wait_requests([self.world.comm.Ibarrier()], "the end of training", timeout)
        if self.world.root and self.stats["iterations"]:
            log.info("Data-parallel: %d iterations, %.3g ms per iteration waiting for the all-reduce after the "
                     "backward pass", self.stats["iterations"], 1e3 * self.stats["wait_s"] / self.stats["iterations"])


def shared_seed(world, param):
    """Every rank builds the same net: with no ``random_seed`` in the solver, rank 0 draws one for all."""
    if param.random_seed >= 0:
        return int(param.random_seed)  # the Solver seeds itself with it
    seed = int(numpy.random.SeedSequence().generate_state(1, numpy.uint32)[0]) if world.root else 0
    seed = int(world.bcast_object(seed, "the random seed broadcast"))
    backend.set_random_seed(seed)
    return seed


def rank_gpu(world, gpus):
    """The GPU of this rank: the local rank's entry of ``gpus`` (one GPU per rank on each host)."""
    if world.local_size > len(gpus) and world.root:
        log.warning("%d ranks on this host share %d GPU(s) (%s): give --gpu all, or as many GPUs as ranks",
                    world.local_size, len(gpus), ",".join(map(str, gpus)))
    return gpus[world.local_rank % len(gpus)]

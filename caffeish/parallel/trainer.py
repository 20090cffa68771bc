"""Synchronous data-parallel SGD over MPI ranks, attached to any Solver (Caffe 1.0's multi-GPU semantics).

Every rank builds the same solver from the same seed; rank 0's weights (its fillers, ``--weights`` or
``--snapshot``) are broadcast; each rank reads its own shard of every TRAIN data source; each
iteration's gradients are summed over the ranks and divided by the number of ranks -- as Caffe's
P2PSync/NCCL did ("loss functions divide gradients by the batch size, so to compensate for split
batch, the root solver divides by number of solvers") -- before the solver's own update, which
every rank then applies alike.  N ranks with batch B and iter_size I thus train as one process with
batch B and iter_size N x I on the same records: each iteration sums the gradients of the same N x I
x B records and divides by N x I.

Data order.  A single process with iter_size N reads records 0..B-1, B..2B-1, ... as the N
sub-batches of an iteration.  Rank r reads records r, r + N, r + 2N, ... (Caffe's ``Skip()``), so
an iteration's N local batches hold exactly the iteration's N x B records, in other batches.  As
losses are means over examples, the summed gradient is the same up to float rounding; layers that
look across a batch (BatchNorm statistics) see other batches.  See ``caffeish.layers.data.prefetch`` for
the sharded readers and the resume state.

Overlap.  The gradients are all-reduced in buckets of about ``CAFFEISH_BUCKET_MB`` MB (default 25),
each started with a non-blocking all-reduce as soon as the backward pass has gone through every
layer holding its parameters (a ``Net.after_backward`` callback), in backward order; the
solver waits for all of them (the trainer's ``on_gradients_ready``, a solver callback) before
``apply_update``.  Parameters no layer computes a gradient for (``lr_mult: 0``, frozen layers) are not sent.

Roles.  Rank 0 alone logs at INFO (the others log warnings and errors), runs the test nets and
writes the snapshots.  Stop/snapshot requests (SIGINT, SIGHUP) are exchanged with the gradients and
acted on by every rank at the same iteration, one iteration after they arrive.
"""
import logging
import os
import time

import numpy

from .. import backend
from ..layers.data.prefetch import PrefetchingDataLayer
from .reducers import make_reducer

log = logging.getLogger("caffeish")

DEFAULT_BUCKET_MB = 25.0  # as PyTorch DDP; docs/scaling.md: fewer, larger buckets pay less ring latency
BUCKET_ENV = "CAFFEISH_BUCKET_MB"
#: Data layers whose source is not sharded: every rank reads the same data from them.
UNSHARDED_SOURCES = ("MemoryData", "Python", "Input", "DummyData", "WindowData")


class _Bucket:
    """Gradients all-reduced together: one parameter in place, or several through a flat buffer."""

    def __init__(self, blobs, trigger):
        self.blobs, self.trigger = blobs, trigger
        self.count = sum(b.count for b in blobs)
        self.nbytes = sum(b.count * b.dtype.itemsize for b in blobs)
        self.flat = None
        self.array = self.handle = None

    def gather(self):
        if len(self.blobs) == 1:
            self.array = self.blobs[0].diff.reshape(-1)  # a view: reduced in place
            return self.array
        first = self.blobs[0].diff
        xp = backend.get_array_module(first)
        if self.flat is None or backend.get_array_module(self.flat) is not xp:
            self.flat = xp.empty(self.count, dtype=first.dtype)
        xp.concatenate([b.diff.reshape(-1) for b in self.blobs], out=self.flat)
        self.array = self.flat
        return self.flat

    def scatter(self, scale):
        if len(self.blobs) == 1:
            if scale != 1.0:
                self.blobs[0].diff[...] *= scale
        else:
            xp = backend.get_array_module(self.flat)
            offset = 0
            for blob in self.blobs:
                part = self.flat[offset:offset + blob.count].reshape(blob.shape)
                if scale != 1.0:
                    xp.multiply(part, blob.dtype.type(scale), out=blob.diff)
                else:
                    blob.diff[...] = part
                offset += blob.count
        self.array = self.handle = None


def gradient_layers(net):
    """``[(learnable param index, layer id)]`` in backward order: each trained parameter and the layer after
    whose backward its gradient is complete (the first, in forward order, of the layers sharing it)."""
    ready = {}
    for record in net.param_records:
        lid, index = record.layer_id, record.learnable
        if net.layer_need_backward[lid] and net.layers[lid].param_propagate_down[record.index]:
            ready[index] = min(ready.get(index, lid), lid)
    return sorted(ready.items(), key=lambda item: (-item[1], item[0]))


def make_buckets(net, bucket_bytes):
    """Consecutive (in backward order) trained parameters, closed once they reach ``bucket_bytes`` (a bucket
    ends with the parameter that fills it: a small bias rides with the next big weight, not alone)."""
    buckets, current, size = [], [], 0
    for index, lid in gradient_layers(net):
        blob = net.learnable_params[index]
        current.append(blob)
        size += blob.count * blob.dtype.itemsize
        if size >= bucket_bytes:  # lid is the smallest so far: ready once this layer's backward is done
            buckets.append(_Bucket(current, lid))
            current, size = [], 0
    if current:
        buckets.append(_Bucket(current, lid))
    return buckets


def bucket_bytes_from_env():
    value = os.environ.get(BUCKET_ENV, "").strip()
    try:
        return max(float(value), 0.0) * 2 ** 20 if value else DEFAULT_BUCKET_MB * 2 ** 20
    except ValueError:
        return DEFAULT_BUCKET_MB * 2 ** 20


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


class DataParallel:
    """Makes ``solver`` one of ``world.size`` synchronous data-parallel replicas.

    Make it on every rank right after the solver (all ranks built from the same seed: ``shared_seed``),
    let rank 0 load any weights or snapshot, call ``broadcast_from_root`` on every rank, set
    ``solver.action_request = dp.agree(...)``, train, and call ``finish`` on every rank.
    """

    def __init__(self, solver, world, bucket_bytes=None):
        self.solver, self.world = solver, world
        self.net = solver.net
        self.size = world.size
        self.scale = 1.0 / world.size
        self.iter_size = solver.param.iter_size
        self.sharded = self._shard_train_data()
        self.root_tests = bool(solver.test_nets)
        if not world.root:  # rank 0 alone tests
            for net in solver.test_nets:
                net.close()
            solver.test_nets = []
        gpu = backend.mode() == backend.GPU
        self.reducer = make_reducer(world, gpu)
        self.bucket_bytes = bucket_bytes_from_env() if bucket_bytes is None else float(bucket_bytes)
        self.buckets = make_buckets(self.net, self.bucket_bytes)
        self._triggers = {}
        for bucket in self.buckets:
            self._triggers.setdefault(bucket.trigger, []).append(bucket)
        self._seen = {}
        self._active = []
        self.control = numpy.zeros(3, dtype=numpy.float64)  # loss, stop requests, snapshot requests
        self._pending, self._agreed = set(), "none"
        self._root_snapshotted = False
        #: Seconds spent waiting for the all-reduce after the backward pass, and iterations.
        self.stats = {"wait_s": 0.0, "iterations": 0}
        self.net.after_backward(self._layer_backward_done)
        solver.add_callback(self)
        self._log_setup()

    # -- set-up -----------------------------------------------------------------------------------------------------
    def _shard_train_data(self):
        sharded = []
        for layer in self.net.layers:
            if isinstance(layer, PrefetchingDataLayer):
                layer.set_shard(self.world.rank, self.size)
                sharded.append(layer)
            elif layer.type in UNSHARDED_SOURCES and not layer.param.bottom and self.world.root and self.size > 1:
                log.warning("Layer %s (%s) is not sharded: every rank reads the same data from it", layer.name,
                            layer.type)
        return sharded

    def batch_size(self):
        for layer in self.sharded or self.net.layers[:1]:
            tops = self.net.top_vecs[self.net.layers.index(layer)]
            if tops and tops[0].shape:
                return int(tops[0].shape[0])
        return 0

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

    def broadcast_from_root(self, resumed=False):
        """Rank 0's weights (and, resuming, its history, iteration and data positions) on every rank; then each
        rank other than 0 takes a random stream of its own (dropout masks differ between ranks)."""
        world, solver = self.world, self.solver
        blobs = list(self.net.learnable_params) + (list(solver.history) if resumed else [])
        for blob in blobs:
            host = backend.to_cpu(blob.data)
            world.bcast_array(host, "the weight broadcast from rank 0")
            if host is not blob.data and not world.root:
                blob.data[...] = backend.to_current(host, blob.dtype)
        state = solver.resume_state() if world.root else None
        info = world.bcast_object({"iter": solver.iter, "current_step": solver.current_step,
                                   "rng": state and state["rng"], "train": state and state["train"]},
                                  "the solver state broadcast from rank 0")
        if not world.root:
            solver.iter, solver.current_step = info["iter"], info["current_step"]
            solver.set_resume_state({"rng": info["rng"], "train": info["train"]})
            base = int(backend.rng().integers(2 ** 63 - 1))
            backend.set_random_seed(int(numpy.random.SeedSequence([base, world.rank]).generate_state(1)[0]))

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
    def _layer_backward_done(self, lid):
        seen = self._seen[lid] = self._seen.get(lid, 0) + 1
        if seen == self.iter_size:
            for bucket in self._triggers.get(lid, ()):
                self._start(bucket)
        self.reducer.progress(self._active)

    def _start(self, bucket):
        if bucket.handle is None:
            bucket.handle = self.reducer.start(bucket.gather())
            self._active.append(bucket.handle)

    def _timeout(self):
        """No limit for the other ranks while rank 0 tests or snapshots (its test nets may take long)."""
        if self.world.root:
            return None
        p, it = self.solver.param, self.solver.iter
        testing = self.root_tests and p.test_interval and it % p.test_interval == 0 and (it > 0 or
                                                                                         p.test_initialization)
        return 0 if testing or self._root_snapshotted else None

    # -- the solver's callbacks --------------------------------------------------------------------------------------
    def on_gradients_ready(self):
        """Wait for every bucket's all-reduce and scale the sums to means; the loss becomes the ranks' mean."""
        loss = self.solver.iteration_loss
        for bucket in self.buckets:  # any a layer hook did not start (none, normally)
            self._start(bucket)
        self.control[:] = (loss, "stop" in self._pending, "snapshot" in self._pending)
        self._pending.clear()
        MPI = self.world.MPI
        control = self.world.comm.Iallreduce(MPI.IN_PLACE, self.control, op=MPI.SUM)
        start = time.perf_counter()
        timeout = self._timeout()
        self.world.wait(lambda: self.reducer.done(self._active), "the gradient all-reduce", timeout)
        self.world.wait_requests([control], "the loss all-reduce", timeout)
        self.stats["wait_s"] += time.perf_counter() - start
        self.stats["iterations"] += 1
        for bucket in self.buckets:
            self.reducer.finish(bucket.handle, bucket.array)
            bucket.scatter(self.scale)
        self._active = []
        self._seen.clear()
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

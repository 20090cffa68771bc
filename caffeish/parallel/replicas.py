"""The data-parallel core: N synchronous replicas of one solver, all in this process or one in each of N.

``Replicas`` holds what MPI training (``trainer.DataParallel``) and several devices in one process
(``multi_device.MultiDeviceSolver``) share; ``make_buckets`` groups the gradients it sums.
"""
import contextlib
import logging
import os

from .. import backend
from ..errors import CaffeishError
from ..layers.data.prefetch import PrefetchingDataLayer

log = logging.getLogger("caffeish")

DEFAULT_BUCKET_MB = 25.0  # as PyTorch DDP; docs/scaling.md: fewer, larger buckets pay less ring latency
BUCKET_ENV = "CAFFEISH_BUCKET_MB"
#: Data layers whose source is not sharded: every replica reads the same data from them.
UNSHARDED_SOURCES = ("MemoryData", "Python", "Input", "DummyData", "WindowData")


class Bucket:
    """Gradients of one net summed together: one parameter in place, or several through a flat buffer."""

    def __init__(self, blobs, trigger):
        self.blobs, self.trigger = blobs, trigger
        self.count = sum(b.count for b in blobs)
        self.nbytes = sum(b.count * b.dtype.itemsize for b in blobs)
        self.flat = None

    def gather(self):
        """The gradients as one flat array (the parameter's own diff when it is alone)."""
        if len(self.blobs) == 1:
            return self.blobs[0].diff.reshape(-1)  # a view: reduced in place
        first = self.blobs[0].diff
        xp = backend.get_array_module(first)
        if self.flat is None or backend.get_array_module(self.flat) is not xp:
            self.flat = xp.empty(self.count, dtype=first.dtype)
        xp.concatenate([b.diff.reshape(-1) for b in self.blobs], out=self.flat)
        return self.flat

    def scatter(self, scale):
        """The summed flat array, times ``scale``, back into the gradients."""
        if len(self.blobs) == 1:
            if scale != 1.0:
                self.blobs[0].diff[...] *= scale
            return
        xp = backend.get_array_module(self.flat)
        offset = 0
        for blob in self.blobs:
            part = self.flat[offset:offset + blob.count].reshape(blob.shape)
            if scale != 1.0:
                xp.multiply(part, blob.dtype.type(scale), out=blob.diff)
            else:
                blob.diff[...] = part
            offset += blob.count


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
            buckets.append(Bucket(current, lid))
            current, size = [], 0
    if current:
        buckets.append(Bucket(current, lid))
    return buckets


def bucket_bytes_from_env():
    value = os.environ.get(BUCKET_ENV, "").strip()
    try:
        return max(float(value), 0.0) * 2 ** 20 if value else DEFAULT_BUCKET_MB * 2 ** 20
    except ValueError:
        return DEFAULT_BUCKET_MB * 2 ** 20


class Replicas:
    """``size`` synchronous data-parallel replicas of one solver, of which this process holds ``replicas``.

    Caffe 1.0's multi-GPU semantics.  Every replica is built from the same seed and takes the root's
    (replica 0's) weights (``sync_from_root``); replica r of N reads records r, r + N, r + 2N, ... of
    every TRAIN data source (Caffe's ``Skip()``; ``caffeish.layers.data.prefetch`` has the sharded readers
    and their resume state); each iteration's gradients are summed over the replicas and divided by N --
    as Caffe's P2PSync/NCCL did ("loss functions divide gradients by the batch size, so to compensate
    for split batch, the root solver divides by number of solvers") -- before the solver's own update,
    which every replica then applies alike.  N replicas with batch B and iter_size I thus train as one
    solver with batch B and iter_size N x I on the same records: a single solver with iter_size N reads
    records 0..B-1, B..2B-1, ... as the N sub-batches of an iteration, and the replicas' N local batches
    hold exactly the iteration's N x B records, in other batches.  As losses are means over examples,
    the summed gradient is the same up to float rounding; layers that look across a batch (BatchNorm
    statistics) see other batches.  The root alone keeps its test nets and writes snapshots.

    ``replicas``: this process's solvers; ``ranks``: their indices among all ``size`` replicas (by
    default 0, 1, ...: every replica is here); ``reducer``: sums one flat array per replica of this
    process over all the replicas, without blocking -- ``start(arrays)`` returns a handle,
    ``done(handles)``, ``progress(handles)``, ``finish(handle, arrays)`` -- across processes
    (``reducers``) or within this one (``local_reducers``).  The gradients are summed in buckets of
    about ``bucket_bytes`` (``CAFFEISH_BUCKET_MB``, default 25 MB); with ``overlap`` (one replica here
    only) each bucket's sum starts from the backward pass as soon as the layers holding its parameters
    are done (a ``Net.after_backward`` callback), otherwise once every pass is done.

    The first replica here drives: its ``step``/``solve`` runs each forward and backward pass on every
    replica of this process (this object is its ``Solver.set_passes`` strategy) and, through its
    callbacks (``Solver.add_callback``), clears the others' gradients (``on_start``), sums the
    gradients and updates the other replicas alike (``on_gradients_ready``) and vetoes snapshots away
    from the root (``before_snapshot``).  A front end decides where a replica's work runs (``on``,
    ``map``) and how the root's state reaches other processes (``share_arrays``, ``share_object``,
    ``root_state``, ``take_state``) and waits for the sums (``wait_for_sums``).
    """
    #: What the log calls a replica.
    unit = "replica"

    def __init__(self, replicas, reducer, *, ranks=None, size=None, bucket_bytes=None, overlap=False):
        self.replicas = list(replicas)
        self.ranks = list(range(len(self.replicas))) if ranks is None else [int(r) for r in ranks]
        self.size = len(self.replicas) if size is None else int(size)
        if not self.replicas or len(self.ranks) != len(self.replicas) or len(set(self.ranks)) != len(self.ranks) \
                or not all(0 <= r < self.size for r in self.ranks) or (0 in self.ranks and self.ranks[0] != 0):
            raise CaffeishError(f"replicas {self.ranks} of {self.size}: give each replica of this process a distinct "
                                "index in 0..size-1, the root (0), when here, first")
        if overlap and len(self.replicas) > 1:
            raise CaffeishError("overlapping the sums with the backward pass needs one replica in this process")
        self.solver = self.replicas[0]
        self.is_root = self.ranks[0] == 0
        self.reducer = reducer
        self.scale = 1.0 / self.size
        self.iter_size = self.solver.param.iter_size
        self.sharded = self._shard_train_data()
        self.root_tests = bool(self.solver.test_nets)
        for solver, rank in zip(self.replicas, self.ranks):
            if rank:  # the root alone tests
                for net in solver.test_nets:
                    net.close()
                solver.test_nets = []
        self.bucket_bytes = bucket_bytes_from_env() if bucket_bytes is None else float(bucket_bytes)
        #: ``replica_buckets[i][k]``: bucket k of replica i of this process (every replica has the same ones).
        self.replica_buckets = [make_buckets(solver.net, self.bucket_bytes) for solver in self.replicas]
        self._triggers = {}
        for k, bucket in enumerate(self.buckets):
            self._triggers.setdefault(bucket.trigger, []).append(k)
        self._seen, self._started, self._active = {}, {}, []
        if overlap:
            self.net.after_backward(self._layer_backward_done)
        self.solver.set_passes(self)
        self.solver.add_callback(self)

    @property
    def net(self):
        """The train net of the driving solver."""
        return self.solver.net

    @property
    def buckets(self):
        """The driving solver's gradient buckets (``make_buckets``)."""
        return self.replica_buckets[0]

    def batch_size(self):
        """The batch size of a replica's first sharded data layer (of its first layer when none is sharded)."""
        for layer in self.sharded or self.net.layers[:1]:
            tops = self.net.top_vecs[self.net.layers.index(layer)]
            if tops and tops[0].shape:
                return int(tops[0].shape[0])
        return 0

    def _shard_train_data(self):
        sharded = []
        for i, (solver, rank) in enumerate(zip(self.replicas, self.ranks)):
            for layer in solver.net.layers:
                if isinstance(layer, PrefetchingDataLayer):
                    layer.set_shard(rank, self.size)
                    if i == 0:
                        sharded.append(layer)
                elif i == 0 and self.is_root and self.size > 1 and layer.type in UNSHARDED_SOURCES \
                        and not layer.param.bottom:
                    log.warning("Layer %s (%s) is not sharded: every %s reads the same data from it", layer.name,
                                layer.type, self.unit)
        return sharded

    # -- where a replica's work runs (a front end with devices or threads overrides these) ---------------------------
    def on(self, i):
        """A context in which replica ``i`` of this process computes."""
        return contextlib.nullcontext()

    def map(self, fn, indices=None):
        """``fn(solver)`` for each replica of this process (those of ``indices``, by default all): the results."""
        indices = range(len(self.replicas)) if indices is None else indices
        results = []
        for i in indices:
            with self.on(i):
                results.append(fn(self.replicas[i]))
        return results

    # -- the root's state on every replica ----------------------------------------------------------------------------
    def sync_from_root(self, resumed=False):
        """The root's weights (and, resuming, its history, iteration and data positions) on every replica."""
        def blobs(solver):
            return list(solver.net.learnable_params) + (list(solver.history) if resumed else [])
        hosts = [backend.to_cpu(b.data) for b in blobs(self.solver)]
        self.share_arrays(hosts)
        state = self.share_object(self.root_state(resumed) if self.is_root else None)

        def take(solver):
            for blob, host in zip(blobs(solver), hosts):
                if host is not blob.data:
                    blob.data[...] = backend.to_current(host, blob.dtype)
            self.take_state(solver, state)
        self.map(take, [i for i, rank in enumerate(self.ranks) if rank])

    def share_arrays(self, arrays):
        """Host arrays of this process's first replica: the root's values, in place (here already)."""

    def share_object(self, obj):
        """The root's ``obj`` (on the replicas' process: already here)."""
        return obj

    def root_state(self, resumed):
        """What, besides weights and history, the other replicas take from the root."""
        return {"iter": self.solver.iter, "current_step": self.solver.current_step,
                "train": self.solver.resume_state()["train"] if resumed else None}

    def take_state(self, solver, state):
        """A replica other than the root takes ``root_state``."""
        solver.iter, solver.current_step = state["iter"], state["current_step"]
        resume = {key: state[key] for key in ("rng", "train") if state.get(key) is not None}
        if resume:
            solver.set_resume_state(resume)

    # -- an iteration: the driving solver's passes strategy and callbacks ---------------------------------------------
    def on_start(self):
        """The driving solver clears its own gradients each iteration; the other replicas here, theirs."""
        if len(self.replicas) > 1:
            self.map(lambda solver: solver.net.clear_param_diffs(), range(1, len(self.replicas)))

    def forward_backward(self, solver):
        """One forward and backward pass of every replica of this process; their mean loss."""
        losses = self.map(lambda replica: replica.net.forward_backward())
        return float(sum(losses)) / len(self.replicas)

    def _layer_backward_done(self, lid):
        seen = self._seen[lid] = self._seen.get(lid, 0) + 1
        if seen == self.iter_size:
            for k in self._triggers.get(lid, ()):
                self._start(k)
        self.reducer.progress(self._active)

    def _start(self, k):
        if k in self._started:
            return
        arrays = []
        for i, buckets in enumerate(self.replica_buckets):
            with self.on(i):
                arrays.append(buckets[k].gather())
        handle = self.reducer.start(arrays)
        self._started[k] = handle, arrays
        self._active.append(handle)

    def started(self):
        """[(bucket, handle)] for the buckets whose sums have started this iteration (what ``wait_for_sums`` waits
        for; ``bench/allreduce.py`` reads how many were already done when the backward pass ended)."""
        return [(self.buckets[k], handle) for k, (handle, _) in self._started.items()]

    def wait_for_sums(self, handles):
        """Wait until the reducer has summed every bucket (``handles``: what its ``start`` returned)."""
        while not self.reducer.done(handles):
            self.reducer.progress(handles)

    def on_gradients_ready(self):
        """Sum each gradient over the replicas and divide it by N; the other replicas here update alike."""
        for k in range(len(self.buckets)):  # the buckets no backward pass started
            self._start(k)
        self.wait_for_sums(self._active)
        for k in range(len(self.buckets)):
            handle, arrays = self._started[k]
            self.reducer.finish(handle, arrays)
            for i, buckets in enumerate(self.replica_buckets):
                with self.on(i):
                    buckets[k].scatter(self.scale)
        self._started.clear()
        self._active = []
        self._seen.clear()
        if len(self.replicas) > 1:
            driver = self.solver

            def update(solver):
                solver.iter, solver.current_step = driver.iter, driver.current_step
                solver.apply_update()
            self.map(update, range(1, len(self.replicas)))

    def before_snapshot(self):
        """The root alone writes snapshots."""
        return self.is_root

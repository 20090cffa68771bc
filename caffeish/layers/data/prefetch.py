"""Prefetching for data layers: batches are read, decoded and transformed on a background thread.
``PrefetchingDataLayer`` (the base of Data, ImageData and HDF5Data) runs a ``Reader`` ahead of the net, with
the same batches whether it runs ahead or not, after a resume, and split across data-parallel ranks.
"""
import atexit
import logging
import os
import queue
import threading
import time
import weakref

import numpy

from ... import backend
from ...errors import CaffeishError
from ...layer import Layer

log = logging.getLogger("caffeish")

ENV_VAR = "CAFFEISH_PREFETCH"
THREAD_PREFIX = "caffeish-prefetch"
#: Seconds ``close`` waits for a prefetch thread that is stuck in a read before it gives up on it.
CLOSE_TIMEOUT = 10.0
_LIVE = weakref.WeakSet()
_exiting = [False]

# Stream tags of the random streams derived from a layer's seed.
TRANSFORM_STREAM, SHUFFLE_STREAM, SKIP_STREAM, ROW_SHUFFLE_STREAM = 0, 1, 2, 3


def batch_rng(seed, k):
    """The generator batch ``k`` of a layer with ``seed`` draws its transform randoms from."""
    return numpy.random.default_rng([int(seed), TRANSFORM_STREAM, int(k)])


def stream_rng(seed, stream, *key):
    """A generator for another purpose (``SHUFFLE_STREAM`` with the epoch, ``SKIP_STREAM``...)."""
    return numpy.random.default_rng([int(seed), int(stream), *(int(x) for x in key)])


def new_seed():
    """A layer seed from the engine's generator (fixed by ``caffeish.set_random_seed``)."""
    return int(backend.rng().integers(0, 2 ** 63 - 1))


def prefetch_from_env():
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def live_prefetch_threads():
    """The prefetch threads running now (for tests and diagnostics)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


class Reader:
    """A sequential source of batches.

    ``position()`` is a small JSON-able dict saying where the next batch starts; ``seek(position)``
    goes there; ``load_batch(rng)`` returns a tuple of numpy arrays and advances; ``describe(position)``
    expands a position for ``get_state`` (e.g. with the shuffle order in force) and
    ``check_position(state)`` validates one coming from ``set_state``.  ``open``/``release`` take and
    give back what one reading thread needs (an LMDB cursor; ``release`` may be called when nothing is
    held); ``close`` gives back everything, and a later ``open`` takes it again.  A reader
    must not hold a reference to its layer (so that a dropped layer can stop its thread).
    """
    seed = 0

    def open(self):
        pass

    def release(self):
        pass

    def close(self):
        self.release()

    def position(self):
        raise NotImplementedError

    def seek(self, position):
        raise NotImplementedError

    def load_batch(self, rng):
        raise NotImplementedError

    def describe(self, position):
        return dict(position)

    def check_position(self, state):
        return dict(state)

    #: This reader's share of the records: offsets ``shard_rank + k * shard_size`` (see ``set_shard``).
    shard_rank, shard_size = 0, 1

    def skip(self, n):
        """Advance ``n`` records without reading them (readers that can be sharded give this)."""
        raise NotImplementedError

    def stride_skip(self):
        """After each record read: step over the other shards' records (nothing without sharding)."""
        if self.shard_size > 1:
            self.skip(self.shard_size - 1)

    def batch_key(self, k):
        """The random-stream index of local batch ``k``: its index in the single-process count."""
        return k * self.shard_size + self.shard_rank


class _Worker:
    """One prefetch thread: reads batches ``start``, ``start + 1``, ... into a bounded queue."""

    def __init__(self, reader, seed, start, position, depth, name, device=None):
        self.queue = queue.Queue(maxsize=max(1, int(depth)))
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(reader, seed, start, position, device),
                                       name=f"{THREAD_PREFIX}-{name}", daemon=True)
        _LIVE.add(self)
        self.thread.start()

    def _run(self, reader, seed, k, position, device):
        try:
            reader.open()
            reader.seek(position)
            to_device = _device_copier(device)
            while not self.stop_event.is_set():
                arrays = reader.load_batch(batch_rng(seed, reader.batch_key(k)))
                if to_device is not None:
                    arrays = to_device(arrays)
                if not self._put((k, arrays, reader.position(), None)):
                    return
                k += 1
        except BaseException as e:  # handed to the main thread, raised there
            self._put((k, None, None, e))
        finally:
            try:
                reader.release()
            except Exception:  # pragma: no cover - best effort
                log.debug("releasing a data reader failed", exc_info=True)

    def _put(self, item):
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a batch or an error") from None

    def stop(self, timeout=None):
        """Ask the thread to stop and wait for it (at most ``timeout`` s); whether it has stopped."""
        self.stop_event.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        _LIVE.discard(self)
        return not self.thread.is_alive() or self.thread is threading.current_thread()


def _device_copier(device):
    """A function copying a tuple of numpy arrays to GPU ``device`` on a stream of its own, or None.

    Each array goes through a page-locked (pinned) host buffer kept per slot, so that the copy is a DMA
    transfer that runs asynchronously on the stream, as Caffe's prefetch thread did; the worker waits
    for it before handing the batch over (the buffer is then free for the next batch)."""
    if device is None:
        return None
    import cupy
    import cupyx
    cupy.cuda.Device(device).use()
    stream = cupy.cuda.Stream(non_blocking=True)
    pinned = {}

    def staged(slot, array):
        buf = pinned.get(slot)
        if buf is None or buf.shape != array.shape or buf.dtype != array.dtype:
            buf = pinned[slot] = cupyx.empty_pinned(array.shape, array.dtype)
        buf[...] = array
        return buf

    def copy(arrays):
        out = []
        # The pool hands this stream memory that the consumer's stream may still be reading (a batch it
        # dropped): the copies wait for what is queued on the device's default stream until now.
        stream.wait_event(cupy.cuda.Stream.null.record())
        with stream:
            for slot, a in enumerate(arrays):
                d = cupy.empty(a.shape, a.dtype)
                d.set(staged(slot, a), stream=stream)
                out.append(d)
        stream.synchronize()
        return tuple(out)
    return copy


class _Holder:
    """What must be stopped and closed when a layer goes away (holds no reference to the layer)."""

    def __init__(self):
        self.worker = None
        self.reader = None

    def stop_worker(self, timeout=None):
        """Stop the prefetch thread; False (and a warning) if it is still stuck in a read after ``timeout`` s."""
        worker, self.worker = self.worker, None
        if worker is None or worker.stop(timeout):
            return True
        log.warning("the prefetch thread %s did not stop within %g s (a read from its data source hangs); "
                    "leaving it and its source open", worker.thread.name, timeout)
        return False

    def close(self):
        # A reader still in use by a stuck thread is not closed under it (closing an LMDB mid-read can crash).
        if self.stop_worker(2.0 if _exiting[0] else CLOSE_TIMEOUT) and self.reader is not None:
            self.reader.close()


@atexit.register
def _stop_all():
    _exiting[0] = True
    for worker in list(_LIVE):
        worker.stop(2.0)


class PrefetchingDataLayer(Layer):
    """Base of the data layers that read ahead (Data, ImageData, HDF5Data).

    Subclasses give ``make_reader(seed, top) -> (reader, top_shapes)``.

    A data layer is a ``PrefetchingDataLayer`` with a ``Reader``: a sequential source whose
    ``load_batch(rng)`` returns the next batch (one numpy array per top) and advances.  A daemon
    thread runs the reader ahead of the net, keeping up to ``data_param.prefetch`` (default 4)
    finished batches in a bounded queue; in GPU mode it also copies them to the device.

    Determinism
        Batch ``k`` (counted from 0 since setup) draws its random numbers (crop offsets, mirror flags)
        from ``numpy.random.default_rng([seed, 0, k])``; shuffle orders are functions of
        ``(seed, epoch)`` (``batch_rng``/``stream_rng``).  The layer ``seed`` is drawn from
        ``caffeish.backend.rng()`` at setup, so ``caffeish.set_random_seed`` fixes it.  Nothing
        depends on how far the thread has run ahead, so batch ``k`` is the same with prefetching,
        without it (``layer.prefetch = False``, the class switch ``PrefetchingDataLayer.use_threads``,
        ``data_param { prefetch: 0 }`` or the environment variable ``CAFFEISH_PREFETCH=0``), and after
        a resume.

    State (``get_state``; JSON-serialisable)
        ``{"type", "seed", "batch", ...reader position}`` where ``batch`` is the index of the next
        batch the *net* will consume and the reader position (e.g. ``epoch``, ``pos`` and the shuffle
        ``order`` in force) is where that batch starts -- not where the thread has read to.
        ``set_state`` stops the thread and restarts it from there, so a resumed run sees exactly the
        batches an uninterrupted one would have.

    Sharding (data-parallel training, ``caffeish.parallel``)
        ``layer.set_shard(rank, size)`` makes a layer read every ``size``-th record of its source,
        starting with record ``rank`` (Caffe 1.0's multi-GPU ``Skip()``): the layer's records are
        those at offsets ``rank, rank + size, rank + 2 size, ...`` of the stream a single process
        would read (counted from setup, across epochs), so ``size`` ranks read disjoint records
        that together cover the source.  Local batch ``k`` of rank ``r`` draws its randoms as
        batch ``k * size + r`` of that stream.  The state stays valid for any ``size``: rank 0's
        reader position *is* the global one (the offset is a multiple of ``size`` at every batch
        boundary) and ``batch`` is the index of the next batch in the single-process count, so
        a state saved with ``size`` N restarts ``size`` M readers -- or one, unsharded -- from the
        global position: rank ``r`` seeks there and skips ``r`` records.  Readers give ``skip(n)``
        (advance ``n`` records without reading them) to be shardable; with ``size`` 1 nothing changes.

    Errors
        An exception in the thread is handed over with its batch index and re-raised on the next
        ``forward`` as a ``CaffeishError`` naming the layer and the original error.

    Threads stop on ``close()``, when the layer is garbage-collected, after an error, and at
    interpreter exit.
    """
    exact_num_bottom = 0
    has_backward = False
    #: Class-wide switch: False makes every such layer read on the main thread.
    use_threads = True

    def __init__(self, param, dtype=numpy.float32):
        super().__init__(param, dtype)
        depth = int(param.data_param.prefetch)
        self.prefetch_depth = max(1, depth)
        #: Read ahead on a thread (set False before a forward to read synchronously).
        self.prefetch = bool(self.use_threads and depth > 0 and prefetch_from_env())
        #: Seconds forward has spent waiting for the prefetch thread's batches (the solver logs it).
        self.waited = 0.0
        self.reader = None
        self.seed = None
        self._batch = 0
        self._position = None
        self._sync_open = False
        self._holder = _Holder()
        self._finalizer = weakref.finalize(self, self._holder.close)
        self._finalizer.atexit = False  # _stop_all handles interpreter exit

    # -- to override --------------------------------------------------------------------------------------------
    def make_reader(self, seed, top):
        """Open the source: return ``(reader, [shape of each top])``."""
        raise NotImplementedError

    # -- Layer ------------------------------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        self.close()
        self.seed = new_seed()
        reader, shapes = self.make_reader(self.seed, top)
        reader.seed = self.seed
        self.reader = self._holder.reader = reader
        for blob, shape in zip(top, shapes):
            blob.reshape(shape)
        self._batch = 0
        self._position = reader.position()

    def reshape(self, bottom, top):
        pass  # each batch sets its own shape in forward

    def forward(self, bottom, top):
        k, arrays, position = self._next_batch()
        for blob, array in zip(top, arrays):
            if blob.shape != tuple(array.shape):
                blob.reshape(array.shape)
            blob.data = array  # numpy or cupy, onto the blob's device
        self._batch, self._position = k + 1, position

    def backward(self, top, propagate_down, bottom):
        pass

    # -- reading ------------------------------------------------------------------------------------------------
    def _next_batch(self):
        if self.reader is None:
            raise CaffeishError("the layer is not set up", layer=self.name, layer_type=self.type)
        if self.prefetch:
            self._release_sync()
            worker = self._holder.worker
            if worker is None:
                device = backend.current_device() if backend.mode() == backend.GPU else None
                worker = self._holder.worker = _Worker(self.reader, self.seed, self._batch, self._position,
                                                       self.prefetch_depth, self.name, device)
            start = time.perf_counter()
            try:
                k, arrays, position, error = worker.get()
            except RuntimeError as e:
                self._holder.stop_worker()
                raise self._error(self._batch, e) from e
            finally:
                self.waited += time.perf_counter() - start
            if error is not None:
                self._holder.stop_worker()
                raise self._error(k, error) from error
            return k, arrays, position
        self._holder.stop_worker()
        try:
            if not self._sync_open:
                self.reader.open()
                self._sync_open = True
                self.reader.seek(self._position)
            arrays = self.reader.load_batch(batch_rng(self.seed, self.reader.batch_key(self._batch)))
        except Exception as e:
            self._release_sync()
            raise self._error(self._batch, e) from e
        return self._batch, arrays, self.reader.position()

    def _release_sync(self):
        if self._sync_open:
            self._sync_open = False
            self.reader.release()

    def _error(self, k, error):
        if isinstance(error, CaffeishError):
            reason = str(error)
        else:
            reason = f"{type(error).__name__}: {error}"
        return CaffeishError(f"reading batch {k} failed: {reason}", layer=self.name, layer_type=self.type)

    # -- sharding (data-parallel training) --------------------------------------------------------------------
    def set_shard(self, rank, size):
        """Read only records ``rank, rank + size, ...`` of the source (see the module's "Sharding").

        The layer's current place is taken as the global one: call it before the first forward (as
        ``caffeish.parallel`` does, right after setup) or right after ``set_state``.
        """
        rank, size = int(rank), int(size)
        if self.reader is None:
            raise CaffeishError("set_shard before setup", layer=self.name, layer_type=self.type)
        if not 0 <= rank < size:
            raise CaffeishError(f"shard rank {rank} is outside 0..{size - 1}", layer=self.name, layer_type=self.type)
        if size > 1 and type(self.reader).skip is Reader.skip:
            raise CaffeishError(f"its reader ({type(self.reader).__name__}) cannot skip records, so it cannot be "
                                "sharded", layer=self.name, layer_type=self.type)
        self._holder.stop_worker()
        self._release_sync()
        global_batch = self.reader.batch_key(self._batch) - self.reader.shard_rank
        self.reader.shard_rank, self.reader.shard_size = rank, size
        self._batch = global_batch // size
        self._position = self._local_position(self._position)

    @property
    def shard(self):
        """``(rank, size)``: this layer's share of its source ((0, 1): all of it)."""
        return (self.reader.shard_rank, self.reader.shard_size) if self.reader is not None else (0, 1)

    def _local_position(self, position):
        """Where this shard starts when the global stream stands at ``position``: ``shard_rank`` records on."""
        if self.reader.shard_rank == 0:
            return position
        reader = self.reader
        reader.open()
        try:
            reader.seek(position)
            reader.skip(reader.shard_rank)
            return reader.position()
        finally:
            reader.release()

    # -- state ----------------------------------------------------------------------------------------------------
    def get_state(self):
        if self.reader is None:
            return None
        state = {"type": self.type, "seed": int(self.seed), "batch": int(self.reader.batch_key(self._batch))}
        state.update(self.reader.describe(self._position))
        if self.reader.shard_size > 1:
            state["shard"] = [int(self.reader.shard_rank), int(self.reader.shard_size)]
        return state

    def set_state(self, state):
        if self.reader is None:
            raise CaffeishError("set_state before setup", layer=self.name, layer_type=self.type)
        if state.get("type", self.type) != self.type:
            raise CaffeishError(f"the saved state is of a {state.get('type')} layer, not {self.type}",
                                layer=self.name, layer_type=self.type)
        try:
            seed, batch = int(state["seed"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise CaffeishError(f"the saved state has no valid 'seed' and 'batch': {sorted(state)}",
                                layer=self.name, layer_type=self.type) from None
        self._holder.stop_worker()
        self._release_sync()
        self.seed = self.reader.seed = seed
        try:
            position = self.reader.check_position(state)
            # A state is global (rank 0's place; see "Sharding"): this shard starts shard_rank records on.
            self._position = self._local_position(position)
        except CaffeishError as e:
            raise e.in_layer(self.name, self.type) from None
        self._batch = batch // self.reader.shard_size

    def close(self):
        """Stop the prefetch thread and release the source (a later forward reopens it).

        Waits at most ``CLOSE_TIMEOUT`` s for a thread stuck in a read (a hung network file system, a FIFO
        with no writer): then it warns and leaves that thread, and its source, open."""
        stopped = self._holder.stop_worker(CLOSE_TIMEOUT)
        self._release_sync()
        if stopped and self.reader is not None:
            self.reader.close()

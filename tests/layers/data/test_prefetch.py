"""The prefetching base: same batches with and without the thread, exact resume, errors, thread hygiene."""
import gc
import json
import time

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.layers.data import prefetch
from caffeish.layers.data.prefetch import PrefetchingDataLayer, Reader, live_prefetch_threads, stream_rng
from caffeish.prototxt import parse_text


class CountingReader(Reader):
    """Sample i of epoch e is ``i``; a shuffled order per epoch; random noise from the batch's rng."""

    def __init__(self, size, batch, shuffle=True, fail_at=None, delay=0.0):
        self.size, self.batch, self.shuffle = size, batch, shuffle
        self.fail_at, self.delay = fail_at, delay
        self.loaded = 0
        self.opened = 0

    def order(self, epoch):
        return stream_rng(self.seed, prefetch.SHUFFLE_STREAM, epoch).permutation(self.size) if self.shuffle \
            else numpy.arange(self.size)

    def open(self):
        self.opened += 1

    def release(self):  # idempotent, as the Reader contract asks
        self.opened = max(0, self.opened - 1)

    def position(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def check_position(self, state):
        return {"epoch": int(state["epoch"]), "pos": int(state["pos"])}

    def describe(self, position):
        return dict(position, order=self.order(position["epoch"]).tolist())

    def seek(self, position):
        self.epoch, self.pos = position["epoch"], position["pos"]

    def load_batch(self, rng):
        if self.fail_at is not None and self.loaded >= self.fail_at:
            raise ValueError("disk on fire")
        time.sleep(self.delay)
        self.loaded += 1
        ids = []
        for _ in range(self.batch):
            ids.append(self.order(self.epoch)[self.pos])
            self.pos += 1
            if self.pos == self.size:
                self.pos, self.epoch = 0, self.epoch + 1
        noise = rng.random(self.batch)
        return numpy.asarray(ids, numpy.float32) + noise.astype(numpy.float32), numpy.asarray(ids, numpy.float32)


class CountingLayer(PrefetchingDataLayer):
    """Unregistered test layer over a CountingReader."""
    type_name = "Counting"
    exact_num_top = 2

    def __init__(self, param, reader_args):
        self.reader_args = reader_args
        super().__init__(param)

    def make_reader(self, seed, top):
        reader = CountingReader(**self.reader_args)
        reader.seed = seed
        reader.epoch = reader.pos = 0
        return reader, [(reader.batch,), (reader.batch,)]


def make(prefetch_on=True, depth=4, name="count", **reader_args):
    reader_args.setdefault("size", 10)
    reader_args.setdefault("batch", 3)
    param = parse_text(f'name: "{name}" type: "Counting" data_param {{ prefetch: {depth} }}',
                       caffe_pb2.LayerParameter())
    layer = CountingLayer(param, reader_args)
    layer.prefetch = prefetch_on
    top = [caffeish.Blob(name="a"), caffeish.Blob(name="b")]
    layer.setup([], top)
    return layer, top


def batches(layer, top, n):
    out = []
    for _ in range(n):
        layer.Forward([], top)
        out.append((top[0].data.copy(), top[1].data.copy()))
    return out


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    gc.collect()
    deadline = time.time() + 2
    while live_prefetch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not live_prefetch_threads()


@pytest.fixture
def layers():
    made = []

    def factory(*args, **kw):
        layer, top = make(*args, **kw)
        made.append(layer)
        return layer, top
    yield factory
    for layer in made:
        layer.close()


def assert_same(a, b):
    assert len(a) == len(b)
    for (x1, y1), (x2, y2) in zip(a, b):
        numpy.testing.assert_array_equal(x1, x2)
        numpy.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("depth", [1, 4])
def test_prefetch_delivers_the_same_batches_in_the_same_order(layers, depth):
    caffeish.set_random_seed(3)
    threaded = batches(*layers(True, depth), 12)
    caffeish.set_random_seed(3)
    plain = batches(*layers(False, depth), 12)
    assert_same(threaded, plain)
    # Every id once per epoch (10 ids, 12 batches of 3 = 3.6 epochs).
    ids = numpy.concatenate([b[1] for b in plain])
    assert sorted(ids[:10].tolist()) == list(range(10))
    assert sorted(ids[10:20].tolist()) == list(range(10))
    assert not numpy.array_equal(ids[:10], ids[10:20])  # reshuffled


def test_threads_run_ahead_without_changing_state(layers):
    layer, top = layers(True, 4)
    batches(layer, top, 2)
    deadline = time.time() + 2
    while layer._holder.worker.queue.qsize() < 4 and time.time() < deadline:
        time.sleep(0.01)
    assert layer.reader.loaded >= 6  # 2 consumed + 4 waiting
    state = layer.get_state()
    assert state["batch"] == 2 and state["pos"] == 6 and state["epoch"] == 0
    assert state["type"] == "Counting" and len(state["order"]) == 10


def test_set_random_seed_fixes_the_batches(layers):
    caffeish.set_random_seed(11)
    a = batches(*layers(True), 3)
    caffeish.set_random_seed(11)
    b = batches(*layers(True), 3)
    caffeish.set_random_seed(12)
    c = batches(*layers(True), 3)
    assert_same(a, b)
    assert not numpy.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize("resume_threaded", [True, False])
def test_get_state_set_state_resumes_exactly(layers, resume_threaded):
    layer, top = layers(True)
    batches(layer, top, 5)
    state = json.loads(json.dumps(layer.get_state()))
    expected = batches(layer, top, 6)
    # A fresh layer (another seed) restored from the state.
    other, other_top = layers(resume_threaded, name="other")
    batches(other, other_top, 1)
    other.set_state(state)
    assert_same(batches(other, other_top, 6), expected)
    # The same layer rewound while its thread is running ahead.
    layer.set_state(state)
    assert_same(batches(layer, top, 6), expected)


def test_switching_prefetch_off_midway_keeps_the_sequence(layers):
    caffeish.set_random_seed(5)
    ref = batches(*layers(False), 8)
    caffeish.set_random_seed(5)
    layer, top = layers(True)
    got = batches(layer, top, 3)
    layer.prefetch = False
    got += batches(layer, top, 3)
    layer.prefetch = True
    got += batches(layer, top, 2)
    assert_same(got, ref)


@pytest.mark.parametrize("threaded", [True, False])
def test_worker_error_surfaces_as_caffeish_error(layers, threaded):
    layer, top = layers(threaded, name="flaky", fail_at=2)
    batches(layer, top, 2)
    with pytest.raises(CaffeishError) as err:
        layer.Forward([], top)
    msg = str(err.value)
    assert "layer 'flaky'" in msg and "reading batch 2 failed" in msg and "ValueError: disk on fire" in msg
    assert isinstance(err.value.__cause__, ValueError)
    assert not live_prefetch_threads()


def test_close_stops_the_thread_and_forward_restarts_it(layers):
    layer, top = layers(True, delay=0.01)
    first = batches(layer, top, 2)
    assert live_prefetch_threads()
    layer.close()
    assert not live_prefetch_threads()
    assert layer.reader.opened == 0
    state = layer.get_state()
    assert state["batch"] == 2
    more = batches(layer, top, 2)  # restarts from batch 2
    layer.set_state(state)
    assert_same(batches(layer, top, 2), more)
    assert len(first) == 2


def test_dropping_the_layer_stops_its_thread():
    layer, top = make(True)
    batches(layer, top, 1)
    assert live_prefetch_threads()
    del layer
    gc.collect()
    deadline = time.time() + 2
    while live_prefetch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not live_prefetch_threads()


def test_environment_and_depth_zero_turn_prefetch_off(monkeypatch, layers):
    monkeypatch.setenv(prefetch.ENV_VAR, "0")
    layer, top = layers(True)
    assert not CountingLayer(layer.param, {"size": 4, "batch": 2}).prefetch
    monkeypatch.delenv(prefetch.ENV_VAR)
    param = parse_text('name: "z" type: "Counting" data_param { prefetch: 0 }', caffe_pb2.LayerParameter())
    assert not CountingLayer(param, {"size": 4, "batch": 2}).prefetch
    monkeypatch.setattr(PrefetchingDataLayer, "use_threads", False)
    assert not CountingLayer(layer.param, {"size": 4, "batch": 2}).prefetch


def test_bad_state_is_refused(layers):
    layer, _ = layers(True)
    with pytest.raises(CaffeishError, match="no valid 'seed' and 'batch'"):
        layer.set_state({"epoch": 0})
    with pytest.raises(CaffeishError, match="state is of a Data layer"):
        layer.set_state({"type": "Data", "seed": 1, "batch": 0})


@pytest.mark.skipif(not caffeish.backend.gpu_available(), reason="needs a GPU")
def test_gpu_batches_are_copied_ahead(layers, restore_cpu_mode):
    import cupy
    caffeish.set_mode_gpu()
    caffeish.set_random_seed(2)
    layer, top = layers(True)
    got = batches(layer, top, 3)
    assert isinstance(layer._holder.worker.queue.get()[1][0], cupy.ndarray)
    caffeish.set_random_seed(2)
    plain = batches(*layers(False), 3)
    assert_same([(cupy.asnumpy(a), cupy.asnumpy(b)) for a, b in got],
                [(cupy.asnumpy(a), cupy.asnumpy(b)) for a, b in plain])


def test_forward_counts_the_time_it_waits_for_the_thread(layers):
    """`waited` (logged by the solver as "Data wait") adds up the time forward blocks on the prefetch thread:
    the first batch of a reader that takes 50 ms per batch is waited for in full; reading on the main thread
    is not waiting for a thread."""
    slow, top = layers(depth=1, delay=0.05)
    assert slow.waited == 0.0
    batches(slow, top, 3)
    assert slow.waited >= 0.05
    sync, top = layers(prefetch_on=False, delay=0.01)
    batches(sync, top, 3)
    assert sync.waited == 0.0

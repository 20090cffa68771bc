"""Random inputs for the fuzz tests (tests/test_fuzz.py) and bench/faults.py.

Two generators share one interface, a *drawer* with ``integer(lo, hi)``, ``choice(seq)``, ``boolean(p)``
and ``real()``: ``HypothesisDraw`` (hypothesis draws, so failures shrink) and ``RandomDraw`` (a seeded
``random.Random``, for throughput runs without hypothesis).

* ``random_net(draw, tmpdir)``: a NetParameter of random layer types from the registry, wired from the
  tops that exist so far, with random (schema-driven) parameter values and small shapes;
* ``mutate(draw, data)``: a byte-level mutation (flips, deletions, insertions, duplications, truncation);
* ``run_*`` functions: build / load / run one case; they return "ok" or "error" (a CaffeishError) and
  let anything else escape -- that is what the tests catch.

Every case runs under ``time_budget`` (SIGALRM): a hang raises ``CaseTimeout``, which is not a
CaffeishError and so fails the test.
"""
import contextlib
import os
import random
import signal

import numpy

import caffeish.layers  # noqa: F401  (registers every layer type)
from caffeish import backend
from caffeish.errors import CaffeishError
from caffeish.layer import LAYERS
from caffeish.net import Net
from caffeish.proto import caffe_pb2
from caffeish.prototxt import parse_text

#: Layer types the random nets leave out: Python imports modules by name; the rest read or write files
#: (they get file-reading cases of their own through the bad-input corpus).
EXCLUDED_TYPES = {"Python", "Data", "ImageData", "HDF5Data", "HDF5Output"}
LAYER_TYPES = [t for t in LAYERS.names() if t not in EXCLUDED_TYPES]

_FIELDS = {f.name: f for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
_EXTRA_PARAMS = {
    "Deconvolution": ["convolution_param"], "Im2col": ["convolution_param"],
    "RNN": ["recurrent_param"], "LSTM": ["recurrent_param"],
    "SoftmaxWithLoss": ["softmax_param", "loss_param"], "Accuracy": ["accuracy_param"],
    "Scale": ["scale_param", "bias_param"],
}
STRINGS = ["", "x", "data", "constant", "gaussian", "xavier", "msra", "uniform", "bilinear", "positive_unitball",
           "SUM", "bogus", "w0", "w1"]
CASE_SECONDS = 5.0


class CaseTimeout(Exception):
    """A case ran past its time budget (a hang)."""


@contextlib.contextmanager
def time_budget(seconds=CASE_SECONDS):
    """Raise CaseTimeout in the main thread when the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise CaseTimeout(f"the case ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- drawers -----------------------------------------------------------------------------------------------
class RandomDraw:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def boolean(self, p=0.5):
        return self.rng.random() < p

    def real(self):
        return self.choice(_REALS) if self.boolean(0.5) else self.rng.uniform(-3, 3)


class HypothesisDraw:
    def __init__(self, data):
        from hypothesis import strategies as st
        self.data, self.st = data, st

    def integer(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def boolean(self, p=0.5):
        # hypothesis shrinks toward False; p only matters for RandomDraw
        return self.data.draw(self.st.integers(0, 99)) < int(p * 100)

    def real(self):
        return self.data.draw(self.st.one_of(self.st.sampled_from(_REALS), self.st.floats(-3, 3)))


_REALS = [0.0, 1.0, -1.0, 0.5, 2.0, 1e-8, 1e30, float("nan"), float("inf")]


# -- random nets ---------------------------------------------------------------------------------------------
def params_of(layer_type):
    """The LayerParameter fields (``*_param``) a layer type reads."""
    key = layer_type.lower()
    names = [n for n in _FIELDS if n.endswith("_param") and n[:-len("_param")].replace("_", "") == key]
    names += _EXTRA_PARAMS.get(layer_type, [])
    if layer_type.endswith("Loss"):
        names.append("loss_param")
    return sorted(set(names))


def _small_int(draw):
    k = draw.integer(0, 19)
    if k < 14:
        return draw.integer(0, 4)
    if k < 17:
        return draw.integer(-2, 8)
    if k < 19:
        return draw.integer(5, 40)
    return draw.choice([10 ** 9, 2 ** 31 - 1, -(2 ** 31)])


def _value(draw, field, tmpdir, depth):
    fd = field
    if fd.type == fd.TYPE_BOOL:
        return draw.boolean()
    if fd.type == fd.TYPE_ENUM:
        return draw.choice([v.number for v in fd.enum_type.values])
    if fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return draw.real()
    if fd.type == fd.TYPE_STRING:
        if fd.name in ("source", "mean_file", "file_name", "root_folder"):
            return os.path.join(tmpdir, draw.choice(["missing", "junk.txt"]))
        return draw.choice(STRINGS)
    if fd.type == fd.TYPE_BYTES:
        return b"\x00junk"
    value = _small_int(draw)
    if fd.type in (fd.TYPE_UINT32, fd.TYPE_UINT64, fd.TYPE_FIXED32, fd.TYPE_FIXED64):
        value = abs(value)
    return value


def _fill(draw, msg, tmpdir, depth=0):
    """Set a random subset of ``msg``'s fields to random values (nested messages to a small depth)."""
    for fd in msg.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_MESSAGE and depth >= 2:
            continue
        if fd.name == "python_param" or not draw.boolean(0.3):
            continue
        repeated = fd.is_repeated
        for _ in range(draw.integer(1, 3) if repeated else 1):
            if fd.type == fd.TYPE_MESSAGE:
                sub = getattr(msg, fd.name).add() if repeated else getattr(msg, fd.name)
                sub.SetInParent()
                _fill(draw, sub, tmpdir, depth + 1)
                continue
            value = _value(draw, fd, tmpdir, depth)
            if repeated:
                getattr(msg, fd.name).append(value)
            else:
                setattr(msg, fd.name, value)


def _shape(draw, max_axes=4):
    return [draw.integer(1, 4) if draw.boolean(0.95) else 0 for _ in range(draw.integer(1, max_axes))]


def _blob_counts(draw, cls):
    """Bottom and top counts: mostly what the layer class declares, sometimes anything (0-3)."""
    if draw.boolean(0.15):
        return draw.integer(0, 3), draw.integer(0, 3)

    def pick(exact, low, high, default):
        if exact is not None:
            return exact
        low = default if low is None else low
        return draw.integer(low, max(low, high if high is not None else low + 1))
    n_bottom = pick(cls.exact_num_bottom, cls.min_bottom, cls.max_bottom, 1)
    n_top = n_bottom if cls.equal_num_bottom_top else pick(cls.exact_num_top, cls.min_top, cls.max_top, 1)
    return n_bottom, n_top


def random_net(draw, tmpdir, max_layers=5):
    """A random NetParameter (TRAIN phase): an Input layer, then up to ``max_layers`` random layers."""
    net = caffe_pb2.NetParameter(name="fuzz", force_backward=draw.boolean())
    inp = net.layer.add(name="input", type="Input")
    available = []
    for i in range(draw.integer(1, 2)):
        inp.top.append(f"in{i}")
        inp.input_param.shape.add().dim.extend(_shape(draw))
        available.append(f"in{i}")
    for k in range(draw.integer(1, max_layers)):
        layer_type = draw.choice(LAYER_TYPES)
        lp = net.layer.add(name=f"l{k}", type=layer_type)
        n_bottom, n_top = _blob_counts(draw, LAYERS.get(layer_type))
        for _ in range(n_bottom):
            lp.bottom.append(draw.choice(available))
        in_place = lp.bottom and draw.boolean(0.15)
        for j in range(n_top):
            lp.top.append(lp.bottom[0] if in_place and j == 0 else f"b{k}_{j}")
        for name in params_of(layer_type):
            if draw.boolean(0.7):
                _fill(draw, getattr(lp, name), tmpdir)
        if draw.boolean(0.15):
            for _ in range(draw.integer(1, 2)):
                spec = lp.param.add(lr_mult=draw.choice([0.0, 1.0, 2.0]))
                if draw.boolean(0.3):
                    spec.name = draw.choice(["w0", "w1"])
        if draw.boolean(0.1):
            lp.loss_weight.extend([draw.choice([0.0, 1.0, 0.5]) for _ in lp.top])
        if draw.boolean(0.05):
            lp.propagate_down.extend([draw.boolean() for _ in lp.bottom])
        available.extend(t for t in lp.top if t not in available)
    return net


def _fill_inputs(net, seed=0):
    rng = numpy.random.default_rng(seed)
    for name in net.inputs:
        blob = net.blobs[name]
        # small non-negative integers: valid labels and indices for many layers, fine values for the rest
        blob.data[...] = backend.to_current(rng.integers(0, 3, size=blob.shape).astype(blob.dtype))


def run_net(param, iterations=2):
    """Build ``param``, run forward and backward ``iterations`` times: "ok", or "error" for a CaffeishError."""
    net = None
    try:
        net = Net(param, phase=caffe_pb2.TRAIN)
        for i in range(iterations):
            _fill_inputs(net, i)
            net.forward_prefilled()
            net.backward_from_to()
        return "ok"
    except CaffeishError:
        return "error"
    finally:
        if net is not None:
            net.close()


# -- random solvers ------------------------------------------------------------------------------------------
SOLVER_NET = """name: "tiny"
layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")


def random_solver(draw, tmpdir):
    """A SolverParameter with random hyper-parameters (and a random type) over a tiny inline net."""
    from caffeish.solvers import SOLVERS
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=10)
    fields = [fd for fd in param.DESCRIPTOR.fields if fd.name not in _NET_FIELDS]
    for _ in range(draw.integer(0, 5)):     # a few fields off their defaults, so many solvers run
        fd = draw.choice(fields)
        if fd.type == fd.TYPE_MESSAGE:
            sub = getattr(param, fd.name).add() if fd.is_repeated else getattr(param, fd.name)
            sub.SetInParent()
            _fill(draw, sub, tmpdir, 1)
        elif fd.is_repeated:
            getattr(param, fd.name).append(_value(draw, fd, tmpdir, 0))
        else:
            setattr(param, fd.name, _value(draw, fd, tmpdir, 0))
    param.net_param.CopyFrom(parse_text(SOLVER_NET, caffe_pb2.NetParameter()))
    param.type = draw.choice(SOLVERS.names() + ["Bogus"])
    if param.type in ("AdaGrad", "RMSProp", "AdaDelta") and draw.boolean(0.8):
        param.momentum = 0.0 if param.type != "AdaDelta" else 0.9
    param.snapshot_prefix = os.path.join(tmpdir, "snap")
    param.iter_size = min(param.iter_size, 3)           # the user's own request for a long run is no hang
    param.display = min(param.display, 5)
    del param.test_iter[:]
    param.test_iter.extend([draw.integer(0, 3) for _ in range(draw.integer(0, 1))])
    if draw.boolean(0.5):
        param.lr_policy = draw.choice(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "bogus"])
    return param


def run_solver(param, steps=3):
    """Set up a solver from ``param`` and run ``steps`` iterations: "ok", or "error" for a CaffeishError."""
    from caffeish.solvers import SOLVERS
    solver = None
    try:
        cls = SOLVERS.get(param.type, context="solver")
        solver = cls(param)
        solver.iter = int(param.max_iter) // 2 if param.max_iter > 0 else 0
        solver.step(steps)
        return "ok"
    except CaffeishError:
        return "error"
    finally:
        if solver is not None:
            for net in [solver.net] + solver.test_nets:
                net.close()


def run_solverstate(state_bytes, tmpdir):
    """Restore a solver from mutated .solverstate bytes (its learned_net beside it), then step once."""
    from caffeish.solvers import SGDSolver
    path = os.path.join(tmpdir, "fuzz.solverstate")
    with open(path, "wb") as f:
        f.write(state_bytes)
    param = parse_text(solver_seed_text(tmpdir), caffe_pb2.SolverParameter())
    solver = SGDSolver(param)
    try:
        solver.restore(path)
        solver.step(1)
        return "ok"
    except CaffeishError:
        return "error"
    finally:
        solver.net.close()


def solver_seed_text(tmpdir):
    return (f'base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 10 snapshot_prefix: "{tmpdir}/seed" '
            f'random_seed: 1 net_param {{ {SOLVER_NET} }}')


def seed_solverstate(tmpdir):
    """The bytes of a real .solverstate (its .caffemodel is written beside it, in ``tmpdir``)."""
    from caffeish.solvers import SGDSolver
    solver = SGDSolver(parse_text(solver_seed_text(tmpdir), caffe_pb2.SolverParameter()))
    try:
        solver.step(2)
        _, state = solver.snapshot()
    finally:
        solver.net.close()
    with open(state, "rb") as f:
        return f.read()


# -- byte mutations ------------------------------------------------------------------------------------------
def mutate(draw, data):
    """A random byte-level mutation of ``data`` (1-4 edits)."""
    data = bytearray(data)
    for _ in range(draw.integer(1, 4)):
        op = draw.integer(0, 5)
        n = len(data)
        pos = draw.integer(0, max(n - 1, 0))
        if op == 0 and n:                      # flip one byte
            data[pos] ^= draw.integer(1, 255)
        elif op == 1 and n:                    # delete a run
            del data[pos:pos + draw.integer(1, 8)]
        elif op == 2:                          # insert interesting bytes
            data[pos:pos] = draw.choice([b"\x00", b"\xff", b"\x80\x80\x80\x80\x80", b"{", b"}", b"\"", b":",
                                         b" layer {", b"\n", b"-1", b"99999999999", b"\xe2\x82"])
        elif op == 3 and n:                    # duplicate a run
            chunk = data[pos:pos + draw.integer(1, 16)]
            data[pos:pos] = chunk
        elif op == 4 and n:                    # truncate
            del data[pos:]
        elif op == 5 and n:                    # overwrite with a varint-ish byte
            data[pos] = draw.choice([0x08, 0x0a, 0x12, 0x1a, 0x22, 0x2a, 0x7f, 0xff])
    return bytes(data)


def run_prototxt(text_bytes, tmpdir):
    """Parse mutated prototxt bytes from a file, then build and run the net."""
    path = os.path.join(tmpdir, "fuzz.prototxt")
    with open(path, "wb") as f:
        f.write(text_bytes)
    net = None
    try:
        net = Net(path, phase=caffe_pb2.TRAIN)
        _fill_inputs(net)
        net.forward_prefilled()
        net.backward_from_to()
        return "ok"
    except CaffeishError:
        return "error"
    finally:
        if net is not None:
            net.close()


def run_caffemodel(model_bytes, net_param, tmpdir):
    """Copy weights from mutated .caffemodel bytes into a net built from ``net_param``, then run it."""
    path = os.path.join(tmpdir, "fuzz.caffemodel")
    with open(path, "wb") as f:
        f.write(model_bytes)
    net = Net(net_param, phase=caffe_pb2.TRAIN)
    try:
        net.copy_from(path)
        _fill_inputs(net)
        net.forward_prefilled()
        return "ok"
    except CaffeishError:
        return "error"
    finally:
        net.close()


def run_binaryproto(blob_bytes, tmpdir):
    """Read mutated .binaryproto bytes as a mean file and use it in a transformer."""
    from caffeish import io as cio
    from caffeish.data.transform import DataTransformer
    path = os.path.join(tmpdir, "fuzz.binaryproto")
    with open(path, "wb") as f:
        f.write(blob_bytes)
    try:
        cio.read_mean_binaryproto(path)
        tp = caffe_pb2.TransformationParameter(mean_file=path)
        transformer = DataTransformer(tp, caffe_pb2.TRAIN, numpy.float32)
        image = numpy.zeros((3, 4, 4), numpy.uint8)
        transformer.transform_list([image], numpy.random.default_rng(0))
        return "ok"
    except CaffeishError:
        return "error"


def run_datum(datum_bytes):
    """Parse mutated Datum bytes and decode them as a Data layer does."""
    from caffeish import io as cio
    from caffeish.data.transform import DataTransformer
    try:
        datum = cio.parse_datum(datum_bytes, "record 'fuzz'")
        cio.datum_to_array(datum)
        transformer = DataTransformer(caffe_pb2.TransformationParameter(), caffe_pb2.TRAIN, numpy.float32)
        image = transformer.decode(datum)
        transformer.transform_list([image], numpy.random.default_rng(0))
        return "ok"
    except CaffeishError:
        return "error"


# -- seeds for the mutations ----------------------------------------------------------------------------------
SEED_NET = """name: "seed"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


# The same kind of net as Caffe wrote it before the `layer` format (upgraded on load): V1 enum types,
# blobs_lr, net-level inputs, old transform fields in a V0-style padding layer's place.
SEED_NET_V1 = """name: "seed_v1"
input: "data" input_dim: 2 input_dim: 1 input_dim: 6 input_dim: 6
input: "label" input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "relu" type: RELU bottom: "pool" top: "pool" }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
"""
SEED_NETS = [SEED_NET, SEED_NET_V1]


def seed_net_param():
    return parse_text(SEED_NET, caffe_pb2.NetParameter())


def seed_caffemodel():
    net = Net(seed_net_param(), phase=caffe_pb2.TRAIN)
    try:
        return net.to_proto().SerializeToString()
    finally:
        net.close()


def seed_binaryproto():
    from caffeish import io as cio
    blob = cio.array_to_blobproto(numpy.arange(48, dtype=numpy.float32).reshape(1, 3, 4, 4))
    blob.num, blob.channels, blob.height, blob.width = 1, 3, 4, 4
    return blob.SerializeToString()


def seed_datums():
    from caffeish import io as cio
    raw = cio.array_to_datum(numpy.arange(48, dtype=numpy.uint8).reshape(3, 4, 4), label=1)
    floats = cio.array_to_datum(numpy.ones((3, 4, 4), numpy.float32), label=2)
    encoded = caffe_pb2.Datum(data=cio.encode_image(numpy.zeros((3, 4, 4), numpy.uint8), "png"), encoded=True)
    return [d.SerializeToString() for d in (raw, floats, encoded)]

"""pycaffe's API on caffeish: the names and behaviours pycaffe scripts rely on (``import caffeish as caffe``)."""
import importlib
import multiprocessing
import os
import pathlib
import subprocess
import sys
import textwrap
import uuid

import numpy
import pytest

import caffeish as caffe
from caffeish import CaffeishError

ENV = {**os.environ, "PYTHONPATH": str(pathlib.Path(caffe.__file__).parent.parent)}

SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'Input' name: 'data' top: 'data' top: 'label'
  input_param { shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 3 kernel_size: 2 pad: 1
    weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' value: 2 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""

DEPLOY_NET = """name: 'deploy'
layer { type: 'Input' name: 'data' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'gaussian' } } }
layer { type: 'Softmax' name: 'prob' bottom: 'ip' top: 'prob' }
"""


def simple_net(tmp_path, text=SIMPLE_NET, phase=caffe.TRAIN, seed=3):
    path = tmp_path / f"net_{uuid.uuid4().hex[:6]}.prototxt"
    path.write_text(text)
    caffe.set_random_seed(seed)
    net = caffe.Net(str(path), phase)
    if "label" in net.blobs:
        net.blobs["data"].data[...] = numpy.random.default_rng(seed).normal(size=net.blobs["data"].shape)
        net.blobs["label"].data[...] = numpy.arange(5) % 4
    return net


# -- module layout ------------------------------------------------------------------------------------------
def test_pycaffe_names_and_submodules_exist():
    for name in ("Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
                 "AdamSolver", "NCCL", "Timer", "init_log", "log", "set_mode_cpu", "set_mode_gpu", "set_device",
                 "Layer", "get_solver", "layer_type_list", "set_random_seed", "solver_count", "set_solver_count",
                 "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl", "TRAIN", "TEST", "io", "layers",
                 "params", "NetSpec", "to_proto", "draw", "coord_map", "Classifier", "Detector"):
        assert hasattr(caffe, name), name
    for sub in ("io", "draw", "net_spec", "coord_map", "classifier", "detector", "proto.caffe_pb2"):
        assert importlib.import_module(f"caffeish.{sub}") is not None
    assert caffe.TRAIN == 0 and caffe.TEST == 1


def test_layer_type_list_is_the_registry_sorted():
    types = caffe.layer_type_list()
    assert types == sorted(types) and {"Convolution", "ReLU", "Python", "Data", "SoftmaxWithLoss"} <= set(types)


def test_timer_measures_elapsed_milliseconds():
    import time
    t = caffe.Timer()
    assert t.ms == 0.0
    t.start()
    time.sleep(0.02)
    t.stop()
    assert 15 <= t.ms < 2000 and t.seconds == pytest.approx(t.ms / 1e3)


def test_init_log_and_log_write_glog_lines(tmp_path):
    script = tmp_path / "log.py"
    script.write_text("import caffeish as caffe\ncaffe.init_log()\ncaffe.log('hello from pycaffe')\n"
                      "caffe.init_log(1)\ncaffe.log('not shown at WARNING')\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "hello from pycaffe" in result.stderr and result.stderr.lstrip()[0] == "I"
    assert "not shown" not in result.stderr


def test_errors_are_value_errors_as_pycaffe_raises():
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.data.extend([0.0] * 100)
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)
    assert issubclass(CaffeishError, ValueError)


# -- Net -----------------------------------------------------------------------------------------------------
def test_blob_loss_weights_cover_every_blob(tmp_path):
    net = simple_net(tmp_path)
    assert list(net.blob_loss_weights) == list(net.blobs)
    assert net.blob_loss_weights["loss"] == 1.0 and net.blob_loss_weights["conv"] == 0.0
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_backward_end_returns_the_bottoms_of_that_layer(tmp_path):
    net = simple_net(tmp_path)
    net.forward()
    diffs = net.backward(end="ip")
    assert set(diffs) == {"conv"}
    # ip's bottom diff is W^T times the top diff, read back from the blobs.
    w = net.params["ip"][0].data
    top = net.blobs["ip"].diff
    numpy.testing.assert_allclose(diffs["conv"].reshape(5, -1), top @ w, rtol=1e-5, atol=1e-7)
    assert set(net.backward()) == {"data", "label"}       # the inputs, without end
    assert set(net.backward(diffs=["conv"])) == {"data", "label", "conv"}


def test_a_diff_set_on_a_loss_top_scales_the_gradients(tmp_path):
    net = simple_net(tmp_path)
    net.forward()
    once = net.backward()["data"].copy()
    twice = net.backward(loss=numpy.array(2.0))["data"].copy()
    numpy.testing.assert_allclose(twice, 2 * once, rtol=1e-6)
    net.blobs["loss"].diff[...] = 0.5     # as the C++ API: whatever the diff holds is where backward starts
    net.backward()
    numpy.testing.assert_allclose(net.blobs["data"].diff, 0.5 * once, rtol=1e-6)


def test_forward_all_batches_pads_and_trims(tmp_path):
    net = simple_net(tmp_path, DEPLOY_NET, caffe.TEST)
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(10, 3, 2, 2)).astype(numpy.float32)           # 2 full batches of 4 and 2 more
    out = net.forward_all(data=x, blobs=["ip"])
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    ip = x.reshape(10, -1) @ w.T + b
    e = numpy.exp(ip - ip.max(1, keepdims=True))
    assert set(out) == {"prob", "ip"} and out["prob"].shape == (10, 5)
    numpy.testing.assert_allclose(out["ip"], ip, rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(out["prob"], e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeishError, match="'images' is not an input of net 'deploy' .*its inputs: data"):
        net.forward_all(images=x)


def test_forward_backward_all_returns_outputs_and_input_diffs(tmp_path):
    net = simple_net(tmp_path, DEPLOY_NET.replace("name: 'deploy'", "name: 'deploy' force_backward: true"),
                     caffe.TEST)
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(6, 3, 2, 2)).astype(numpy.float32)
    g = rng.normal(size=(6, 5)).astype(numpy.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=g)
    assert outs["prob"].shape == (6, 5) and diffs["data"].shape == (6, 3, 2, 2)
    p = outs["prob"]
    dip = p * (g - (g * p).sum(1, keepdims=True))                     # softmax backward
    numpy.testing.assert_allclose(diffs["data"].reshape(6, -1), dip @ net.params["ip"][0].data, rtol=1e-4,
                                  atol=1e-6)


def test_share_with_and_hdf5_round_trip(tmp_path):
    train = simple_net(tmp_path, seed=1)
    test = simple_net(tmp_path, seed=2)
    assert not numpy.array_equal(train.params["ip"][0].data, test.params["ip"][0].data)
    test.share_with(train)
    train.params["ip"][0].data[...] = 7.0
    assert (test.params["ip"][0].data == 7.0).all()                  # shared, not copied
    path = tmp_path / "w.h5"
    train.save_hdf5(str(path))
    other = simple_net(tmp_path, seed=5)
    other.load_hdf5(str(path))
    for name in train.params:
        for a, b in zip(train.params[name], other.params[name]):
            numpy.testing.assert_array_equal(a.data, b.data)
    wrong = simple_net(tmp_path, SIMPLE_NET.replace("num_output: 4", "num_output: 6"))
    with pytest.raises(CaffeishError, match="share_with: param 0 of layer 'ip' has shape"):
        wrong.share_with(train)


def test_net_callbacks_see_every_layer_in_order(tmp_path):
    net = simple_net(tmp_path)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward()
    net.backward()
    n = len(net.layers)
    assert seen[:2 * n] == [(k, i) for i in range(n) for k in ("bf", "af")]
    assert [i for k, i in seen if k == "ab"] == [i for i in range(n - 1, -1, -1) if net.layer_need_backward[i]]


# -- Python layers ---------------------------------------------------------------------------------------
PY_LAYERS = '''
import caffeish as caffe


class TimesTen(caffe.Layer):
    """Only what a forward-only use needs: no setup, no backward."""
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data


class MyError(RuntimeError):
    pass


class Raises(caffe.Layer):
    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise MyError("raised in setup")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise KeyError("raised in forward")
'''


@pytest.fixture
def py_module(tmp_path, monkeypatch):
    name = f"pyl_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PY_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def python_net(tmp_path, module, cls, param_str="", force_backward=False):
    path = tmp_path / "py.prototxt"
    path.write_text(f"""force_backward: {str(force_backward).lower()}
layer {{ type: 'Input' name: 'data' top: 'data' input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ type: 'Python' name: 'py' bottom: 'data' top: 'out'
  python_param {{ module: '{module}' layer: '{cls}' param_str: '{param_str}' }} }}""")
    return caffe.Net(str(path), caffe.TEST)


def test_a_python_layer_needs_only_the_methods_used(tmp_path, py_module):
    net = python_net(tmp_path, py_module, "TimesTen")
    out = net.forward(data=numpy.full((2, 3), 1.5))
    numpy.testing.assert_array_equal(out["out"], numpy.full((2, 3), 15.0))
    net = python_net(tmp_path, py_module, "TimesTen", force_backward=True)
    net.forward()
    with pytest.raises(CaffeishError, match=r"'TimesTen' in module .* does not define backward\(\), and the net "
                                            "runs backward through it"):
        net.backward()


def test_exceptions_in_python_layers_keep_their_type(tmp_path, py_module):
    module = sys.modules.get(py_module) or importlib.import_module(py_module)
    with pytest.raises(module.MyError, match="raised in setup"):
        python_net(tmp_path, py_module, "Raises", "setup")
    net = python_net(tmp_path, py_module, "Raises")
    with pytest.raises(KeyError, match="raised in forward"):
        net.forward()


# -- solver callbacks and NCCL ----------------------------------------------------------------------------
SOLVER = """net: "{net}" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 4 display: 0
snapshot_after_train: false random_seed: 1 type: "SGD" """

TRAIN_NET = """name: 'tiny'
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 }
    data_filler { type: 'gaussian' } data_filler { type: 'constant' value: 1 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


def _solver_file(tmp_path):
    net = tmp_path / "tiny.prototxt"
    net.write_text(TRAIN_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net))
    return str(solver)


def test_solver_add_callback_runs_at_start_and_when_gradients_are_ready(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path))
    events = []

    def on_start():
        events.append(("start", solver.iter))

    def on_gradients_ready():
        events.append(("grads", solver.iter, float(abs(solver.net.params["ip"][0].diff).sum()) > 0))
    solver.add_callback(on_start, on_gradients_ready)
    solver.step(2)
    assert events == [("start", 0), ("grads", 0, True), ("start", 1), ("grads", 1, True)]


def test_callback_objects_see_the_loss_and_the_snapshots(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path))
    solver.param.snapshot_prefix = str(tmp_path / "snap")

    class Halve:
        """Replaces the reported loss (as data-parallel training reports the replicas' mean) and vetoes the
        first snapshot (as ranks other than 0 do)."""
        def __init__(self):
            self.seen, self.snapshots, self.allow = [], [], False

        def on_gradients_ready(self):
            self.seen.append(solver.iteration_loss)
            solver.iteration_loss /= 2

        def before_snapshot(self):
            return self.allow

        def after_snapshot(self, paths):
            self.snapshots.append(paths)
    cb = Halve()
    solver.add_callback(cb)
    solver.param.average_loss = 1
    solver.step(1)
    assert solver.smoothed_loss == pytest.approx(cb.seen[0] / 2)
    assert solver.snapshot() is None and cb.snapshots == [] and not list(tmp_path.glob("snap*"))
    cb.allow = True
    paths = solver.snapshot()
    assert cb.snapshots == [paths] and all(pathlib.Path(p).exists() for p in paths)
    with pytest.raises(CaffeishError, match="add_callback needs"):
        solver.add_callback(object())


def _nccl_rank(solver_path, uid, rank, size, queue):
    try:
        caffe.set_solver_count(size)
        caffe.set_solver_rank(rank)
        caffe.set_multiprocess(True)
        solver = caffe.SGDSolver(solver_path)
        caffe.set_random_seed(100 + rank)                  # each rank draws its own DummyData batch
        if rank == 1:
            solver.net.params["ip"][0].data[...] = 5.0    # bcast must replace this with rank 0's weights
        nccl = caffe.NCCL(solver, uid)
        nccl.bcast()
        start = solver.net.params["ip"][0].data.copy()
        grads = []
        record = lambda: grads.append(solver.net.params["ip"][0].diff.copy())  # noqa: E731
        solver.add_callback(lambda: None, record)
        solver.add_callback(nccl)
        solver.add_callback(lambda: None, record)       # after the reduction
        solver.net.after_backward(nccl)
        solver.step(1)
        queue.put((rank, start, grads[0], grads[1], solver.net.params["ip"][0].data.copy()))
        nccl.close()
    except BaseException as e:  # the parent reports it
        queue.put((rank, repr(e)))


def test_nccl_averages_gradients_across_processes(tmp_path):
    assert caffe.has_nccl() and isinstance(caffe.NCCL.new_uid(), bytes)
    path = _solver_file(tmp_path)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    uid, queue = caffe.NCCL.new_uid(), ctx.Queue()
    procs = [ctx.Process(target=_nccl_rank, args=(path, uid, r, 2, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((item[0], item[1:]) for item in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(30)
    assert all(len(v) == 4 for v in results.values()), results
    (s0, g0, d0, w0), (s1, g1, d1, w1) = results[0], results[1]
    numpy.testing.assert_array_equal(s0, s1)                  # bcast: rank 1 starts from rank 0's weights
    assert not numpy.allclose(g0, g1)                          # each rank its own batch (DummyData's own draws)
    numpy.testing.assert_allclose(d0, (g0 + g1) / 2, rtol=1e-6)  # averaged
    numpy.testing.assert_array_equal(d0, d1)
    numpy.testing.assert_array_equal(w0, w1)                  # so both take the same step


def test_nccl_refuses_a_bad_uid_or_rank(tmp_path):
    solver = caffe.SGDSolver(_solver_file(tmp_path))
    with pytest.raises(CaffeishError, match="uid from caffe.NCCL.new_uid"):
        caffe.NCCL(solver, b"nonsense")
    caffe.set_solver_rank(3)
    try:
        with pytest.raises(CaffeishError, match="solver rank 3 is outside 0..0"):
            caffe.NCCL(solver, caffe.NCCL.new_uid())
    finally:
        caffe.set_solver_rank(0)


# -- draw and coord_map ------------------------------------------------------------------------------------
def test_draw_with_pycaffes_signature(tmp_path):
    from caffeish.prototxt import parse_text
    param = parse_text(SIMPLE_NET.replace("convolution_param", "param { lr_mult: 0.5 } param { lr_mult: 2 } "
                                          "convolution_param"), caffe.caffe_pb2.NetParameter())
    dot = caffe.draw.draw_net(param, "LR", ext="dot", display_lrm=True).decode()
    assert "lr mult: 0.5, 2" in dot and "lr mult: 1, 1" in dot          # conv's, and ip's defaults
    assert "lr mult" not in caffe.draw.draw_net(param, "TB", ext="dot").decode()
    caffe.draw.draw_net_to_file(param, str(tmp_path / "net.dot"), "LR", phase=caffe.TRAIN, display_lrm=True)
    assert (tmp_path / "net.dot").read_text().startswith("digraph")
    assert caffe.draw.get_pydot_graph(param, "LR").to_string().startswith("digraph")


def _coord_net(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    L, P = caffe.layers, caffe.params
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    dks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=4, kernel_size=dks, stride=dstride, pad=dpad)
    return n


def test_coord_map_follows_the_geometry():
    from caffeish.coord_map import coord_map_from_to, crop
    # x_data = s*x + (k-1)/2 - p through each layer: conv 3/1/0 (+1), pool 2/2 (2x + 0.5), deconv 4/2 (x/2 - 0.75)
    n = _coord_net()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, list(a), list(b)) == (1, [1.0], [0.0])
    n = _coord_net(pool=4, dstride=4)
    assert [list(v) for v in coord_map_from_to(n.deconv, n.data)[1:]] == [[1.0], [-1.0]]
    n = _coord_net(pad=3, dpad=2)
    assert list(coord_map_from_to(n.deconv, n.data)[2]) == [-3 + 2]
    n = _coord_net(ks=[3, 5], stride=[1, 2], pad=[0, 10])  # each axis as its own isotropic net
    _, a, b = coord_map_from_to(n.deconv, n.data)
    n5 = _coord_net(ks=5, stride=2, pad=10)
    _, a5, b5 = coord_map_from_to(n5.deconv, n5.data)
    assert list(a) == [1.0, float(a5[0])] and list(b) == [0.0, float(b5[0])] and float(b5[0]) != 0
    # crop: the net spec gets a Crop layer with the offsets that align deconv with data
    n = _coord_net(pad=2)
    n.crop = crop(n.deconv, n.data)
    layer = [lp for lp in n.to_proto().layer if lp.type == "Crop"][0]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [2]
    n.ip = caffe.layers.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(RuntimeError, match="not connected"):
        coord_map_from_to(n.ip, n.data)
    n = _coord_net(pool=3, dstride=2)                    # 3x down, 2x up
    with pytest.raises(AssertionError, match="different scales"):
        crop(n.deconv, n.data)
    n = _coord_net(dpad=10)                              # the deconv output is smaller than the input
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.deconv, n.data)


def test_coord_map_crop_cuts_the_real_net_to_the_input_size(tmp_path):
    from caffeish.coord_map import crop
    n = _coord_net(pad=5)
    n.crop = crop(n.deconv, n.data)
    path = tmp_path / "fcn.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["crop"].shape == (2, 4, 100, 100) and net.blobs["deconv"].shape[2] > 100


def test_a_pycaffe_inference_script_runs_unchanged(tmp_path):
    """Net surgery as pycaffe's notebooks do it: a net that shares another's weights, saved to HDF5, reloaded."""
    script = textwrap.dedent(f"""
        import numpy as np
        import caffeish as caffe
        caffe.set_mode_cpu()
        net = caffe.Net({str(tmp_path / 'deploy.prototxt')!r}, caffe.TEST)
        twin = caffe.Net({str(tmp_path / 'deploy.prototxt')!r}, caffe.TEST)
        twin.share_with(net)
        net.params['ip'][0].data[...] *= 2
        x = np.random.RandomState(0).rand(7, 3, 2, 2).astype(np.float32)
        out = twin.forward_all(data=x)['prob']
        top5 = out.argsort(axis=1)[:, ::-1][:, :5]
        net.save_hdf5({str(tmp_path / 'w.h5')!r})
        print(out.shape, top5.shape, sorted(net.blob_loss_weights.items())[0][0], caffe.layer_type_list()[0])
    """)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY_NET)
    (tmp_path / "script.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(7,", "5)", "(7,", "5)", "data", "AbsVal"]
    assert (tmp_path / "w.h5").exists()

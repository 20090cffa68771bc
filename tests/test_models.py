"""The reference networks under models/ and their solvers under solvers/.

Three kinds of check:
- every prototxt parses into caffe_pb2.NetParameter / SolverParameter, with the settings the
  published Caffe models use;
- the blob shapes each net should produce are worked out here by hand (Caffe's size formulas
  applied step by step) and compared with a shape walk over the parsed file, which needs no
  layer code;
- each deploy net is built with caffeish.Net and run forward on random input (small batch), and
  its blob shapes and softmax output are checked.
"""
import math
import os
import subprocess
import sys

import numpy
import pytest
from google.protobuf import text_format

import caffeish
from caffeish import backend, caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
SOLVERS = os.path.join(ROOT, "solvers")

DEPLOY = {
    "lenet": "lenet/lenet_deploy.prototxt",
    "cifar10_quick": "cifar10_quick/cifar10_quick_deploy.prototxt",
    "caffenet": "caffenet/deploy.prototxt",
    "alexnet": "alexnet/deploy.prototxt",
    "googlenet": "googlenet/deploy.prototxt",
}
TRAIN_NETS = {
    "lenet": "lenet/lenet_train_test.prototxt",
    "cifar10_quick": "cifar10_quick/cifar10_quick_train_test.prototxt",
    "caffenet": "caffenet/train_val.prototxt",
}
SOLVER_FILES = {
    "lenet": "lenet_solver.prototxt",
    "cifar10_quick": "cifar10_quick_solver.prototxt",
    "caffenet": "caffenet_solver.prototxt",
}


def parse_net(relpath):
    with open(os.path.join(MODELS, relpath), encoding="utf-8") as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def parse_solver(name):
    with open(os.path.join(SOLVERS, name), encoding="utf-8") as f:
        return text_format.Parse(f.read(), caffe_pb2.SolverParameter())


def layer_by_name(net, name):
    matches = [lp for lp in net.layer if lp.name == name]
    assert len(matches) == 1, f"expected one layer named {name}, found {len(matches)}"
    return matches[0]


# -- Caffe's size formulas -------------------------------------------------------------

def conv_out(size, kernel, stride=1, pad=0):
    """Convolution rounds down: floor((size + 2*pad - kernel) / stride) + 1."""
    return (size + 2 * pad - kernel) // stride + 1


def pool_out(size, kernel, stride=1, pad=0):
    """Pooling rounds up, and drops a last window that would start inside the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


# -- expected shapes, worked out by hand for a batch of n --------------------------------

def lenet_shapes(n):
    s1 = conv_out(28, 5)        # 24
    p1 = pool_out(s1, 2, 2)     # 12
    s2 = conv_out(p1, 5)        # 8
    p2 = pool_out(s2, 2, 2)     # 4
    return {"data": (n, 1, 28, 28), "conv1": (n, 20, s1, s1), "pool1": (n, 20, p1, p1),
            "conv2": (n, 50, s2, s2), "pool2": (n, 50, p2, p2), "ip1": (n, 500), "ip2": (n, 10),
            "prob": (n, 10)}


def cifar10_quick_shapes(n):
    c1 = conv_out(32, 5, 1, 2)  # 32: "same" padding
    p1 = pool_out(c1, 3, 2)     # 16
    c2 = conv_out(p1, 5, 1, 2)  # 16
    p2 = pool_out(c2, 3, 2)     # 8
    c3 = conv_out(p2, 5, 1, 2)  # 8
    p3 = pool_out(c3, 3, 2)     # 4
    return {"data": (n, 3, 32, 32), "conv1": (n, 32, c1, c1), "pool1": (n, 32, p1, p1),
            "conv2": (n, 32, c2, c2), "pool2": (n, 32, p2, p2), "conv3": (n, 64, c3, c3),
            "pool3": (n, 64, p3, p3), "ip1": (n, 64), "ip2": (n, 10), "prob": (n, 10)}


def imagenet_shapes(n, lrn_before_pool):
    c1 = conv_out(227, 11, 4)   # 55
    p1 = pool_out(c1, 3, 2)     # 27
    c2 = conv_out(p1, 5, 1, 2)  # 27
    p2 = pool_out(c2, 3, 2)     # 13
    c3 = conv_out(p2, 3, 1, 1)  # 13 (conv4, conv5 the same)
    p5 = pool_out(c3, 3, 2)     # 6
    shapes = {"data": (n, 3, 227, 227), "conv1": (n, 96, c1, c1), "pool1": (n, 96, p1, p1),
              "conv2": (n, 256, c2, c2), "pool2": (n, 256, p2, p2), "conv3": (n, 384, c3, c3),
              "conv4": (n, 384, c3, c3), "conv5": (n, 256, c3, c3), "pool5": (n, 256, p5, p5),
              "fc6": (n, 4096), "fc7": (n, 4096), "fc8": (n, 1000), "prob": (n, 1000)}
    if lrn_before_pool:  # AlexNet: norm keeps the conv size, pool follows
        shapes.update(norm1=(n, 96, c1, c1), norm2=(n, 256, c2, c2))
    else:                # CaffeNet: norm follows the pool
        shapes.update(norm1=(n, 96, p1, p1), norm2=(n, 256, p2, p2))
    return shapes


# 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection: the GoogLeNet paper's table 1.
GOOGLENET_INCEPTION = [
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
]


def googlenet_shapes(n):
    c1 = conv_out(224, 7, 2, 3)   # 112
    p1 = pool_out(c1, 3, 2)       # 56
    p2 = pool_out(p1, 3, 2)       # 28 (conv2 keeps 56)
    shapes = {"data": (n, 3, 224, 224), "conv1/7x7_s2": (n, 64, c1, c1), "pool1/3x3_s2": (n, 64, p1, p1),
              "pool1/norm1": (n, 64, p1, p1), "conv2/3x3_reduce": (n, 64, p1, p1),
              "conv2/3x3": (n, 192, p1, p1), "conv2/norm2": (n, 192, p1, p1),
              "pool2/3x3_s2": (n, 192, p2, p2)}
    size = p2
    for module, (n1, n3r, n3, n5r, n5, npp) in GOOGLENET_INCEPTION:
        if module == "4a":
            size = pool_out(size, 3, 2)                     # pool3: 28 -> 14
            shapes["pool3/3x3_s2"] = (n, shapes["inception_3b/output"][1], size, size)
        elif module == "5a":
            size = pool_out(size, 3, 2)                     # pool4: 14 -> 7
            shapes["pool4/3x3_s2"] = (n, shapes["inception_4e/output"][1], size, size)
        p = f"inception_{module}/"
        assert pool_out(size, 3, 1, 1) == size              # the branch pool keeps the size
        shapes.update({p + "1x1": (n, n1, size, size), p + "3x3_reduce": (n, n3r, size, size),
                       p + "3x3": (n, n3, size, size), p + "5x5_reduce": (n, n5r, size, size),
                       p + "5x5": (n, n5, size, size), p + "pool_proj": (n, npp, size, size),
                       p + "output": (n, n1 + n3 + n5 + npp, size, size)})
    p5 = pool_out(size, 7, 1)                               # 1
    shapes["pool5/7x7_s1"] = (n, shapes["inception_5b/output"][1], p5, p5)
    shapes["loss3/classifier"] = (n, 1000)
    shapes["prob"] = (n, 1000)
    return shapes


EXPECTED = {
    "lenet": lenet_shapes,
    "cifar10_quick": cifar10_quick_shapes,
    "caffenet": lambda n: imagenet_shapes(n, lrn_before_pool=False),
    "alexnet": lambda n: imagenet_shapes(n, lrn_before_pool=True),
    "googlenet": googlenet_shapes,
}


def test_hand_arithmetic_matches_the_published_sizes():
    assert lenet_shapes(1)["pool2"] == (1, 50, 4, 4)              # ip1 sees 800 inputs
    assert cifar10_quick_shapes(1)["pool3"] == (1, 64, 4, 4)      # ip1 sees 1024 inputs
    caffenet = imagenet_shapes(1, lrn_before_pool=False)
    assert caffenet["conv1"] == (1, 96, 55, 55) and caffenet["pool1"] == (1, 96, 27, 27)
    assert caffenet["pool2"] == (1, 256, 13, 13) and caffenet["pool5"] == (1, 256, 6, 6)
    g = googlenet_shapes(1)
    assert g["conv1/7x7_s2"] == (1, 64, 112, 112) and g["pool1/3x3_s2"] == (1, 64, 56, 56)
    assert g["inception_3a/output"] == (1, 256, 28, 28)
    assert g["inception_3b/output"] == (1, 480, 28, 28)
    assert g["inception_4a/output"] == (1, 512, 14, 14)
    assert g["inception_4d/output"] == (1, 528, 14, 14)
    assert g["inception_4e/output"] == (1, 832, 14, 14)
    assert g["inception_5b/output"] == (1, 1024, 7, 7)
    assert g["pool5/7x7_s1"] == (1, 1024, 1, 1)


# -- a shape walk over a parsed NetParameter (no layer code involved) ----------------------

def _in_phase(lp, phase):
    if lp.include:
        return any(not r.HasField("phase") or r.phase == phase for r in lp.include)
    return not any(r.HasField("phase") and r.phase == phase for r in lp.exclude)


def walk_shapes(net, phase=caffe_pb2.TEST, data_shape=None):
    """Blob name -> shape, following Caffe's shape rules for the layer types these nets use.

    ``data_shape`` gives the (N, C, H, W) of a Data layer's first top; its label is (N,).
    """
    shapes = {}
    for lp in net.layer:
        if not _in_phase(lp, phase):
            continue
        bottoms = [shapes[b] for b in lp.bottom]
        t = lp.type
        if t == "Input":
            out = [tuple(s.dim) for s in lp.input_param.shape]
        elif t == "Data":
            assert data_shape[0] == lp.data_param.batch_size
            out = [tuple(data_shape), (data_shape[0],)]
        elif t == "Convolution":
            cp = lp.convolution_param
            k, s, p = cp.kernel_size[0], (cp.stride or [1])[0], (cp.pad or [0])[0]
            n, c, h, w = bottoms[0]
            assert c % cp.group == 0 and cp.num_output % cp.group == 0, lp.name
            out = [(n, cp.num_output, conv_out(h, k, s, p), conv_out(w, k, s, p))]
        elif t == "Pooling":
            pp = lp.pooling_param
            n, c, h, w = bottoms[0]
            if pp.global_pooling:  # one window over the whole map
                out = [(n, c, 1, 1)]
            else:
                out = [(n, c, pool_out(h, pp.kernel_size, pp.stride, pp.pad),
                        pool_out(w, pp.kernel_size, pp.stride, pp.pad))]
        elif t == "InnerProduct":
            out = [(bottoms[0][0], lp.inner_product_param.num_output)]
        elif t == "Concat":
            assert len({(b[0],) + b[2:] for b in bottoms}) == 1, f"{lp.name}: branches disagree: {bottoms}"
            first = bottoms[0]
            out = [(first[0], sum(b[1] for b in bottoms)) + first[2:]]
        elif t == "Eltwise":
            assert len(set(bottoms)) == 1, f"{lp.name}: Eltwise bottoms disagree: {bottoms}"
            out = [bottoms[0]]
        elif t in ("ReLU", "Dropout", "LRN", "Softmax", "BatchNorm", "Scale"):
            out = [bottoms[0]]
        elif t in ("SoftmaxWithLoss", "Accuracy"):
            assert bottoms[1] == (bottoms[0][0],)
            out = [()]
        else:
            raise AssertionError(f"the shape walk does not know layer type {t}")
        shapes.update(zip(lp.top, out))
    return shapes


# -- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("relpath", sorted(DEPLOY.values()) + sorted(TRAIN_NETS.values()))
def test_net_files_parse(relpath):
    net = parse_net(relpath)
    assert net.name and len(net.layer) > 0
    assert not net.layers and not net.input, "reference nets use the current (layer / Input) format"
    names = [lp.name for lp in net.layer if not lp.include]
    assert len(names) == len(set(names)), "layer names must be unique"


@pytest.mark.parametrize("key", sorted(DEPLOY))
def test_deploy_nets_start_with_input_and_end_in_softmax(key):
    net = parse_net(DEPLOY[key])
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["data"]
    assert net.layer[-1].type == "Softmax" and list(net.layer[-1].top) == ["prob"]
    types = {lp.type for lp in net.layer}
    assert not types & {"Data", "SoftmaxWithLoss", "Accuracy"}


@pytest.mark.parametrize("key", sorted(DEPLOY))
def test_deploy_shapes_match_hand_arithmetic(key):
    net = parse_net(DEPLOY[key])
    walked = walk_shapes(net)
    n = walked["data"][0]
    for blob, shape in EXPECTED[key](n).items():
        assert walked[blob] == shape, f"{key}: {blob}"


@pytest.mark.parametrize("key,data_shape,test_shape,classes", [
    ("lenet", (64, 1, 28, 28), (100, 1, 28, 28), 10),
    ("cifar10_quick", (100, 3, 32, 32), (100, 3, 32, 32), 10),
    ("caffenet", (256, 3, 227, 227), (50, 3, 227, 227), 1000),
])
def test_train_nets_phases_and_shapes(key, data_shape, test_shape, classes):
    net = parse_net(TRAIN_NETS[key])
    logits = {"lenet": "ip2", "cifar10_quick": "ip2", "caffenet": "fc8"}[key]
    for phase, shape in ((caffe_pb2.TRAIN, data_shape), (caffe_pb2.TEST, test_shape)):
        walked = walk_shapes(net, phase, shape)
        assert walked[logits] == (shape[0], classes)
        assert walked["loss"] == ()
        assert ("accuracy" in walked) == (phase == caffe_pb2.TEST)
        # Below the data layer, the hand-worked deploy shapes hold at this batch size.
        for blob, expect in EXPECTED[key](shape[0]).items():
            if blob in walked:
                assert walked[blob] == expect, f"{key} {blob}"
    data = [lp for lp in net.layer if lp.type == "Data"]
    assert [lp.include[0].phase for lp in data] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    assert all(lp.data_param.backend == caffe_pb2.DataParameter.LMDB for lp in data)


def test_lenet_train_test_settings():
    net = parse_net(TRAIN_NETS["lenet"])
    train, test = [lp for lp in net.layer if lp.type == "Data"]
    assert train.data_param.source == "data/mnist/mnist_train_lmdb" and train.data_param.batch_size == 64
    assert test.data_param.source == "data/mnist/mnist_test_lmdb" and test.data_param.batch_size == 100
    assert train.transform_param.scale == pytest.approx(1 / 256) == test.transform_param.scale
    for name in ("conv1", "conv2", "ip1", "ip2"):
        lp = layer_by_name(net, name)
        assert [p.lr_mult for p in lp.param] == [1, 2]
        filler_owner = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
        assert filler_owner.weight_filler.type == "xavier" and filler_owner.bias_filler.type == "constant"
    for name in ("pool1", "pool2"):
        pp = layer_by_name(net, name).pooling_param
        assert (pp.pool, pp.kernel_size, pp.stride) == (caffe_pb2.PoolingParameter.MAX, 2, 2)


def test_cifar10_quick_settings():
    net = parse_net(TRAIN_NETS["cifar10_quick"])
    for lp in (lp for lp in net.layer if lp.type == "Data"):
        assert lp.transform_param.mean_file == "examples/cifar10/mean.binaryproto"
        assert lp.data_param.batch_size == 100
    assert [lp.data_param.source for lp in net.layer if lp.type == "Data"] == [
        "examples/cifar10/cifar10_train_lmdb", "examples/cifar10/cifar10_test_lmdb"]
    stds = {lp.name: lp.convolution_param.weight_filler.std for lp in net.layer if lp.type == "Convolution"}
    assert stds == pytest.approx({"conv1": 0.0001, "conv2": 0.01, "conv3": 0.01})
    pools = [layer_by_name(net, f"pool{i}").pooling_param.pool for i in (1, 2, 3)]
    P = caffe_pb2.PoolingParameter
    assert pools == [P.MAX, P.AVE, P.AVE]


def test_caffenet_train_val_settings():
    net = parse_net(TRAIN_NETS["caffenet"])
    train, test = [lp for lp in net.layer if lp.type == "Data"]
    assert (train.transform_param.mirror, test.transform_param.mirror) == (True, False)
    assert train.transform_param.crop_size == test.transform_param.crop_size == 227
    assert train.transform_param.mean_file and train.transform_param.mean_file == test.transform_param.mean_file
    assert (train.data_param.batch_size, test.data_param.batch_size) == (256, 50)


@pytest.mark.parametrize("key", sorted(TRAIN_NETS))
def test_deploy_and_train_nets_have_the_same_learnable_layers(key):
    """Weights trained with the train net must load into the deploy net by layer name."""
    def learnable(net):
        return {lp.name: (lp.type, lp.convolution_param.SerializeToString(deterministic=True),
                          lp.inner_product_param.SerializeToString(deterministic=True),
                          tuple(p.SerializeToString(deterministic=True) for p in lp.param))
                for lp in net.layer if lp.type in ("Convolution", "InnerProduct")}
    assert learnable(parse_net(DEPLOY[key])) == learnable(parse_net(TRAIN_NETS[key]))


def test_caffenet_and_alexnet_differ_in_lrn_placement():
    def sequence(key):
        return [lp.name for lp in parse_net(DEPLOY[key]).layer]
    caffenet, alexnet = sequence("caffenet"), sequence("alexnet")
    assert caffenet[:6] == ["data", "conv1", "relu1", "pool1", "norm1", "conv2"]
    assert alexnet[:6] == ["data", "conv1", "relu1", "norm1", "pool1", "conv2"]
    assert sorted(caffenet) == sorted(alexnet)
    for key in ("caffenet", "alexnet"):
        net = parse_net(DEPLOY[key])
        lrn = layer_by_name(net, "norm1").lrn_param
        assert (lrn.local_size, lrn.alpha, lrn.beta) == (5, pytest.approx(0.0001), pytest.approx(0.75))
        assert [layer_by_name(net, f"conv{i}").convolution_param.group for i in range(1, 6)] == [1, 2, 1, 2, 2]
        assert layer_by_name(net, "drop6").dropout_param.dropout_ratio == pytest.approx(0.5)
        assert tuple(net.layer[0].input_param.shape[0].dim) == (10, 3, 227, 227)


def test_googlenet_structure():
    net = parse_net(DEPLOY["googlenet"])
    assert tuple(net.layer[0].input_param.shape[0].dim) == (10, 3, 224, 224)
    concats = [lp for lp in net.layer if lp.type == "Concat"]
    assert [lp.name for lp in concats] == [f"inception_{m}/output" for m, _ in GOOGLENET_INCEPTION]
    for lp in concats:
        p = lp.name[:-len("output")]
        assert list(lp.bottom) == [p + "1x1", p + "3x3", p + "5x5", p + "pool_proj"]
    assert not [lp.name for lp in net.layer if lp.name.startswith(("loss1", "loss2"))], "no auxiliary classifiers"
    pool5 = layer_by_name(net, "pool5/7x7_s1").pooling_param
    assert (pool5.pool, pool5.kernel_size, pool5.stride) == (caffe_pb2.PoolingParameter.AVE, 7, 1)
    assert layer_by_name(net, "pool5/drop_7x7_s1").dropout_param.dropout_ratio == pytest.approx(0.4)
    assert layer_by_name(net, "loss3/classifier").inner_product_param.num_output == 1000
    convs = [lp for lp in net.layer if lp.type == "Convolution"]
    assert len(convs) == 3 + 9 * 6
    # every convolution is followed at once by its in-place ReLU
    for i, lp in enumerate(net.layer):
        if lp.type == "Convolution":
            relu = net.layer[i + 1]
            assert relu.type == "ReLU" and list(relu.bottom) == list(relu.top) == [lp.name]


def test_make_googlenet_regenerates_the_committed_file(tmp_path):
    out = tmp_path / "deploy.prototxt"
    subprocess.run([sys.executable, os.path.join(MODELS, "googlenet", "make_googlenet.py"), "--out", str(out)],
                   check=True, cwd=str(tmp_path), timeout=120)
    generated = out.read_text(encoding="utf-8")
    with open(os.path.join(MODELS, "googlenet", "deploy.prototxt"), encoding="utf-8") as f:
        committed = f.read()
    assert text_format.Parse(generated, caffe_pb2.NetParameter()) == parse_net(DEPLOY["googlenet"]), \
        "make_googlenet.py builds a different net from the committed deploy.prototxt; rerun it"
    assert generated == committed, "same net, different text: rerun models/googlenet/make_googlenet.py"


# -- solvers ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(SOLVER_FILES))
def test_solver_files_parse_and_point_at_their_net(key):
    solver = parse_solver(SOLVER_FILES[key])
    assert solver.net == f"models/{TRAIN_NETS[key]}"
    assert os.path.isfile(os.path.join(ROOT, solver.net))
    assert solver.test_iter and solver.test_interval > 0 and solver.max_iter > 0
    assert solver.snapshot_prefix


def test_solver_settings():
    lenet = parse_solver(SOLVER_FILES["lenet"])
    assert (lenet.base_lr, lenet.momentum, lenet.weight_decay) == pytest.approx((0.01, 0.9, 0.0005))
    assert (lenet.lr_policy, lenet.gamma, lenet.power) == ("inv", pytest.approx(0.0001), pytest.approx(0.75))
    assert (lenet.display, lenet.max_iter, lenet.snapshot) == (100, 10000, 5000)
    assert (list(lenet.test_iter), lenet.test_interval) == ([100], 500)
    assert lenet.snapshot_prefix == "data/mnist/lenet" and lenet.solver_mode == caffe_pb2.SolverParameter.CPU
    # 100 test batches x 100 images = the 10,000 MNIST test digits
    test_batch = [lp for lp in parse_net(TRAIN_NETS["lenet"]).layer if lp.type == "Data"][1].data_param.batch_size
    assert lenet.test_iter[0] * test_batch == 10000

    cifar = parse_solver(SOLVER_FILES["cifar10_quick"])
    assert (cifar.base_lr, cifar.momentum, cifar.weight_decay) == pytest.approx((0.001, 0.9, 0.004))
    assert cifar.lr_policy == "fixed"
    assert (list(cifar.test_iter), cifar.test_interval, cifar.max_iter) == ([100], 500, 4000)

    caffenet = parse_solver(SOLVER_FILES["caffenet"])
    assert caffenet.base_lr == pytest.approx(0.01)
    assert (caffenet.lr_policy, caffenet.stepsize) == ("step", 100000) and caffenet.gamma == pytest.approx(0.1)
    assert (caffenet.momentum, caffenet.weight_decay) == pytest.approx((0.9, 0.0005))


# -- building and running the deploy nets ------------------------------------------------

# batch None: build from the file as it is (its Input is already small);
# otherwise the Input's batch is cut to keep the forward pass quick.
FORWARD_CASES = [
    ("lenet", None),
    ("cifar10_quick", None),
    ("caffenet", 2),
    ("alexnet", 2),
    ("googlenet", 1),
]


# Intermediate shapes from the model descriptions, written out literally (per image).
SPOT_SHAPES = {
    "caffenet": {"conv1": (96, 55, 55), "pool5": (256, 6, 6)},
    "alexnet": {"conv1": (96, 55, 55), "pool5": (256, 6, 6)},
    "googlenet": {"inception_3a/output": (256, 28, 28), "inception_5b/output": (1024, 7, 7)},
}


def build_net(key, batch):
    path = os.path.join(MODELS, DEPLOY[key])
    if batch is None:
        return caffeish.Net(path, caffeish.TEST)
    param = parse_net(DEPLOY[key])
    inputs = [lp for lp in param.layer if lp.type == "Input"]
    assert len(inputs) == 1
    inputs[0].input_param.shape[0].dim[0] = batch
    return caffeish.Net(param, caffeish.TEST)


@pytest.mark.parametrize("key,batch", FORWARD_CASES)
def test_deploy_net_forward(key, batch):
    net = build_net(key, batch)
    n = net.blobs["data"].shape[0]
    assert batch is None or n == batch
    assert net.outputs == ["prob"]

    rng = numpy.random.default_rng(0)
    image = rng.uniform(-1.0, 1.0, size=net.blobs["data"].shape).astype(numpy.float32)
    out = net.forward(data=image)

    prob = backend.to_cpu(out["prob"])
    classes = 10 if key in ("lenet", "cifar10_quick") else 1000
    assert prob.shape == (n, classes)
    assert numpy.all(numpy.isfinite(prob)) and numpy.all(prob >= 0)
    numpy.testing.assert_allclose(prob.sum(axis=1), numpy.ones(n), rtol=0, atol=1e-5)

    # Every blob the hand arithmetic names, and every blob the file's shape walk names
    # (Split copies excepted), has the shape Caffe would give it.
    expected = EXPECTED[key](n)
    for name, shape in expected.items():
        assert net.blobs[name].shape == shape, f"{key}: blob {name}"
    for name, shape in SPOT_SHAPES.get(key, {}).items():
        assert net.blobs[name].shape == (n,) + shape, f"{key}: blob {name}"
    param = parse_net(DEPLOY[key])
    param.layer[0].input_param.shape[0].dim[0] = n
    for name, shape in walk_shapes(param).items():
        assert net.blobs[name].shape == shape, f"{key}: blob {name}"

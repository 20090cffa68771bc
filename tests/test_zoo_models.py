"""The larger ImageNet nets under models/: VGG-16, ResNet-50 and SqueezeNet v1.1 (deploy, train_val and
solver each, written by make_*.py scripts), and the train_val forms of AlexNet and GoogLeNet.

Checks, cheapest first:
- each generator script rewrites exactly the committed files;
- structure and settings, parsed from the files (names the released .caffemodel files need, solvers);
- shapes from a shape walk over each file (no layer code) against shapes worked out by hand;
- each deploy net built with caffeish.Net at its real input size, batch 1, and run forward for its blob
  shapes. Inner products are filled with a constant there (random fills of VGG-16's fc6 and fc7, 120M
  weights, take seconds), and ResNet's BatchNorm statistics are set to mean 0, variance 1;
- each deploy net run forward and backward (force_backward) at batch 2 on a small input with its real
  fillers: finite probabilities summing to one and finite, non-zero gradients. A forward+backward at
  224x224 takes ~13 s for VGG-16 on two cores, so this uses 64x64 images. In the test's copy,
  ResNet-50's 7x7 pool5 becomes a global pool and its BatchNorm layers use batch statistics (freshly
  made nets have no stored ones worth using; see settle_batch_norm); SqueezeNet's pool10 is global
  already, and VGG's fc6 simply takes a smaller input;
- each train_val built in the TEST phase, its Data layers replaced by Input layers of the same shapes;
- ``caffeish time`` on each new deploy net at batch 1.

ResNet-50 needs the BatchNorm and Scale layers: its build/forward/time tests fail until they exist.
"""
import importlib.util
import os
import subprocess
import sys

import numpy
import pytest
from google.protobuf import text_format

import caffeish
from caffeish import backend, caffe_pb2
from test_models import (MODELS, ROOT, _in_phase, conv_out, googlenet_shapes, layer_by_name, parse_net,
                         parse_solver, pool_out, walk_shapes)

NETS = ("vgg16", "resnet50", "squeezenet")
SCRIPTS = {"vgg16": "vgg16/make_vgg16.py", "resnet50": "resnet50/make_resnet50.py",
           "squeezenet": "squeezenet/make_squeezenet.py", "googlenet": "googlenet/make_googlenet.py"}
TRAIN_VAL = {key: f"{key}/train_val.prototxt" for key in NETS + ("alexnet", "googlenet")}
SOLVERS = {key: f"{key}_solver.prototxt" for key in TRAIN_VAL}
PERMANENT_INPUT = {"vgg16": (10, 3, 224, 224), "resnet50": (1, 3, 224, 224), "squeezenet": (10, 3, 227, 227)}
IMAGENET_VAL = 50000


def deploy(key):
    return parse_net(f"{key}/deploy.prototxt")


# -- shapes by hand ------------------------------------------------------------------------------------

def vgg16_shapes(n, size=224):
    shapes = {"data": (n, 3, size, size)}
    for block, convs, channels in [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]:
        for i in range(1, convs + 1):
            assert conv_out(size, 3, 1, 1) == size                # 3x3, pad 1: the size is kept
            shapes[f"conv{block}_{i}"] = (n, channels, size, size)
        size = pool_out(size, 2, 2)                               # 2x2/2 max pool: halved
        shapes[f"pool{block}"] = (n, channels, size, size)
    shapes.update(fc6=(n, 4096), fc7=(n, 4096), fc8=(n, 1000), prob=(n, 1000))
    return shapes


RESNET50_STAGES = [(2, "abc", 64, 256, 1), (3, "abcd", 128, 512, 2), (4, "abcdef", 256, 1024, 2),
                   (5, "abc", 512, 2048, 2)]


def resnet50_shapes(n, size=224):
    c1 = conv_out(size, 7, 2, 3)                                 # 112
    p1 = pool_out(c1, 3, 2)                                      # 56
    shapes = {"data": (n, 3, size, size), "conv1": (n, 64, c1, c1), "pool1": (n, 64, p1, p1)}
    size = p1
    for stage, blocks, width, out, stride in RESNET50_STAGES:
        for i, letter in enumerate(blocks):
            b = f"res{stage}{letter}"
            s = stride if i == 0 else 1
            inner = conv_out(size, 1, s)                         # the stride sits on the 1x1 convolutions
            if i == 0:
                shapes[b + "_branch1"] = (n, out, inner, inner)
            shapes[b + "_branch2a"] = (n, width, inner, inner)
            shapes[b + "_branch2b"] = (n, width, conv_out(inner, 3, 1, 1), conv_out(inner, 3, 1, 1))
            shapes[b + "_branch2c"] = (n, out, inner, inner)
            shapes[b] = (n, out, inner, inner)
            size = inner
    shapes["pool5"] = (n, 2048, pool_out(size, 7, 1), pool_out(size, 7, 1))
    shapes.update(fc1000=(n, 1000), prob=(n, 1000))
    return shapes


SQUEEZENET_FIRE = {2: (16, 64, 64), 3: (16, 64, 64), 4: (32, 128, 128), 5: (32, 128, 128),
                   6: (48, 192, 192), 7: (48, 192, 192), 8: (64, 256, 256), 9: (64, 256, 256)}


def squeezenet_shapes(n, size=227):
    c1 = conv_out(size, 3, 2)
    s = pool_out(c1, 3, 2)
    shapes = {"data": (n, 3, size, size), "conv1": (n, 64, c1, c1), "pool1": (n, 64, s, s)}
    for module, (sq, e1, e3) in SQUEEZENET_FIRE.items():
        p = f"fire{module}/"
        shapes.update({p + "squeeze1x1": (n, sq, s, s), p + "expand1x1": (n, e1, s, s),
                       p + "expand3x3": (n, e3, s, s), p + "concat": (n, e1 + e3, s, s)})
        if module in (3, 5):
            s = pool_out(s, 3, 2)
            shapes[f"pool{module}"] = (n, e1 + e3, s, s)
    # No inner product: the class scores stay 4-D (N, 1000, 1, 1) through pool10 and prob, as in Caffe.
    shapes.update(conv10=(n, 1000, s, s), pool10=(n, 1000, 1, 1), prob=(n, 1000, 1, 1))
    return shapes


EXPECTED = {"vgg16": vgg16_shapes, "resnet50": resnet50_shapes, "squeezenet": squeezenet_shapes}
# Published sizes, written out literally (per image, at the deploy net's own input size).
SPOT_SHAPES = {
    "vgg16": {"conv1_2": (64, 224, 224), "pool5": (512, 7, 7), "fc6": (4096,)},
    "resnet50": {"pool1": (64, 56, 56), "res2c": (256, 56, 56), "res3d": (512, 28, 28),
                 "res4f": (1024, 14, 14), "res5c": (2048, 7, 7), "pool5": (2048, 1, 1)},
    "squeezenet": {"conv1": (64, 113, 113), "fire2/concat": (128, 56, 56), "fire9/concat": (512, 14, 14),
                   "pool10": (1000, 1, 1)},
}


def test_hand_arithmetic_matches_the_published_sizes():
    v = vgg16_shapes(1)
    assert v["pool1"] == (1, 64, 112, 112) and v["pool4"] == (1, 512, 14, 14) and v["pool5"] == (1, 512, 7, 7)
    r = resnet50_shapes(1)
    assert r["conv1"] == (1, 64, 112, 112) and r["pool1"] == (1, 64, 56, 56)
    assert r["res3a_branch2a"] == (1, 128, 28, 28) and r["res5c"] == (1, 2048, 7, 7) and r["pool5"] == (1, 2048, 1, 1)
    s = squeezenet_shapes(1)
    assert s["pool1"] == (1, 64, 56, 56) and s["pool3"] == (1, 128, 28, 28) and s["pool5"] == (1, 256, 14, 14)
    # The release feeds 227x227 crops (fire9: 14x14); from a 224x224 input, fire9 is 13x13.
    assert squeezenet_shapes(1, 224)["fire9/concat"] == (1, 512, 13, 13)
    # GoogLeNet's auxiliary heads: 5x5/3 average pooling of the 14x14 maps.
    assert pool_out(14, 5, 3) == 4


# -- the generators -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(SCRIPTS))
def test_generator_rewrites_the_committed_files(key, tmp_path):
    subprocess.run([sys.executable, os.path.join(MODELS, SCRIPTS[key]), "--out-dir", str(tmp_path)],
                   check=True, cwd=str(tmp_path), timeout=120, capture_output=True)
    for name in ("deploy.prototxt", "train_val.prototxt"):
        generated = (tmp_path / name).read_text(encoding="utf-8")
        with open(os.path.join(MODELS, key, name), encoding="utf-8") as f:
            committed = f.read()
        assert text_format.Parse(generated, caffe_pb2.NetParameter()) == parse_net(f"{key}/{name}"), \
            f"{SCRIPTS[key]} builds a different net from the committed {key}/{name}; rerun it"
        assert generated == committed, f"same net, different text: rerun models/{SCRIPTS[key]} ({name})"


def test_googlenet_script_still_writes_the_deploy_net_alone(tmp_path):
    spec = importlib.util.spec_from_file_location("make_googlenet", os.path.join(MODELS, SCRIPTS["googlenet"]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path / "net.prototxt")])
    assert [p.name for p in tmp_path.iterdir()] == ["net.prototxt"]
    with open(os.path.join(MODELS, "googlenet", "deploy.prototxt"), encoding="utf-8") as f:
        assert (tmp_path / "net.prototxt").read_text(encoding="utf-8") == f.read()


# -- structure ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", NETS)
def test_deploy_nets_start_with_input_and_end_in_softmax(key):
    net = deploy(key)
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["data"]
    assert tuple(net.layer[0].input_param.shape[0].dim) == PERMANENT_INPUT[key]
    assert net.layer[-1].type == "Softmax" and list(net.layer[-1].top) == ["prob"]
    assert not {lp.type for lp in net.layer} & {"Data", "SoftmaxWithLoss", "Accuracy"}
    names = [lp.name for lp in net.layer]
    assert len(names) == len(set(names))


def test_vgg16_structure():
    net = deploy("vgg16")
    convs = [lp for lp in net.layer if lp.type == "Convolution"]
    assert [lp.name for lp in convs] == [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                                         for i in range(1, n + 1)]
    for lp in convs:
        cp = lp.convolution_param
        assert (list(cp.kernel_size), list(cp.pad), list(cp.stride)) == ([3], [1], []), lp.name
        relu = net.layer[list(net.layer).index(lp) + 1]
        assert relu.type == "ReLU" and relu.name == "relu" + lp.name[4:] and list(relu.top) == [lp.name]
    pools = [lp for lp in net.layer if lp.type == "Pooling"]
    assert [lp.name for lp in pools] == [f"pool{i}" for i in range(1, 6)]
    assert all((lp.pooling_param.pool, lp.pooling_param.kernel_size, lp.pooling_param.stride)
               == (caffe_pb2.PoolingParameter.MAX, 2, 2) for lp in pools)
    fcs = [(lp.name, lp.inner_product_param.num_output) for lp in net.layer if lp.type == "InnerProduct"]
    assert fcs == [("fc6", 4096), ("fc7", 4096), ("fc8", 1000)]
    assert [layer_by_name(net, f"drop{i}").dropout_param.dropout_ratio for i in (6, 7)] == pytest.approx([0.5] * 2)
    assert net.name == "VGG_ILSVRC_16_layers"


def test_resnet50_structure():
    net = deploy("resnet50")
    convs = [lp for lp in net.layer if lp.type == "Convolution"]
    assert len(convs) == 1 + 16 * 3 + 4                          # stem, 16 bottlenecks, 4 projections
    assert layer_by_name(net, "conv1").convolution_param.bias_term  # the release's conv1 has a bias
    assert all(not lp.convolution_param.bias_term for lp in convs[1:])
    # each convolution is followed by its BatchNorm (global statistics) and Scale (with bias), in place
    for i, lp in enumerate(net.layer):
        if lp.type != "Convolution":
            continue
        bn, scale = net.layer[i + 1], net.layer[i + 2]
        suffix = "_conv1" if lp.name == "conv1" else lp.name[len("res"):]
        assert (bn.type, bn.name, scale.type, scale.name) == ("BatchNorm", "bn" + suffix, "Scale", "scale" + suffix)
        assert list(bn.bottom) == list(bn.top) == list(scale.bottom) == list(scale.top) == [lp.name]
        assert bn.batch_norm_param.HasField("use_global_stats") and bn.batch_norm_param.use_global_stats
        assert scale.scale_param.bias_term
    sums = [lp for lp in net.layer if lp.type == "Eltwise"]
    blocks = [f"res{stage}{letter}" for stage, letters, *_ in RESNET50_STAGES for letter in letters]
    assert [lp.name for lp in sums] == blocks
    previous = "pool1"
    for lp in sums:
        assert lp.eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
        shortcut = lp.name + "_branch1" if lp.name[-1] == "a" else previous
        assert list(lp.bottom) == [shortcut, lp.name + "_branch2c"]
        relu = net.layer[list(net.layer).index(lp) + 1]
        assert (relu.type, relu.name, list(relu.top)) == ("ReLU", lp.name + "_relu", [lp.name])
        previous = lp.name
    for stage, _, width, out, stride in RESNET50_STAGES:
        b = f"res{stage}a"
        cps = {x: layer_by_name(net, f"{b}_{x}").convolution_param for x in ("branch1", "branch2a", "branch2b")}
        assert cps["branch1"].num_output == out and cps["branch2a"].num_output == width
        # the stride-2 of a stage sits on its 1x1 convolutions, not the 3x3 (Caffe release, "v1")
        assert list(cps["branch1"].stride) == list(cps["branch2a"].stride) == [stride]
        assert list(cps["branch2b"].stride) == [1] and list(cps["branch2b"].pad) == [1]
    assert [lp.name for lp in convs if lp.name.endswith("_branch1")] == [f"res{s}a_branch1" for s in range(2, 6)]
    pool5 = layer_by_name(net, "pool5").pooling_param
    assert (pool5.pool, pool5.kernel_size, pool5.stride) == (caffe_pb2.PoolingParameter.AVE, 7, 1)
    assert layer_by_name(net, "fc1000").inner_product_param.num_output == 1000
    relus = {lp.name for lp in net.layer if lp.type == "ReLU"}
    assert {"conv1_relu", "res2a_branch2a_relu", "res2a_branch2b_relu", "res2a_relu", "res5c_relu"} <= relus
    assert "res2a_branch2c_relu" not in relus                    # the ReLU comes after the sum


def test_squeezenet_structure():
    net = deploy("squeezenet")
    conv1 = layer_by_name(net, "conv1").convolution_param
    assert (conv1.num_output, list(conv1.kernel_size), list(conv1.stride)) == (64, [3], [2])
    for module, (sq, e1, e3) in SQUEEZENET_FIRE.items():
        p = f"fire{module}/"
        outs = [layer_by_name(net, p + x).convolution_param for x in ("squeeze1x1", "expand1x1", "expand3x3")]
        assert [c.num_output for c in outs] == [sq, e1, e3]
        assert [list(c.kernel_size) for c in outs] == [[1], [1], [3]] and list(outs[2].pad) == [1]
        concat = layer_by_name(net, p + "concat")
        assert concat.type == "Concat" and list(concat.bottom) == [p + "expand1x1", p + "expand3x3"]
        for x in ("squeeze1x1", "expand1x1", "expand3x3"):
            assert list(layer_by_name(net, p + "relu_" + x).top) == [p + x]
    pools = [lp.name for lp in net.layer if lp.type == "Pooling"]
    assert pools == ["pool1", "pool3", "pool5", "pool10"]
    order = [lp.name for lp in net.layer]
    assert order.index("pool3") == order.index("fire3/concat") + 1
    assert order.index("pool5") == order.index("fire5/concat") + 1
    drop9 = layer_by_name(net, "drop9")
    assert list(drop9.top) == ["fire9/concat"] and drop9.dropout_param.dropout_ratio == pytest.approx(0.5)
    conv10 = layer_by_name(net, "conv10").convolution_param
    assert (conv10.num_output, list(conv10.kernel_size)) == (1000, [1])
    assert list(layer_by_name(net, "relu_conv10").top) == ["conv10"]
    pool10 = layer_by_name(net, "pool10").pooling_param
    assert pool10.pool == caffe_pb2.PoolingParameter.AVE and pool10.global_pooling


@pytest.mark.parametrize("key", NETS)
def test_deploy_shapes_match_hand_arithmetic(key):
    walked = walk_shapes(deploy(key))
    n = walked["data"][0]
    size = walked["data"][2]
    for blob, shape in EXPECTED[key](n, size).items():
        assert walked[blob] == shape, f"{key}: {blob}"
    for blob, shape in SPOT_SHAPES[key].items():
        assert walked[blob] == (n,) + shape, f"{key}: {blob}"


# -- train_val nets -------------------------------------------------------------------------------------

# key: (TRAIN data shape, TEST data shape, the blob holding the class scores)
TRAIN_SHAPES = {
    "vgg16": ((64, 3, 224, 224), (50, 3, 224, 224), "fc8"),
    "resnet50": ((32, 3, 224, 224), (50, 3, 224, 224), "fc1000"),
    "squeezenet": ((32, 3, 227, 227), (25, 3, 227, 227), "pool10"),
    "alexnet": ((256, 3, 227, 227), (50, 3, 227, 227), "fc8"),
}


@pytest.mark.parametrize("key", sorted(TRAIN_VAL))
def test_train_val_data_layers(key):
    net = parse_net(TRAIN_VAL[key])
    assert not net.input and not net.layers
    train, test = [lp for lp in net.layer if lp.type == "Data"]
    assert [train.include[0].phase, test.include[0].phase] == [caffe_pb2.TRAIN, caffe_pb2.TEST]
    assert list(train.top) == list(test.top) == ["data", "label"] and train.name == test.name == "data"
    assert (train.data_param.source, test.data_param.source) == (
        "data/ilsvrc12/ilsvrc12_train_lmdb", "data/ilsvrc12/ilsvrc12_val_lmdb")
    assert train.data_param.backend == test.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert (train.transform_param.mirror, test.transform_param.mirror) == (True, False)
    crop = {"alexnet": 227, "squeezenet": 227}.get(key, 224)
    assert train.transform_param.crop_size == test.transform_param.crop_size == crop
    for lp in (train, test):
        if key == "alexnet":  # BVLC's AlexNet subtracts the mean image, like CaffeNet
            assert lp.transform_param.mean_file == "data/ilsvrc12/imagenet_mean.binaryproto"
        else:
            assert list(lp.transform_param.mean_value) == [104, 117, 123] and not lp.transform_param.mean_file
    names = [lp.name for lp in net.layer if not lp.include]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("key", sorted(TRAIN_SHAPES))
def test_train_val_phases_and_shapes(key):
    net = parse_net(TRAIN_VAL[key])
    train_shape, test_shape, logits = TRAIN_SHAPES[key]
    for phase, shape in ((caffe_pb2.TRAIN, train_shape), (caffe_pb2.TEST, test_shape)):
        walked = walk_shapes(net, phase, shape)
        assert walked[logits][:2] == (shape[0], 1000)
        assert walked["loss"] == ()
        assert ("accuracy" in walked) == ("accuracy_top5" in walked) == (phase == caffe_pb2.TEST)
        if key in EXPECTED:
            for blob, expect in EXPECTED[key](shape[0], shape[2]).items():
                if blob in walked:
                    assert walked[blob] == expect, f"{key} {blob}"
    top5 = layer_by_name(net, "accuracy_top5")
    assert top5.accuracy_param.top_k == 5 and not layer_by_name(net, "accuracy").accuracy_param.HasField("top_k")


def test_googlenet_train_val_has_the_auxiliary_classifiers():
    net = parse_net(TRAIN_VAL["googlenet"])
    for phase, n in ((caffe_pb2.TRAIN, 32), (caffe_pb2.TEST, 50)):
        walked = walk_shapes(net, phase, (n, 3, 224, 224))
        for blob, shape in googlenet_shapes(n).items():
            if blob in walked:
                assert walked[blob] == shape, blob
        for head, module, channels in (("loss1", "4a", 512), ("loss2", "4d", 528)):
            assert walked[f"inception_{module}/output"] == (n, channels, 14, 14)
            assert walked[f"{head}/ave_pool"] == (n, channels, 4, 4)
            assert walked[f"{head}/conv"] == (n, 128, 4, 4)
            assert walked[f"{head}/fc"] == (n, 1024) and walked[f"{head}/classifier"] == (n, 1000)
        assert all(walked[f"loss{i}/loss{i}"] == () for i in (1, 2, 3))
        assert ("loss3/top-5" in walked) == (phase == caffe_pb2.TEST)
    losses = {lp.name: (list(lp.bottom), list(lp.top), list(lp.loss_weight))
              for lp in net.layer if lp.type == "SoftmaxWithLoss"}
    assert losses == {"loss1/loss": (["loss1/classifier", "label"], ["loss1/loss1"], [pytest.approx(0.3)]),
                      "loss2/loss": (["loss2/classifier", "label"], ["loss2/loss2"], [pytest.approx(0.3)]),
                      "loss3/loss3": (["loss3/classifier", "label"], ["loss3/loss3"], [1])}
    accuracies = {lp.name: lp.accuracy_param.top_k for lp in net.layer if lp.type == "Accuracy"}
    assert accuracies == {f"loss{i}/top-{k}": k for i in (1, 2, 3) for k in (1, 5)}
    assert all(lp.include[0].phase == caffe_pb2.TEST for lp in net.layer if lp.type == "Accuracy")
    for head in ("loss1", "loss2"):
        pool = layer_by_name(net, f"{head}/ave_pool").pooling_param
        assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 5, 3)
        assert layer_by_name(net, f"{head}/drop_fc").dropout_param.dropout_ratio == pytest.approx(0.7)
    order = [lp.name for lp in net.layer]
    assert order.index("loss1/ave_pool") == order.index("inception_4a/output") + 1
    assert order.index("loss2/ave_pool") == order.index("inception_4d/output") + 1


def _learnable(net):
    """Layer name -> its learnable definition (the parts that decide which weights it holds and how they train)."""
    out = {}
    for lp in net.layer:
        if lp.type in ("Convolution", "InnerProduct", "Scale"):
            out[lp.name] = (lp.type, list(lp.bottom), lp.convolution_param.SerializeToString(deterministic=True),
                            lp.inner_product_param.SerializeToString(deterministic=True),
                            lp.scale_param.SerializeToString(deterministic=True),
                            tuple(p.SerializeToString(deterministic=True) for p in lp.param))
        elif lp.type == "BatchNorm":
            out[lp.name] = (lp.type, list(lp.bottom))
    return out


@pytest.mark.parametrize("key", sorted(TRAIN_VAL))
def test_train_val_and_deploy_hold_the_same_weights(key):
    """Weights trained with train_val must load into deploy by layer name."""
    deployed, trained = _learnable(deploy(key)), _learnable(parse_net(TRAIN_VAL[key]))
    assert {name: trained.get(name) for name in deployed} == deployed
    # Only GoogLeNet's auxiliary heads are extra in training.
    assert all(name.startswith(("loss1/", "loss2/")) for name in set(trained) - set(deployed))
    assert (set(trained) != set(deployed)) == (key == "googlenet")


def test_resnet50_batch_norm_follows_the_phase_in_training():
    net = parse_net(TRAIN_VAL["resnet50"])
    bns = [lp for lp in net.layer if lp.type == "BatchNorm"]
    assert len(bns) == 53
    for lp in bns:
        # unset: Caffe uses batch statistics in TRAIN and the running averages in TEST
        assert not lp.batch_norm_param.HasField("use_global_stats"), lp.name
        assert [(p.lr_mult, p.decay_mult) for p in lp.param] == [(0, 0)] * 3, lp.name


# -- solvers --------------------------------------------------------------------------------------------

SOLVER_SETTINGS = {
    # key: (base_lr, lr_policy, momentum, weight_decay, max_iter, images per update)
    "vgg16": (0.01, "step", 0.9, 0.0005, 370000, 256),
    "resnet50": (0.1, "multistep", 0.9, 0.0001, 600000, 256),
    "squeezenet": (0.04, "poly", 0.9, 0.0002, 170000, 512),
    "alexnet": (0.01, "step", 0.9, 0.0005, 450000, 256),
    "googlenet": (0.01, "poly", 0.9, 0.0002, 2400000, 32),
}


@pytest.mark.parametrize("key", sorted(SOLVERS))
def test_solver_settings(key):
    solver = parse_solver(SOLVERS[key])
    assert solver.net == f"models/{TRAIN_VAL[key]}" and os.path.isfile(os.path.join(ROOT, solver.net))
    base_lr, policy, momentum, decay, max_iter, per_update = SOLVER_SETTINGS[key]
    assert (solver.base_lr, solver.momentum, solver.weight_decay) == pytest.approx((base_lr, momentum, decay))
    assert (solver.lr_policy, solver.max_iter) == (policy, max_iter)
    assert solver.snapshot > 0 and solver.snapshot_prefix.startswith(f"models/{key}/")
    train, test = [lp for lp in parse_net(TRAIN_VAL[key]).layer if lp.type == "Data"]
    assert solver.iter_size * train.data_param.batch_size == per_update
    assert solver.test_iter[0] * test.data_param.batch_size == IMAGENET_VAL and solver.test_interval > 0
    if policy == "step":
        assert solver.gamma == pytest.approx(0.1) and solver.stepsize == 100000
    if key == "vgg16":  # the paper's three tenfold decreases
        assert solver.max_iter // solver.stepsize == 3
    if key == "resnet50":
        assert list(solver.stepvalue) == [150000, 300000, 450000] and solver.gamma == pytest.approx(0.1)
    if policy == "poly":
        assert solver.power == pytest.approx({"squeezenet": 1.0, "googlenet": 0.5}[key])
        assert not solver.test_initialization and solver.average_loss == 40


# -- building and running -------------------------------------------------------------------------------

def constant_fillers(param):
    """Fill the inner products' weights with a constant: cheaper than random numbers, for shape checks."""
    for lp in param.layer:
        if lp.type == "InnerProduct":
            lp.inner_product_param.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="constant", value=0.001))


def settle_batch_norm(net):
    """Fresh BatchNorm blobs hold mean 0, variance 0 and scale factor 0, so with use_global_stats each
    multiplies by 1/sqrt(eps) ~ 316 and 53 of them overflow float32: give them mean 0, variance 1."""
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, variance, factor = layer.blobs
            mean.data[...] = 0
            variance.data[...] = 1
            factor.data[...] = 1


def with_input(param, n, size):
    """The deploy net fed (n, 3, size, size); a fixed-window pool5 over a map it no longer fits goes global."""
    param.layer[0].input_param.shape[0].dim[:] = [n, 3, size, size]
    for lp in param.layer:
        pp = lp.pooling_param
        if lp.type == "Pooling" and lp.name == "pool5" and pp.pool == caffe_pb2.PoolingParameter.AVE and size < 224:
            pp.ClearField("kernel_size")
            pp.ClearField("stride")
            pp.global_pooling = True
    return param


@pytest.mark.parametrize("key", NETS)
def test_deploy_net_at_full_size(key):
    param = with_input(deploy(key), 1, PERMANENT_INPUT[key][2])
    constant_fillers(param)
    net = caffeish.Net(param, caffeish.TEST)
    settle_batch_norm(net)
    assert net.outputs == ["prob"]
    image = numpy.random.default_rng(0).uniform(-1, 1, size=net.blobs["data"].shape).astype(numpy.float32)
    prob = backend.to_cpu(net.forward(data=image)["prob"])
    assert numpy.all(numpy.isfinite(prob))
    for name, shape in EXPECTED[key](1, PERMANENT_INPUT[key][2]).items():
        assert net.blobs[name].shape == shape, f"{key}: blob {name}"
    for name, shape in SPOT_SHAPES[key].items():
        assert net.blobs[name].shape == (1,) + shape, f"{key}: blob {name}"
    for name, shape in walk_shapes(param).items():
        assert net.blobs[name].shape == shape, f"{key}: blob {name}"


REDUCED = 64


@pytest.mark.parametrize("key", NETS)
def test_deploy_net_forward_backward_on_small_images(key):
    param = with_input(deploy(key), 2, REDUCED)
    param.force_backward = True
    for lp in param.layer:
        if lp.type == "BatchNorm":  # identity BatchNorms let 16 residual sums saturate the softmax
            lp.batch_norm_param.use_global_stats = False
    net = caffeish.Net(param, caffeish.TEST)
    rng = numpy.random.default_rng(0)
    image = rng.uniform(-1, 1, size=(2, 3, REDUCED, REDUCED)).astype(numpy.float32)
    prob = backend.to_cpu(net.forward(data=image)["prob"]).reshape(2, -1)
    assert prob.shape == (2, 1000)
    assert numpy.all(numpy.isfinite(prob)) and numpy.all(prob >= 0)
    numpy.testing.assert_allclose(prob.sum(axis=1), numpy.ones(2), rtol=0, atol=1e-5)
    for name, shape in EXPECTED[key](2, REDUCED).items():
        if name in ("pool5", "fc6") and key == "resnet50":  # pool5 is global in this copy
            continue
        assert net.blobs[name].shape == shape, f"{key}: blob {name}"

    # Push a gradient in at prob that favours class 0 and pull it back to the image.
    top = numpy.zeros(net.blobs["prob"].shape, numpy.float32)
    top[:, 0] = 1
    grad = backend.to_cpu(net.backward(prob=top)["data"])
    assert grad.shape == image.shape and numpy.all(numpy.isfinite(grad)) and numpy.any(grad != 0)
    first = next(iter(net.params))
    weights = backend.to_cpu(net.params[first][0].diff)
    assert numpy.all(numpy.isfinite(weights)) and numpy.any(weights != 0), f"{key}: {first} got no gradient"


def train_val_with_inputs(key, phase):
    """The train_val net for ``phase`` with its Data layer replaced by an Input of the same shapes."""
    param = parse_net(TRAIN_VAL[key])
    layers = list(param.layer)
    del param.layer[:]
    for lp in layers:
        if lp.type != "Data":
            param.layer.add().CopyFrom(lp)
        elif _in_phase(lp, phase):
            n, crop = lp.data_param.batch_size, lp.transform_param.crop_size
            inp = param.layer.add(name=lp.name, type="Input")
            inp.top.extend(lp.top)
            inp.input_param.shape.add(dim=[n, 3, crop, crop])
            inp.input_param.shape.add(dim=[n])
    return param


@pytest.mark.parametrize("key", sorted(TRAIN_VAL))
def test_train_val_builds_in_test_phase(key):
    param = train_val_with_inputs(key, caffe_pb2.TEST)
    constant_fillers(param)  # building only: the weights' values do not matter
    net = caffeish.Net(param, caffeish.TEST)
    n = parse_net(TRAIN_VAL[key]).layer[1].data_param.batch_size
    if key == "googlenet":
        expected = {f"loss{i}/{x}" for i in (1, 2, 3) for x in (f"loss{i}", "top-1", "top-5")}
        logits = "loss3/classifier"
    else:
        expected = {"loss", "accuracy", "accuracy_top5"}
        logits = TRAIN_SHAPES[key][2]
    assert set(net.outputs) == expected
    assert net.blobs[logits].shape[:2] == (n, 1000) and net.blobs["label"].shape == (n,)
    walked = walk_shapes(param)
    for name, blob in net.blobs.items():
        if name in walked:
            assert blob.shape == walked[name], f"{key}: {name}"


@pytest.mark.parametrize("key", NETS)
def test_time_command_runs_on_the_deploy_net(key, tmp_path):
    param = with_input(deploy(key), 1, PERMANENT_INPUT[key][2])
    model = tmp_path / "deploy_batch1.prototxt"
    model.write_text(text_format.MessageToString(param), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "caffeish", "time", "-model", str(model), "-iterations", "1",
                           "-phase", "TEST"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Average Forward pass" in proc.stderr and "Average Backward pass" in proc.stderr
    assert f"{'prob':>10s}\tforward" in proc.stderr

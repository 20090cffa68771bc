"""caffeish.net_spec (pycaffe's NetSpec) and the LeNet files it writes."""
import os
import subprocess
import sys

import numpy
import pytest
from google.protobuf import text_format

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.net_spec import NetSpec, layers as L, params as P, param_name_dict, to_proto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "models", "lenet")


def parse(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


# -- (a) the committed LeNet files are what make_lenet.py writes ------------------------------------------
@pytest.mark.parametrize("name", ["lenet_train_test.prototxt", "lenet_deploy.prototxt"])
def test_make_lenet_regenerates_the_committed_files(tmp_path, name):
    subprocess.run([sys.executable, os.path.join(LENET, "make_lenet.py"), "--out-dir", str(tmp_path)], check=True,
                   cwd=str(tmp_path), capture_output=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    generated = (tmp_path / name).read_text(encoding="utf-8")
    with open(os.path.join(LENET, name), encoding="utf-8") as f:
        committed = f.read()
    assert parse(generated) == parse(committed), f"make_lenet.py builds a different net from {name}; rerun it"
    assert generated == committed, f"same net, different text: rerun models/lenet/make_lenet.py ({name})"


def test_lenet_train_test_keeps_caffe_layout():
    with open(os.path.join(LENET, "lenet_train_test.prototxt"), encoding="utf-8") as f:
        net = parse(f.read())
    assert [(lp.name, lp.type) for lp in net.layer[:3]] == [("mnist", "Data"), ("mnist", "Data"), ("conv1",
                                                                                                    "Convolution")]
    assert [list(lp.top) for lp in net.layer[:2]] == [["data", "label"]] * 2
    relu = next(lp for lp in net.layer if lp.type == "ReLU")
    assert (relu.name, list(relu.bottom), list(relu.top)) == ("relu1", ["ip1"], ["ip1"])
    assert [lp.name for lp in net.layer[-2:]] == ["accuracy", "loss"]


# -- (b) a NetSpec with the awkward parts round-trips and runs -------------------------------------------
def small_net():
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 3, 8, 8]), dict(dim=[2])], ntop=2,
                                  data_filler=[dict(type="gaussian", std=1.0), dict(type="constant", value=1)])
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True, negative_slope=0.1)
    n.pool = L.Pooling(n.relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.left, n.right = L.Slice(n.pool, axis=1, slice_point=2, ntop=2)
    n.sum = L.Eltwise(n.left, n.right, operation=P.Eltwise.SUM, coeff=[1, 0.5])
    n.ip = L.InnerProduct(n.sum, num_output=3, weight_filler=dict(type="gaussian", std=0.1))
    n.loss = L.SoftmaxWithLoss(n.ip, n.label, loss_weight=2, axis=1, normalization="BATCH_SIZE")
    n.accuracy = L.Accuracy(n.ip, n.label, include=dict(phase=caffe_pb2.TEST), top_k=1)
    return n


def test_netspec_builds_the_expected_layers():
    net = small_net().to_proto()
    by_name = {lp.name: lp for lp in net.layer}
    assert [lp.name for lp in net.layer] == ["data", "conv", "relu", "pool", "left", "sum", "ip", "loss", "accuracy"]
    assert list(by_name["data"].top) == ["data", "label"]
    assert [f.type for f in by_name["data"].dummy_data_param.data_filler] == ["gaussian", "constant"]
    assert [list(s.dim) for s in by_name["data"].dummy_data_param.shape] == [[2, 3, 8, 8], [2]]
    conv = by_name["conv"]
    assert list(conv.convolution_param.kernel_size) == [3] and list(conv.convolution_param.pad) == [1]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in conv.param] == [(1, False), (2, True)]
    relu = by_name["relu"]
    assert list(relu.bottom) == list(relu.top) == ["conv"] and relu.relu_param.negative_slope == pytest.approx(0.1)
    assert list(by_name["pool"].bottom) == ["conv"]  # the in-place layer's blob, not its NetSpec name
    assert by_name["pool"].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(by_name["left"].top) == ["left", "right"] and list(by_name["left"].slice_param.slice_point) == [2]
    assert list(by_name["sum"].bottom) == ["left", "right"]
    assert by_name["sum"].eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
    loss = by_name["loss"]
    assert list(loss.loss_weight) == [2] and loss.softmax_param.axis == 1
    assert loss.loss_param.normalization == caffe_pb2.LossParameter.BATCH_SIZE
    assert [r.phase for r in by_name["accuracy"].include] == [caffe_pb2.TEST]
    assert parse(text_format.MessageToString(net)) == net


def test_netspec_net_runs_forward_in_both_phases():
    proto = small_net().to_proto()
    train = caffeish.Net(proto, caffeish.TRAIN)
    out = train.forward()
    assert set(out) == {"loss"} and numpy.isfinite(float(out["loss"]))
    test = caffeish.Net(proto, caffeish.TEST)
    out = test.forward()
    assert set(out) == {"loss", "accuracy"} and 0 <= float(out["accuracy"]) <= 1


def test_alternatives_share_blob_and_layer_names():
    n = NetSpec()
    train = L.DummyData(shape=dict(dim=[4, 2]), include=dict(phase="TRAIN"), name="feed", ntop=2)
    test = L.DummyData(shape=dict(dim=[4, 2]), include=dict(phase="TEST"), ntop=2)
    n.x, n.y = [train[0], test[0]], [train[1], test[1]]
    n.out = L.Eltwise(n.x, n.y)
    net = n.to_proto()
    assert [(lp.name, list(lp.top)) for lp in net.layer] == [("feed", ["x", "y"]), ("feed", ["x", "y"]),
                                                             ("out", ["out"])]
    assert [lp.include[0].phase for lp in net.layer[:2]] == [caffeish.TRAIN, caffeish.TEST]
    assert list(net.layer[2].bottom) == ["x", "y"]
    for phase in (caffeish.TRAIN, caffeish.TEST):
        assert caffeish.Net(net, phase).forward()["out"].shape == (4, 2)


def test_unnamed_tops_get_type_numbers_like_pycaffe():
    data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    a = L.Convolution(data, num_output=2, kernel_size=1)
    b = L.Convolution(a, num_output=2, kernel_size=1)
    relu = L.ReLU(b, in_place=True)
    silence = L.Silence(relu, ntop=0)
    net = to_proto(silence)
    assert [(lp.name, list(lp.bottom), list(lp.top)) for lp in net.layer] == [
        ("Input1", [], ["Input1"]), ("Convolution1", ["Input1"], ["Convolution1"]),
        ("Convolution2", ["Convolution1"], ["Convolution2"]), ("ReLU1", ["Convolution2"], ["Convolution2"]),
        ("Silence1", ["Convolution2"], [])]
    assert relu.to_proto().layer[-1].name == "ReLU1"


def test_params_and_param_names():
    assert (P.Pooling.MAX, P.Pooling.AVE) == (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE)
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM and P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    names = param_name_dict()
    assert names["Convolution"] == "convolution" and names["InnerProduct"] == "inner_product"
    assert names["Loss"] == "loss" and names["Softmax"] == "softmax" and "SoftmaxWithLoss" not in names
    with pytest.raises(CaffeishError, match="PoolingParameter has no value 'MAXIMUM'.*MAX, AVE, STOCHASTIC"):
        _ = P.Pooling.MAXIMUM
    with pytest.raises(CaffeishError, match="no message NoSuchParameter"):
        _ = P.NoSuch.X
    assert not hasattr(P.Pooling, "MAXIMUM")


# -- (c) mistakes are one clear CaffeishError ------------------------------------------------------------------
def test_unknown_keyword_names_the_type_and_lists_its_fields():
    with pytest.raises(CaffeishError) as e:
        L.Convolution(L.Input(shape=dict(dim=[1])), num_output=2, kernal_size=3)
    msg = str(e.value)
    assert "L.Convolution" in msg and "'kernal_size'" in msg and "convolution_param (ConvolutionParameter)" in msg
    assert "Did you mean 'kernel_size'?" in msg
    for field in ("num_output", "kernel_size", "weight_filler", "stride", "loss_weight", "include"):
        assert field in msg
    with pytest.raises(CaffeishError, match="L.SoftmaxWithLoss.*softmax_param or loss_param"):
        L.SoftmaxWithLoss(normalise=True)
    with pytest.raises(CaffeishError, match="Silence takes no parameter message"):
        L.Silence(bogus=1, ntop=0)


def test_bad_values_are_clear():
    with pytest.raises(CaffeishError, match=r"L.Pooling: pooling_param.pool takes one of MAX, AVE, STOCHASTIC"):
        L.Pooling(pool="MAXIMUM")
    with pytest.raises(CaffeishError, match=r"convolution_param.weight_filler.*dict of its fields"):
        L.Convolution(weight_filler="xavier")
    with pytest.raises(CaffeishError, match=r"FillerParameter has no field 'kind'"):
        L.Convolution(weight_filler=dict(kind="xavier"))
    with pytest.raises(CaffeishError, match=r"convolution_param.num_output: cannot take 2.5"):
        L.Convolution(num_output=2.5)
    with pytest.raises(CaffeishError, match="keyword 'top' is not taken"):
        L.ReLU(top="x")
    with pytest.raises(CaffeishError, match="unpack several tops"):
        NetSpec().pair = L.Slice(L.Input(shape=dict(dim=[2, 2])), ntop=2)
    with pytest.raises(TypeError, match=r"^ReLU input 0 is not a Top \(type is <class 'str'>\)"):
        L.ReLU("data")


def test_a_tuple_of_tops_is_a_type_error_in_pycaffes_words():
    data = L.DummyData(shape=[dict(dim=[1]), dict(dim=[1])], ntop=2)
    with pytest.raises(TypeError) as e:
        L.Silence(data, ntop=0)
    assert str(e.value) == "Silence input 0 is not a Top (type is <class 'tuple'>)"   # pycaffe's words exactly
    if hasattr(e.value, "__notes__"):
        assert "unpack several tops" in e.value.__notes__[0]
    L.Silence(*data, ntop=0)

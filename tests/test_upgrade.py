"""Caffe's upgrade path: V0 and V1 nets, net-level inputs, old transform fields, BatchNorm specs, solver_type,
V1 .caffemodels, and the upgrade-net / upgrade-solver verbs."""
import functools
import logging
import pathlib

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish.prototxt import parse_text, read_net_param, read_solver_param
from caffeish.upgrade import (V1_TYPE_NAMES, V1_TYPES, net_needs_upgrade, upgrade_net, upgrade_solver,
                              upgrade_solver_type)
from helpers import caffeish_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "models" / "lenet" / "lenet_deploy.prototxt"

FILLERS = 'weight_filler { type: "xavier" } bias_filler { type: "constant" }'

# LeNet as Caffe wrote it before the `layer` format: enum types, blobs_lr/weight_decay, net-level inputs.
LENET_V1 = f"""
name: "LeNet"
input: "data"
input_dim: 64 input_dim: 1 input_dim: 28 input_dim: 28
input: "label"
input_dim: 64 input_dim: 1 input_dim: 1 input_dim: 1
layers {{ name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param {{ num_output: 20 kernel_size: 5 stride: 1 {FILLERS} }} }}
layers {{ name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layers {{ name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param {{ num_output: 50 kernel_size: 5 stride: 1 {FILLERS} }} }}
layers {{ name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layers {{ name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param {{ num_output: 500 {FILLERS} }} }}
layers {{ name: "relu1" type: RELU bottom: "ip1" top: "ip1" }}
layers {{ name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param {{ num_output: 10 {FILLERS} }} }}
layers {{ name: "accuracy" type: ACCURACY bottom: "ip2" bottom: "label" top: "accuracy"
  include: {{ phase: TEST }} }}
layers {{ name: "loss" type: SOFTMAX_LOSS bottom: "ip2" bottom: "label" top: "loss" }}
"""

LEARNED = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"
LENET_V2 = f"""
name: "LeNet"
layer {{ name: "input" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 64 dim: 1 dim: 28 dim: 28 }} shape {{ dim: 64 dim: 1 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1" {LEARNED}
  convolution_param {{ num_output: 20 kernel_size: 5 stride: 1 {FILLERS} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" {LEARNED}
  convolution_param {{ num_output: 50 kernel_size: 5 stride: 1 {FILLERS} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" {LEARNED}
  inner_product_param {{ num_output: 500 {FILLERS} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" {LEARNED}
  inner_product_param {{ num_output: 10 {FILLERS} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def net(text):
    return parse_text(text, caffe_pb2.NetParameter())


caffeish_cli = functools.partial(caffeish_run, check=True)


def test_v1_lenet_upgrades_to_its_v2_text(tmp_path, caplog):
    v1, v2 = net(LENET_V1), net(LENET_V2)
    assert net_needs_upgrade(v1) and not net_needs_upgrade(v2)
    upgraded = upgrade_net(v1)
    assert upgraded == v2, f"upgraded:\n{upgraded}"
    assert v1.layers and not v1.layer            # the argument is left as it was
    assert upgrade_net(v2) is v2                 # nothing to do: the same message back
    path = tmp_path / "lenet_v1.prototxt"
    path.write_text(LENET_V1)
    with caplog.at_level(logging.INFO, logger="caffeish"):
        assert read_net_param(path) == v2
    upgrades = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Upgraded")]
    assert len(upgrades) == 2 and all(str(path) in m for m in upgrades)
    assert "V1 layer" in upgrades[0] and "input" in upgrades[1]
    # The upgraded file builds; include { phase } still filters.
    test_net, train_net = Net(str(path), caffeish.TEST), Net(str(path), caffeish.TRAIN)
    assert "accuracy" in test_net.layer_dict and "accuracy" not in train_net.layer_dict
    assert test_net.blobs["data"].shape == (64, 1, 28, 28)
    assert train_net.params_lr[:2] == [1.0, 2.0] and train_net.params_weight_decay[:2] == [1.0, 0.0]


def test_every_v1_enum_value_has_a_type_string():
    values = {v.number for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values}
    assert set(V1_TYPES) == values and len(V1_TYPE_NAMES) == len(values)
    assert V1_TYPE_NAMES["SOFTMAX_LOSS"] == "SoftmaxWithLoss" and V1_TYPE_NAMES["IM2COL"] == "Im2col"


def test_v1_param_names_share_modes_loss_weights_and_sub_messages():
    upgraded = upgrade_net(net("""
        layers { name: "a" type: INNER_PRODUCT bottom: "x" top: "y" param: "w" param: "b"
                 blob_share_mode: PERMISSIVE blobs_lr: 3 loss_weight: 0.5
                 inner_product_param { num_output: 2 } exclude { stage: "deploy" } }
        layers { name: "d" type: DROPOUT bottom: "y" top: "y" dropout_param { dropout_ratio: 0.3 } }"""))
    assert upgraded == net("""
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "y"
                param { name: "w" share_mode: PERMISSIVE lr_mult: 3 } param { name: "b" } loss_weight: 0.5
                inner_product_param { num_output: 2 } exclude { stage: "deploy" } }
        layer { name: "d" type: "Dropout" bottom: "y" top: "y" dropout_param { dropout_ratio: 0.3 } }""")


def test_v0_net_with_a_padding_layer():
    v0 = net("""
        name: "v0"
        input: "data" input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
        layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 biasterm: false
                         weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 weight_decay: 1 }
                 bottom: "pad1" top: "conv1" }
        layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
        layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
        layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.001 beta: 0.5 } bottom: "pool1" top: "norm1" }
        layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 } bottom: "norm1" top: "norm1" }
        layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "norm1" top: "fc" }
        layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }""")
    upgraded = upgrade_net(v0)
    assert upgraded == net("""
        name: "v0"
        layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 decay_mult: 1 }
                convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 stride: 2
                                    weight_filler { type: "gaussian" std: 0.01 } } }
        layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
                pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
        layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.001 beta: 0.5 } }
        layer { name: "drop" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.25 } }
        layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 5 } }
        layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }"""), str(upgraded)
    built = Net(upgraded, caffeish.TEST)
    assert built.blobs["conv1"].shape == (2, 4, 5, 5)        # (8 + 2*2 - 3) // 2 + 1: the folded pad counts


def test_v0_errors_name_the_layer():
    with pytest.raises(CaffeishError, match=r"layer 'x'.*unknown V0 layer type 'convolution'"):
        upgrade_net(net('input: "d" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 '
                        'layers { layer { name: "x" type: "convolution" } bottom: "d" top: "y" }'))
    with pytest.raises(CaffeishError, match=r"layer 'r'.*padding layer 'p' feeds this layer"):
        upgrade_net(net('input: "d" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 '
                        'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "q" } '
                        'layers { layer { name: "r" type: "relu" } bottom: "q" top: "q" }'))


def test_old_transform_fields_move_into_transform_param(tmp_path, caplog):
    v1 = net("""
        layers { name: "mnist" type: DATA top: "data" top: "label"
                 data_param { source: "db" batch_size: 8 scale: 0.00390625 mean_file: "m.binaryproto"
                              crop_size: 20 mirror: true } }
        layers { name: "img" type: IMAGE_DATA top: "i" top: "l" image_data_param { source: "list.txt" scale: 2 } }
        layers { name: "win" type: WINDOW_DATA top: "w" top: "wl" window_data_param { source: "w.txt" mirror: true } }""")
    with caplog.at_level(logging.INFO, logger="caffeish"):
        upgraded = upgrade_net(v1, "old.prototxt")
    assert upgraded == net("""
        layer { name: "mnist" type: "Data" top: "data" top: "label"
                transform_param { scale: 0.00390625 mirror: true crop_size: 20 mean_file: "m.binaryproto" }
                data_param { source: "db" batch_size: 8 } }
        layer { name: "img" type: "ImageData" top: "i" top: "l" transform_param { scale: 2 }
                image_data_param { source: "list.txt" } }
        layer { name: "win" type: "WindowData" top: "w" top: "wl" transform_param { mirror: true }
                window_data_param { source: "w.txt" } }""")
    transform = [r.getMessage() for r in caplog.records if "transformation" in r.getMessage()]
    assert len(transform) == 1 and "old.prototxt" in transform[0] and "mnist: data_param.scale" in transform[0]


def test_batch_norm_param_specs():
    frozen = "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }"
    upgraded = upgrade_net(net(f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "x" {frozen} }}'))
    assert upgraded == net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }')
    named = 'param { name: "m" } param { name: "v" lr_mult: 0 } param { name: "s" }'
    upgraded = upgrade_net(net(f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "x" {named} }}'))
    assert [(p.name, p.lr_mult, p.decay_mult) for p in upgraded.layer[0].param] == [("m", 0, 0), ("v", 0, 0),
                                                                                       ("s", 0, 0)]
    assert not net_needs_upgrade(upgraded)
    # Other layers' specs, and BatchNorm without three specs, are left alone.
    plain = net('layer { name: "s" type: "Scale" bottom: "x" top: "x" param { lr_mult: 0 } param { lr_mult: 0 } '
                'param { lr_mult: 0 } } layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }')
    assert upgrade_net(plain) is plain


def test_solver_type_enum_upgrade(tmp_path, caplog):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "x.prototxt" base_lr: 0.1 solver_type: NESTEROV momentum: 0.9\n')
    with caplog.at_level(logging.INFO, logger="caffeish"):
        param = read_solver_param(path)
    assert param.type == "Nesterov" and not param.HasField("solver_type")
    assert any("solver_type" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    both = parse_text('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter())
    with pytest.raises(CaffeishError, match="both 'solver_type'"):
        upgrade_solver(both)
    current = parse_text('type: "Adam"', caffe_pb2.SolverParameter())
    assert upgrade_solver(current) is current
    assert upgrade_solver_type(caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.RMSPROP)).type == \
        "RMSProp"
    # Nets written inside the solver are upgraded too.
    inline = parse_text('net_param { layers { name: "r" type: RELU bottom: "x" top: "x" } }',
                        caffe_pb2.SolverParameter())
    assert upgrade_solver(inline).net_param.layer[0].type == "ReLU"


def test_unknown_v1_type_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('layers {\n  name: "conv1"\n  type: CONVOLUTIONAL\n  top: "y"\n}\n')
    with pytest.raises(CaffeishError) as info:
        read_net_param(path)
    message = str(info.value)
    assert f"{path}:3:9" in message and "layer 'conv1'" in message and "unknown V1 layer type CONVOLUTIONAL" in message
    # A string type in a V1 entry, and an enum type in a current entry, get a pointer to the right form.
    with pytest.raises(CaffeishError, match=r"layer 'c'.*type: CONVOLUTION"):
        read_net_param('layers { type: "Convolution" name: "c" }\n')
    with pytest.raises(CaffeishError, match=r"layer 'r'.*write type: \"ReLU\""):
        read_net_param('layer { name: "r" type: RELU }\n')
    with pytest.raises(CaffeishError, match="Expected string but found: 'RELU'"):   # not a type: no V1 advice
        read_net_param('layer { name: RELU type: "ReLU" }\n')
    # A binary file may hold an enum number no Caffe defines: protobuf keeps it aside; we name it.
    layer = caffe_pb2.V1LayerParameter(name="mystery", type=caffe_pb2.V1LayerParameter.RELU)
    data = layer.SerializeToString().replace(bytes([0x28, caffe_pb2.V1LayerParameter.RELU]), bytes([0x28, 99]))
    param = caffe_pb2.NetParameter()
    param.layers.add().ParseFromString(data)
    with pytest.raises(CaffeishError, match=r"layer 'mystery'.*unknown V1 layer type enum value 99"):
        upgrade_net(param, "weird.caffemodel")


def test_mixed_layer_and_layers_is_refused():
    with pytest.raises(CaffeishError, match="both 'layer' entries"):
        upgrade_net(net('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }'))


def write_v1_caffemodel(path, rng):
    """LeNet's weights as an old Caffe wrote them: V1 `layers`, 4-D num/channels/height/width blobs."""
    shapes = {"conv1": [(20, 1, 5, 5), (1, 1, 1, 20)], "conv2": [(50, 20, 5, 5), (1, 1, 1, 50)],
              "ip1": [(1, 1, 500, 800), (1, 1, 1, 500)], "ip2": [(1, 1, 10, 500), (1, 1, 1, 10)]}
    types = {"conv1": "CONVOLUTION", "conv2": "CONVOLUTION", "ip1": "INNER_PRODUCT", "ip2": "INNER_PRODUCT"}
    model = caffe_pb2.NetParameter(name="LeNet")
    model.input.append("data")
    values = {}
    for name in ("conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"):
        layer = model.layers.add(name=name)
        layer.type = caffe_pb2.V1LayerParameter.LayerType.Value(types.get(name, "RELU"))
        for shape in shapes.get(name, []):
            array = rng.standard_normal(shape).astype(numpy.float32)
            values.setdefault(name, []).append(array)
            layer.blobs.add(num=shape[0], channels=shape[1], height=shape[2], width=shape[3],
                            data=array.ravel().tolist())
    path.write_bytes(model.SerializeToString())
    return values


def test_binary_v1_caffemodel_loads_into_the_deploy_net(tmp_path, caplog):
    path = tmp_path / "lenet_v1.caffemodel"
    values = write_v1_caffemodel(path, numpy.random.default_rng(0))
    with caplog.at_level(logging.INFO, logger="caffeish"):
        deployed = Net(str(DEPLOY), str(path), caffeish.TEST)
    assert any(r.getMessage().startswith("Upgraded") and str(path) in r.getMessage() for r in caplog.records)
    assert deployed.params["ip1"][0].shape == (500, 800) and deployed.params["ip1"][1].shape == (500,)
    for name, arrays in values.items():
        for blob, array in zip(deployed.params[name], arrays):
            numpy.testing.assert_array_equal(blob.data, array.reshape(blob.shape))


def test_upgrade_net_cli(tmp_path, cli):
    v1 = tmp_path / "lenet_v1.prototxt"
    v1.write_text(LENET_V1)
    out = tmp_path / "lenet.prototxt"
    proc = caffeish_cli("upgrade-net", str(v1), str(out))
    assert "upgraded" in proc.stdout and str(v1) in proc.stderr       # the INFO lines name the file
    assert read_net_param(out) == net(LENET_V2) and "layers {" not in out.read_text()
    code, stdout, _ = cli("upgrade-net", out, tmp_path / "again.prototxt")
    assert code == 0 and "already in the latest format" in stdout
    code, _, stderr = cli("upgrade-net", v1, v1)
    assert code == 1 and "refusing to overwrite" in stderr and "Traceback" not in stderr
    assert v1.read_text() == LENET_V1
    assert cli("upgrade-net", v1, "-in_place")[0] == 0
    assert read_net_param(v1) == net(LENET_V2)
    # Binary in, binary out: Caffe's upgrade_net_proto_binary.
    model = tmp_path / "lenet_v1.caffemodel"
    write_v1_caffemodel(model, numpy.random.default_rng(1))
    new_model = tmp_path / "lenet.caffemodel"
    caffeish_cli("upgrade-net", str(model), str(new_model))
    upgraded = caffe_pb2.NetParameter.FromString(new_model.read_bytes())
    assert not upgraded.layers and not upgraded.input and [x.name for x in upgraded.layer][:2] == ["conv1", "pool1"]
    assert upgraded.layer[0].type == "Convolution" and len(upgraded.layer[0].blobs) == 2


def test_upgrade_solver_cli(tmp_path, cli):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "lenet.prototxt" base_lr: 0.01 solver_type: ADAGRAD\n')
    out = tmp_path / "new_solver.prototxt"
    proc = caffeish_cli("upgrade-solver", str(solver), str(out))
    assert "upgraded" in proc.stdout and str(solver) in proc.stderr
    param = parse_text(out.read_text(), caffe_pb2.SolverParameter())
    assert param.type == "AdaGrad" and not param.HasField("solver_type") and param.net == "lenet.prototxt"
    code, stdout, _ = cli("upgrade-solver", out, tmp_path / "same.prototxt")
    assert code == 0 and "already in the latest format" in stdout
    code, _, stderr = cli("upgrade-solver", solver)
    assert code == 1 and "--in-place" in stderr

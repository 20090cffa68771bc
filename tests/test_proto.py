"""The committed caffe_pb2.py is what `make proto` generates, and real Caffe files parse."""
import pathlib
import subprocess
import sys

from caffeish import caffe_pb2
from caffeish.prototxt import parse_text

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_module_is_fresh(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
                    f"--python_out={tmp_path}", str(ROOT / "proto" / "caffe.proto")], check=True)
    fresh = (tmp_path / "caffe_pb2.py").read_text()
    committed = (ROOT / "caffeish" / "proto" / "caffe_pb2.py").read_text()
    assert fresh == committed, "caffeish/proto/caffe_pb2.py is stale: run `make proto`"


def test_caffe_field_numbers():
    L = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert L["convolution_param"].number == 106 and L["batch_norm_param"].number == 139
    assert L["include"].number == 8 and L["propagate_down"].number == 11
    S = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    assert S["type"].number == 40 and S["base_lr"].number == 5 and S["iter_size"].number == 36
    assert caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["double_data"].number == 8
    assert caffe_pb2.Datum.DESCRIPTOR.fields_by_name["encoded"].number == 7
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2


def test_binary_layout_matches_hand_encoded_caffe_bytes():
    # A BlobProto with shape {dim: 2} and data [1.0] as Caffe writes it (packed fields).
    raw = bytes([0x2A, 0x04, 0x00, 0x00, 0x80, 0x3F, 0x3A, 0x03, 0x0A, 0x01, 0x02])
    proto = caffe_pb2.BlobProto.FromString(raw)
    assert list(proto.shape.dim) == [2] and list(proto.data) == [1.0]
    assert proto.SerializeToString() == raw


def test_legacy_v1_text_parses():
    p = parse_text('layers { name: "c" type: CONVOLUTION blobs_lr: 1 convolution_param { num_output: 2 } }',
                   caffe_pb2.NetParameter())
    assert p.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION

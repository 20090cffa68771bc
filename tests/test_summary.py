"""caffeish summary: top shapes, parameter counts and multiply-adds of a built net, checked by hand."""
import functools
import pathlib
import re

import caffeish
from caffeish import Net
from caffeish.tools.summary import format_summary, summarize
from helpers import caffeish_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "models" / "lenet" / "lenet_deploy.prototxt"
TRAIN_TEST = ROOT / "models" / "lenet" / "lenet_train_test.prototxt"

# LeNet deploy, batch 64, by hand.  Parameters: weights + biases.
LENET_PARAMS = {"conv1": 20 * 1 * 5 * 5 + 20,          # 520
                "conv2": 50 * 20 * 5 * 5 + 50,         # 25,050
                "ip1": 500 * 800 + 500,                # 400,500  (800 = 50 * 4 * 4)
                "ip2": 10 * 500 + 10}                  # 5,010
# Multiply-adds: conv N*Cout*Hout*Wout*(Cin/group)*kh*kw, inner product N*M*K.
LENET_MACS = {"conv1": 64 * 20 * 24 * 24 * 1 * 5 * 5,   # 18,432,000  (28 - 5 + 1 = 24)
              "conv2": 64 * 50 * 8 * 8 * 20 * 5 * 5,    # 102,400,000 (12 - 5 + 1 = 8)
              "ip1": 64 * 500 * 800,                    # 25,600,000
              "ip2": 64 * 10 * 500}                     # 320,000


caffeish_cli = functools.partial(caffeish_run, check=True)


def test_lenet_numbers():
    assert sum(LENET_PARAMS.values()) == 431_080
    assert sum(LENET_MACS.values()) == 146_752_000
    with Net(str(DEPLOY), caffeish.TEST) as net:
        summary = summarize(net)
    rows = {r.name: r for r in summary.rows}
    assert [r.name for r in summary.rows] == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2",
                                              "prob"]
    assert {n: r.params for n, r in rows.items() if r.params} == LENET_PARAMS
    assert {n: r.macs for n, r in rows.items() if r.macs} == LENET_MACS
    assert summary.total_params == 431_080 and summary.total_macs == 146_752_000
    assert rows["conv1"].top_shapes == [(64, 20, 24, 24)] and rows["ip1"].top_shapes == [(64, 500)]
    assert rows["pool1"].macs == 0 and rows["relu1"].macs == 0 and rows["prob"].params == 0


def test_cli_table():
    out = caffeish_cli("summary", str(DEPLOY), "-phase", "TEST").stdout
    assert out.startswith("Net: LeNet (phase TEST)\n")
    assert re.search(r"^conv1\s+Convolution\s+64x20x24x24\s+520\s+18,432,000$", out, re.M)
    assert re.search(r"^conv2\s+Convolution\s+64x50x8x8\s+25,050\s+102,400,000$", out, re.M)
    assert re.search(r"^ip1\s+InnerProduct\s+64x500\s+400,500\s+25,600,000$", out, re.M)
    assert re.search(r"^relu1\s+ReLU\s+64x500\s+-\s+-$", out, re.M)
    assert "Total params: 431,080\n" in out and "Total multiply-adds: 146,752,000\n" in out
    assert "other layers count 0" in out


def test_group_convolution_and_shared_parameters():
    net = Net("""
        name: "small"
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
        layer { name: "fc1" type: "InnerProduct" bottom: "c" top: "f1" param { name: "w" } param { name: "b" }
                inner_product_param { num_output: 3 } }
        layer { name: "fc2" type: "InnerProduct" bottom: "c" top: "f2" param { name: "w" } param { name: "b" }
                inner_product_param { num_output: 3 } }
        """, caffeish.TEST)
    summary = summarize(net)
    rows = {r.name: r for r in summary.rows}
    assert set(rows) == {"in", "conv", "fc1", "fc2"}                 # the inserted Split layer is not listed
    assert rows["conv"].params == 6 * (4 // 2) * 3 * 3 + 6            # 114
    assert rows["conv"].macs == 2 * 6 * 6 * 6 * (4 // 2) * 3 * 3     # 7,776: C_in / group per output
    assert rows["fc1"].params == rows["fc2"].params == 3 * 216 + 3 and rows["fc2"].shared
    assert rows["fc1"].macs == rows["fc2"].macs == 2 * 3 * 216          # N * M * K, K = 6 * 6 * 6
    assert summary.total_params == 114 + 651                          # the shared blobs count once
    assert "651 (shared)" in format_summary(summary)


def test_missing_data_sources_are_explained(tmp_path):
    proc = caffeish_cli("summary", str(TRAIN_TEST), cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "layer 'mnist' (Data) reads data/mnist/mnist_train_lmdb, which does not exist" in proc.stderr
    assert str(tmp_path) in proc.stderr and "deploy" in proc.stderr

"""caffeish draw: DOT text as Caffe's draw_net.py lays nets out; PNG/SVG through Graphviz when it is there."""
import functools
import pathlib
import shutil
import sys

import pytest

from caffeish import CaffeishError, caffe_pb2
from caffeish.prototxt import read_net_param
from caffeish.tools import draw
from helpers import caffeish_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_TEST = ROOT / "models" / "lenet" / "lenet_train_test.prototxt"


caffeish_cli = functools.partial(caffeish_run, check=True)


def node_lines(dot, prefix):
    return [line.strip() for line in dot.splitlines() if line.strip().startswith(prefix) and "->" not in line]


def test_lenet_dot(tmp_path):
    out = tmp_path / "lenet.dot"
    proc = caffeish_cli("draw", str(TRAIN_TEST), str(out), "--phase", "TRAIN")
    assert "Drawing net to" in proc.stdout and "9 layers" in proc.stdout
    dot = out.read_text()
    lines = dot.splitlines()
    assert lines[:3] == ['digraph "LeNet" {', "  rankdir=LR;", "  node [style=filled];"] and lines[-1] == "}"
    # Layers: boxes labelled name, (type) and key settings, coloured by type.
    assert ('"layer 2 conv1" [label="conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0", shape=box, '
            'fillcolor="#FF5050"];') in dot
    assert ('"layer 3 pool1" [label="pool1\\n(MAX Pooling)\\nkernel size: 2\\nstride: 2\\npad: 0", shape=box, '
            'fillcolor="#FF9900"];') in dot
    assert '"layer 6 ip1" [label="ip1\\n(InnerProduct)", shape=box, fillcolor="#CC33FF"];' in dot
    assert '"layer 7 relu1" [label="relu1\\n(ReLU)", shape=box, fillcolor="#90EE90"];' in dot   # in place
    # Blobs: one octagon per name; the in-place ReLU reads and writes the one ip1 node.
    assert node_lines(dot, '"blob ip1"') == ['"blob ip1" [label="ip1", shape=octagon, fillcolor="#E0E0E0"];']
    assert '  "blob ip1" -> "layer 7 relu1";\n  "layer 7 relu1" -> "blob ip1";\n' in dot
    # Edges out of data, convolution and inner product layers carry the batch size or the outputs.
    assert '"layer 0 mnist" -> "blob data" [label="Batch 64"];' in dot
    assert '"layer 2 conv1" -> "blob conv1" [label="20"];' in dot
    assert '"layer 8 ip2" -> "blob ip2" [label="10"];' in dot
    assert '"blob pool1" -> "layer 4 conv2";' in dot
    # TRAIN leaves out the TEST data layer and the accuracy layer.
    assert "accuracy" not in dot and '"layer 1 mnist"' not in dot
    assert len(node_lines(dot, '"layer ')) == 9 and len(node_lines(dot, '"blob ')) == 9


def test_phases_rankdir_and_old_formats(tmp_path):
    param = read_net_param(TRAIN_TEST)
    everything = draw.net_to_dot(param)                          # phase ALL: both data layers
    assert '"layer 0 mnist"' in everything and '"layer 1 mnist"' in everything and "accuracy" in everything
    test = draw.net_to_dot(param, phase=caffe_pb2.TEST)
    assert '"layer 0 mnist"' not in test and '"layer 9 accuracy"' in test
    top_down = draw.net_to_dot(param, rankdir="TB", phase=caffe_pb2.TEST)
    assert "rankdir=TB;" in top_down and 'label="conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"' in top_down
    # A V1 prototxt draws as its upgrade.
    old = tmp_path / "old.prototxt"
    old.write_text('name: "old" input: "x" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                   'layers { name: "c" type: CONVOLUTION bottom: "x" top: "y" '
                   'convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 group: 2 } }\n')
    caffeish_cli("draw", str(old), str(tmp_path / "old.dot"), "-rankdir", "BT")
    dot = (tmp_path / "old.dot").read_text()
    assert 'digraph "old" {' in dot and "rankdir=BT;" in dot and '"layer 0 input" [label="input (Input)"' in dot
    assert 'label="c (Convolution) kernel size: 3x5 stride: 1 pad: 0 group: 2"' in dot


def test_quoting_and_bad_arguments(tmp_path):
    param = caffe_pb2.NetParameter(name='say "hi"')
    param.layer.add(name='a\\b "q"', type="ReLU", bottom=["x"], top=["x"])
    dot = draw.net_to_dot(param)
    assert 'digraph "say \\"hi\\"" {' in dot and '[label="a\\\\b \\"q\\"\\n(ReLU)"' in dot
    with pytest.raises(CaffeishError, match=r"must end with \.png, \.svg, \.dot, \.pdf, \.jpg"):
        draw.draw_net_to_file(param, str(tmp_path / "net.txt"))
    bad = caffeish_cli("draw", str(TRAIN_TEST), str(tmp_path / "x.dot"), "--rankdir", "XY", check=False)
    assert bad.returncode != 0 and "XY" in bad.stderr


def test_png_without_graphviz_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "graphviz", None)          # `import graphviz` fails
    monkeypatch.setenv("PATH", str(tmp_path))                   # and no `dot` program
    with pytest.raises(CaffeishError, match=r"pip install 'caffeish\[draw\]'.*Graphviz program"):
        draw.draw_net_to_file(read_net_param(TRAIN_TEST), str(tmp_path / "net.png"))
    assert not (tmp_path / "net.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot program")
def test_png_and_svg(tmp_path):
    caffeish_cli("draw", str(TRAIN_TEST), str(tmp_path / "net.png"))
    assert (tmp_path / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    caffeish_cli("draw", str(TRAIN_TEST), str(tmp_path / "net.svg"), "--phase", "TEST")
    assert "<svg" in (tmp_path / "net.svg").read_text()
    draw.draw_net_to_file(read_net_param(TRAIN_TEST), str(tmp_path / "net.jpg"))   # any format Graphviz renders
    assert (tmp_path / "net.jpg").read_bytes()[:2] == b"\xff\xd8"
    draw.draw_net_to_file(read_net_param(TRAIN_TEST), str(tmp_path / "net.pdf"))
    assert (tmp_path / "net.pdf").read_bytes()[:4] == b"%PDF"

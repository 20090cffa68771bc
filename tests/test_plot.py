"""`caffeish plot`: a training log's losses and accuracy as an image (matplotlib, an optional extra)."""
import os
import subprocess
import sys

import pytest

from test_parse_log import CAFFE_LOG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, pythonpath=ROOT):
    return subprocess.run([sys.executable, "-m", "caffeish", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath}, timeout=120)


def test_plot_writes_a_png_with_loss_and_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    out = tmp_path / "curves.png"
    proc = run("plot", str(log), str(out), "--title", "LeNet")
    assert proc.returncode == 0, proc.stderr
    assert "train loss, test loss, test accuracy, test accuracy#1" in proc.stdout
    from PIL import Image
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] > img.size[0] * 0.6  # two panels


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    proc = run("plot", str(log), str(tmp_path / "x.png"), pythonpath=f"{fake}{os.pathsep}{ROOT}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pip install 'caffeish[plot]'" in proc.stderr
    assert not (tmp_path / "x.png").exists()

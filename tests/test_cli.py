"""The CLI as a user runs it: real subprocesses, README commands included."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from helpers import caffeish_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def caffeish(*args, check=True):
    return caffeish_run(*args, check=check, pythonpath=str(ROOT), timeout=300)


def test_time_prints_caffe_shaped_report():
    out = caffeish("time", "-model", "models/lenet/lenet_deploy.prototxt", "-phase", "TEST", "-iterations", "2").stderr
    assert "*** Benchmark begins ***" in out and "*** Benchmark ends ***" in out
    assert re.search(r"\]\s+conv1\tforward: [\d.e+-]+ ms\.", out)
    assert re.search(r"\]\s+conv1\tbackward: [\d.e+-]+ ms\.", out)
    # rates from Layer.macs (as caffeish summary counts them) for the layers with weight products only
    assert re.search(r"\]\s+conv1\tforward: [\d.e+-]+ ms\. \([\d.]+ GFLOP/s", out)
    assert re.search(r"\]\s+ip1\tforward: [\d.e+-]+ ms\. \([\d.]+ GFLOP/s", out)
    assert re.search(r"\]\s+pool1\tforward: [\d.e+-]+ ms\.$", out, re.M)
    # each Convolution / Pooling layer's engine, with the reason it was chosen
    assert re.search(r"Engine: conv1 \(Convolution\): (native|gemm|image-threads) -- \S", out)
    assert re.search(r"Engine: pool1 \(Pooling\): windows -- strided window views \(numpy arrays\)$", out, re.M)
    # LeNet's two convolutions have unit strides: the native kernels run them where they could be built
    assert re.search(r"Native direct convolution: (caffeish_native_\w+\.so \(\d+-bit vectors, .+\); used by 2 "
                     r"of 2 Convolution layers \(conv1, conv2\)|.*numpy paths; used by 0 of 2 Convolution layers)$",
                     out, re.M)
    for line in ("Average Forward pass:", "Average Backward pass:", "Average Forward-Backward:", "Total Time:"):
        assert line in out
    # glog's line shape: I1128 13:11:07.123456  1234 file.py:12] message
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ", out, re.M)


def test_bad_model_gives_one_clear_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
                   'layer { name: "conv" type: "Convolution" bottom: "y" top: "z" }\n')
    proc = caffeish("time", "-model", str(bad), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "layer 'conv' (type Convolution)" in proc.stderr and "unknown bottom blob 'y'" in proc.stderr
    debug = caffeish("time", "-model", str(bad), "--debug", check=False)
    assert "Traceback" in debug.stderr


def test_syntax_error_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "in"\n  type: "Input"\n  top: "x"\n  bogus_field: 3\n}\n')
    proc = caffeish("time", "--model", str(bad), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{bad}:5:3" in proc.stderr


def test_missing_file_is_clear():
    proc = caffeish("time", "-model", "no/such.prototxt", check=False)
    assert proc.returncode == 1 and "cannot read no/such.prototxt" in proc.stderr


def test_device_query_without_gpu_is_clear():
    from caffeish import backend
    proc = caffeish("device-query", check=False)
    if backend.gpu_available():
        assert proc.returncode == 0
    else:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and ("CuPy" in proc.stderr)


def test_gpu_flag_without_gpu_is_clear():
    from caffeish import backend
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    proc = caffeish("time", "-model", "models/lenet/lenet_deploy.prototxt", "-gpu", "0", check=False)
    assert proc.returncode == 1 and "GPU mode" in proc.stderr and "Traceback" not in proc.stderr


def _readme_blocks(lang):
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_caffeish_commands_run():
    commands = [line.split("#")[0].split() for block in _readme_blocks("sh") for line in block.splitlines()
                if line.startswith("caffeish ")]
    assert commands, "the README shows caffeish commands"
    for cmd in commands:
        caffeish(*cmd[1:])


def test_readme_mpiexec_commands_run():
    lines = [line.split("#")[0].split() for block in _readme_blocks("sh") for line in block.splitlines()
             if line.startswith("mpiexec ")]
    assert lines, "the README shows an mpiexec command"
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        pytest.skip("no mpiexec beside this Python (the test extra installs MPICH)")
    pytest.importorskip("mpi4py")
    for cmd in lines:
        at = cmd.index("caffeish")
        argv = [mpiexec] + cmd[1:at] + [sys.executable, "-m", "caffeish"] + cmd[at + 1:]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Optimization Done." in proc.stderr


def test_readme_python_snippet_runs():
    (snippet,) = _readme_blocks("python")
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(2, 10)" in proc.stdout

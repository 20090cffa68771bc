"""`caffeish device-query` on a GPU machine prints each device's properties and the CUDA/cuDNN/NCCL status."""
import os
import subprocess
import sys

import pytest

from caffeish import backend
from caffeish.cli import device_query

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def query(*args):
    return subprocess.run([sys.executable, "-m", "caffeish", "device-query", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)


def test_library_versions_and_status_lines():
    assert device_query._library_version(90100) == "9.1.0"
    assert device_query._library_version(8902) == "8.9.2"
    assert device_query._library_version(22105) == "2.21.5"
    assert device_query._version(12090) == "12.9"
    for status in (device_query.cudnn_status(), device_query.nccl_status()):
        assert status.startswith(("yes", "no (")), status


@pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA device (CuPy sees none)")
def test_device_query_prints_every_device():
    proc = query()
    assert proc.returncode == 0, proc.stderr
    count = backend.cupy.cuda.runtime.getDeviceCount()
    assert proc.stderr.count("Device id:") == count
    for field in ("Name:", "Compute capability:", "Total global memory:", "Free global memory:",
                  "Number of multiprocessors:", "CUDA runtime version:", "CUDA driver version:", "cuDNN usable:",
                  "NCCL usable:"):
        assert field in proc.stderr, field


@pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA device (CuPy sees none)")
def test_device_query_one_device_and_a_missing_one():
    proc = query("--gpu", "0")
    assert proc.returncode == 0 and proc.stderr.count("Device id:") == 1, proc.stderr
    count = backend.cupy.cuda.runtime.getDeviceCount()
    proc = query("--gpu", str(count))
    assert proc.returncode == 1 and "do not exist" in proc.stderr and "Traceback" not in proc.stderr

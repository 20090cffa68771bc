"""`caffeish classify`: top-k classes of images under a deploy net, as a user runs it."""
import os
import re
import subprocess
import sys

import numpy
import pytest
from PIL import Image

import caffeish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LINE = re.compile(r"^  (\d+\.\d{6})  (\d+)(?:  (.+))?$")


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "caffeish", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def results(stdout):
    """{image: [(probability, class, label)]} from classify's output."""
    out, current = {}, None
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            out[current].append((float(m.group(1)), int(m.group(2)), m.group(3)))
        else:
            current = line
            out[current] = []
    return out


@pytest.fixture
def lenet(tmp_path):
    """LeNet deploy with batch 2 (so three images take two batches) and weights saved by Net.save."""
    with open(os.path.join(ROOT, "models", "lenet", "lenet_deploy.prototxt"), encoding="utf-8") as f:
        text = f.read()
    model = tmp_path / "deploy.prototxt"
    model.write_text(text.replace("dim: 64", "dim: 2", 1))
    caffeish.set_random_seed(3)
    weights = tmp_path / "lenet.caffemodel"
    caffeish.Net(str(model), caffeish.TEST).save(str(weights))
    return str(model), str(weights)


def test_lenet_top_k_with_labels(tmp_path, lenet):
    model, weights = lenet
    rng = numpy.random.default_rng(0)
    images = []
    for i, size in enumerate([(28, 28), (40, 31), (12, 20)]):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((rng.random(size) * 255).astype(numpy.uint8)).save(path)
        images.append(str(path))
    colour = tmp_path / "colour.png"  # a colour image goes grey for a 1-channel net
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(numpy.uint8)).save(colour)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(DIGITS) + "\n")
    proc = run("classify", "--model", model, "--weights", weights, "--labels", str(labels), "--top-k", "3",
               "--raw-scale", "1", *images, str(colour), images[0])
    found = results(proc.stdout)
    assert list(found) == images + [str(colour)] and proc.stdout.count(images[0] + "\n") == 2  # and once more
    for top in found.values():
        assert len(top) == 3
        probs = [p for p, _, _ in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5 and all(0 <= p <= 1 for p in probs)
        assert all(label == DIGITS[k] for _, k, label in top) and len({k for _, k, _ in top}) == 3
    first = proc.stdout.split(images[0] + "\n")
    assert first[1].split(images[1])[0] == first[-1]  # same image, same answer, in another batch position
    assert "does not look like probabilities" not in proc.stderr


def identity_net(tmp_path):
    """A net whose output is its input: classify prints the preprocessed pixel values."""
    model = tmp_path / "identity.prototxt"
    model.write_text('name: "id" layer { name: "data" type: "Input" top: "data" '
                     "input_param { shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }\n")
    weights = tmp_path / "identity.caffemodel"
    caffeish.Net(str(model), caffeish.TEST).save(str(weights))
    red = tmp_path / "red.png"
    Image.new("RGB", (7, 5), (255, 0, 0)).save(red)
    return str(model), str(weights), str(red)


@pytest.mark.parametrize("mean", ["value", "npy", "npy-other-size"])
def test_preprocessing_is_pycaffes_bgr_raw_scale_mean_scale(tmp_path, mean):
    model, weights, red = identity_net(tmp_path)
    if mean == "value":
        flags = ["--mean-value", "10,20,30"]
    else:
        size = 1 if mean == "npy" else 4
        numpy.save(tmp_path / "mean.npy", numpy.array([10, 20, 30], numpy.float32).reshape(3, 1, 1)
                   * numpy.ones((3, size, size), numpy.float32))
        flags = ["--mean-file", str(tmp_path / "mean.npy")]
    proc = run("classify", "-model", model, "-weights", weights, *flags, "-scale", "0.5", "-output", "data", red)
    # red RGB (1, 0, 0) -> BGR (0, 0, 1) * 255 - (10, 20, 30) -> * 0.5
    assert proc.stdout.splitlines()[1:] == ["  112.500000  2", "  -5.000000  0", "  -10.000000  1"]
    assert "does not look like probabilities" in proc.stderr


def test_mistakes_are_clear(tmp_path, lenet):
    model, weights = lenet
    img = tmp_path / "a.png"
    Image.new("L", (28, 28)).save(img)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    cases = [
        (["--labels", str(labels), str(img)], "has 2 labels but the net gives 10 classes"),
        (["--mean-file", "m.npy", "--mean-value", "1", str(img)], "not both"),
        (["--mean-value", "1,2", str(img)], "gives 2 values; the net's input has 1 channels"),
        ([str(tmp_path / "missing.png")], "no such file"),
    ]
    for extra, message in cases:
        proc = run("classify", "--model", model, "--weights", weights, *extra, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    no_input = tmp_path / "dummy.prototxt"
    no_input.write_text('name: "d" layer { name: "x" type: "DummyData" top: "x" '
                        "dummy_data_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n")
    proc = run("classify", "--model", str(no_input), "--weights", weights, str(img), check=False)
    assert proc.returncode == 1 and "net 'd' has no Input layer: classify needs a deploy net" in proc.stderr

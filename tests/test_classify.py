"""`caffeish classify`: top-k classes of images under a deploy net, as a user runs it."""
import functools
import os
import re

import numpy
import pytest
from PIL import Image

import caffeish
from helpers import caffeish_run

run = functools.partial(caffeish_run, check=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LINE = re.compile(r"^  (\d+\.\d{6})  (\d+)(?:  (.+))?$")



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
def lenet(saved_net):
    """LeNet deploy with batch 2 (so three images take two batches) and weights saved by Net.save."""
    with open(os.path.join(ROOT, "models", "lenet", "lenet_deploy.prototxt"), encoding="utf-8") as f:
        text = f.read()
    return saved_net(text.replace("dim: 64", "dim: 2", 1), "lenet.caffemodel", seed=3)


def test_lenet_top_k_with_labels(tmp_path, lenet, random_pngs):
    model, weights = lenet
    # three grey digits, then a colour image (it goes grey for a 1-channel net)
    *images, colour = random_pngs({"digit0.png": (28, 28), "digit1.png": (40, 31), "digit2.png": (12, 20),
                                   "colour.png": (30, 30, 3)}, seed=0)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(DIGITS) + "\n")
    proc = run("classify", "--model", model, "--weights", weights, "--labels", str(labels), "--top-k", "3",
               "--raw-scale", "1", *images, colour, images[0])
    found = results(proc.stdout)
    assert list(found) == images + [colour] and proc.stdout.count(images[0] + "\n") == 2  # and once more
    for top in found.values():
        assert len(top) == 3
        probs = [p for p, _, _ in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5 and all(0 <= p <= 1 for p in probs)
        assert all(label == DIGITS[k] for _, k, label in top) and len({k for _, k, _ in top}) == 3
    first = proc.stdout.split(images[0] + "\n")
    assert first[1].split(images[1])[0] == first[-1]  # same image, same answer, in another batch position
    assert "does not look like probabilities" not in proc.stderr


@pytest.fixture
def identity_net(tmp_path, saved_net):
    """A net whose output is its input: classify prints the preprocessed pixel values."""
    model, weights = saved_net('name: "id" layer { name: "data" type: "Input" top: "data" '
                               "input_param { shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }\n", "identity.caffemodel",
                               model="identity.prototxt")
    red = tmp_path / "red.png"
    Image.new("RGB", (7, 5), (255, 0, 0)).save(red)
    return model, weights, str(red)


@pytest.mark.parametrize("mean", ["value", "npy", "npy-other-size"])
def test_preprocessing_is_pycaffes_bgr_raw_scale_mean_scale(tmp_path, mean, identity_net):
    model, weights, red = identity_net
    if mean == "value":
        flags = ["--mean-value", "10,20,30"]
    else:
        size = 1 if mean == "npy" else 4
        numpy.save(tmp_path / "mean.npy", numpy.array([10, 20, 30], numpy.float32).reshape(3, 1, 1)
                   * numpy.ones((3, size, size), numpy.float32))
        flags = ["--mean-file", str(tmp_path / "mean.npy")]
    proc = run("classify", "-model", model, "-weights", weights, *flags, "-scale", "0.5", "-blob", "data", red)
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


# -- a train/test net: the TEST-phase transform_param, as `caffeish test` sees the same images ----------------
TRAIN_TEST = """name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ crop_size: 10 mirror: true mean_file: "{mean}" scale: 0.0078125 }}
        data_param {{ source: "{db}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ crop_size: 10 mean_file: "{mean}" scale: 0.0078125 }}
        data_param {{ source: "{db}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


@pytest.fixture(scope="module")
def imageset(tmp_path_factory):
    """24 small colour PNGs of several sizes, their list, an LMDB converted with resizing, its mean,
    a train/test net reading it and fixed random weights."""
    tmp = tmp_path_factory.mktemp("imageset")
    root = tmp / "images"
    root.mkdir()
    rng = numpy.random.default_rng(11)
    lines = []
    for i in range(24):
        h, w = (int(v) for v in rng.integers(9, 20, 2))
        base = rng.random(3) * 255
        pixels = numpy.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(numpy.uint8)
        Image.fromarray(pixels).save(root / f"im{i:02d}.png")
        lines.append(f"im{i:02d}.png {i % 4}")
    listing = tmp / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    db, mean = tmp / "db", tmp / "mean.binaryproto"
    run("convert", "imageset", str(root) + "/", str(listing), str(db), "--resize-height", "12", "--resize-width", "12")
    run("compute-mean", str(db), str(mean))
    model = tmp / "train_test.prototxt"
    model.write_text(TRAIN_TEST.format(db=db, mean=mean))
    caffeish.set_random_seed(5)
    weights = tmp / "tiny.caffemodel"
    net = caffeish.Net(str(model), caffeish.TEST)
    net.save(str(weights))
    net.close()
    return {"root": str(root), "list": str(listing), "model": str(model), "weights": str(weights), "db": str(db),
            "mean": str(mean), "labels": numpy.arange(24) % 4}


def softmax(x):
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def lmdb_scores(setup):
    """The TEST net's scores for each image of the LMDB, read by its Data layer, batch by batch."""
    net = caffeish.Net(setup["model"], setup["weights"], caffeish.TEST)
    try:
        scores, labels = [], []
        for _ in range(3):
            net.forward()
            scores.append(numpy.array(net.blobs["ip"].data))
            labels.append(numpy.array(net.blobs["label"].data))
        return numpy.concatenate(scores), numpy.concatenate(labels).astype(int)
    finally:
        net.close()


def test_classify_agrees_with_test_on_the_converted_lmdb(tmp_path, imageset):
    s = imageset
    test = run("test", "--model", s["model"], "--weights", s["weights"], "--iterations", "3")
    accuracy = float(re.findall(r"\] accuracy = ([0-9.e+-]+)", test.stderr)[-1])
    out = tmp_path / "probs.npy"
    proc = run("classify", "--model", s["model"], "--weights", s["weights"], "--list", s["list"], "--root", s["root"],
               "--resize-height", "12", "--resize-width", "12", "--output", str(out), "--top-k", "2")
    probs = numpy.load(out)
    assert probs.shape == (24, 4) and probs.dtype == numpy.float32
    scores, labels = lmdb_scores(s)
    numpy.testing.assert_array_equal(labels, s["labels"])  # the LMDB holds the list's images in order
    numpy.testing.assert_allclose(probs, softmax(scores.astype(numpy.float64)), rtol=1e-5, atol=1e-6)
    predicted = probs.argmax(1)
    numpy.testing.assert_array_equal(predicted, scores.argmax(1))  # image by image, the same top-1
    assert len(set(predicted.tolist())) > 1  # the weights tell the images apart
    assert numpy.mean(predicted == labels) == pytest.approx(accuracy, abs=1e-6)
    logged = float(re.search(r"Accuracy: top-1 ([0-9.e+-]+) \((\d+) of 24\)", proc.stderr).group(1))
    assert logged == pytest.approx(accuracy, abs=1e-5)
    found = results(proc.stdout)
    assert list(found) == [os.path.join(s["root"], f"im{i:02d}.png") for i in range(24)]
    assert [top[0][1] for top in found.values()] == predicted.tolist()


def test_classify_oversample_averages_ten_crops_of_the_transformed_image(tmp_path, imageset):
    s = imageset
    out = tmp_path / "ten.npy"
    images = [os.path.join(s["root"], f"im{i:02d}.png") for i in (0, 5, 7)]
    run("classify", "--model", s["model"], "--weights", s["weights"], "--resize-height", "12", "--resize-width", "12",
        "--oversample", "--output", str(out), *images)
    got = numpy.load(out)
    mean = caffeish.io.read_mean_binaryproto(s["mean"])
    net = caffeish.Net(s["model"], s["weights"], caffeish.TEST)
    try:
        for image, row in zip(images, got):
            x = (caffeish.io.read_image_chw_bgr(image, True, 12, 12).astype(numpy.float32) - mean) * 0.0078125
            crops = [x[:, a:a + 10, b:b + 10] for a, b in [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]]
            crops += [c[:, :, ::-1] for c in crops]
            ip = [numpy.array(net.forward(start="conv", end="ip", **{"data": c[None]})["ip"])[0] for c in crops]
            numpy.testing.assert_allclose(row, softmax(numpy.array(ip, numpy.float64)).mean(0), rtol=1e-5, atol=1e-6)
    finally:
        net.close()


def write_deploy(path, train_test):
    """The deploy version of the train/test net, by hand: Input 5 x 3 x 10 x 10, ..., Softmax."""
    layers = open(train_test, encoding="utf-8").read().split("layer {")
    keep = [part for part in layers[1:] if '"Data"' not in part and '"Accuracy"' not in part
            and '"SoftmaxWithLoss"' not in part]
    path.write_text('name: "tiny"\nlayer { name: "data" type: "Input" top: "data" '
                    "input_param { shape { dim: 5 dim: 3 dim: 10 dim: 10 } } }\n"
                    + "".join("layer {" + part for part in keep)
                    + 'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')
    return str(path)


def test_transform_from_feeds_a_deploy_net_the_same(tmp_path, imageset):
    s = imageset
    deploy = write_deploy(tmp_path / "deploy.prototxt", s["model"])
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    common = ["--weights", s["weights"], "--list", s["list"], "--root", s["root"], "--resize-height", "12",
              "--resize-width", "12"]
    run("classify", "--model", s["model"], *common, "--output", str(a))
    run("classify", "--model", deploy, "--transform-from", s["model"], *common, "--output", str(b))
    numpy.testing.assert_allclose(numpy.load(a), numpy.load(b), rtol=1e-5, atol=1e-7)


def test_train_test_mistakes_are_clear(tmp_path, imageset):
    s = imageset
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    out = tmp_path / "never.npy"
    good = os.path.join(s["root"], "im00.png")
    resize = ["--resize-height", "12", "--resize-width", "12"]
    cases = [
        ([good, str(bad), "--output", str(out), *resize], "bad.png: cannot decode the image"),
        ([good, "--mean-value", "3", *resize], "--mean-value applies to deploy nets"),
        ([good, "--oversample", "--center-only"], "not both"),
        ([good, "--resize-height", "12"], "give both --resize-height and --resize-width"),
        ([good], "im00.png: the mean file's image has shape (3, 12, 12)"),  # not resized as the LMDB was
    ]
    for extra, message in cases:
        proc = run("classify", "--model", s["model"], "--weights", s["weights"], *extra, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_deploy_net_options_are_pycaffes_classifier(tmp_path, imageset):
    from caffeish.classifier import Classifier
    s = imageset
    deploy = write_deploy(tmp_path / "deploy.prototxt", s["model"])
    images = [os.path.join(s["root"], f"im{i:02d}.png") for i in (1, 2, 3)]
    loaded = [caffeish.io.load_image(p) for p in images]
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    run("classify", "--model", deploy, "--weights", s["weights"], "--images-dim", "12,14", "--oversample",
        "--mean-value", "100,110,120", "--raw-scale", "255", "--input-scale", "0.0078125", "--output", str(a), *images)
    run("classify", "--model", deploy, "--weights", s["weights"], "--center-only", "--channel-swap", "0,1,2",
        "--images-dim", "11,11", "--output", str(b), *images)
    clf = Classifier(deploy, s["weights"], image_dims=(12, 14), mean=numpy.array([100, 110, 120]), raw_scale=255,
                     input_scale=0.0078125, channel_swap=(2, 1, 0))
    numpy.testing.assert_allclose(numpy.load(a), clf.predict(loaded), rtol=1e-5, atol=1e-7)
    clf = Classifier(deploy, s["weights"], image_dims=(11, 11), raw_scale=255, channel_swap=(0, 1, 2))
    numpy.testing.assert_allclose(numpy.load(b), clf.predict(loaded, oversample=False), rtol=1e-5, atol=1e-7)

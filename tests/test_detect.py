"""pycaffe's Detector and `caffeish detect`: windows of images scored by a deploy net."""
import functools
import csv
import os

import numpy
import pytest

from caffeish import io as cio
from caffeish.detector import Detector
from caffeish.errors import CaffeishError
from helpers import caffeish_run

run = functools.partial(caffeish_run, check=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = """name: "win"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = numpy.array([100.0, 110.0, 120.0])  # BGR



@pytest.fixture
def setup(saved_net, random_pngs):
    model, weights = saved_net(DEPLOY, "win.caffemodel", seed=2)
    paths = random_pngs({"a.png": (20, 24, 3), "b c.png": (16, 16, 3)}, seed=4)
    return model, weights, paths


def scores(net, image_hwc):
    """The net's prob for one window, preprocessed as the Detector does, written out."""
    x = cio.resize_image(image_hwc, (8, 8)).transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None]
    return numpy.array(net.forward(data=x[None].astype(numpy.float32))["prob"])[0]


def test_detect_windows_warps_each_window(setup):
    model, weights, (a, b) = setup
    det = Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows_a = numpy.array([[2, 3, 12, 15], [0, 0, 8, 8], [5, 5, 20, 24]])
    windows_b = numpy.array([[1, 2, 9, 16]])
    found = det.detect_windows([(a, windows_a), (b, windows_b)])
    assert [d["filename"] for d in found] == [a, a, a, b]
    image_a, image_b = cio.load_image(a), cio.load_image(b)
    want = [image_a[2:12, 3:15], image_a[0:8, 0:8], image_a[5:20, 5:24], image_b[1:9, 2:16]]
    for d, window, crop in zip(found, list(windows_a) + list(windows_b), want):
        numpy.testing.assert_array_equal(d["window"], window)
        numpy.testing.assert_allclose(d["prediction"], scores(det, crop), rtol=1e-5, atol=1e-7)
    with pytest.raises(CaffeishError, match="a.png: the window .* holds no pixels"):
        det.detect_windows([(a, [numpy.array([5, 5, 5, 9])])])
    with pytest.raises(CaffeishError, match="selective search proposals are not available"):
        det.detect_selective_search([a])


def test_context_pad_grows_the_window_and_pads_with_the_mean(setup):
    model, weights, (_, b) = setup
    det = Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=2)
    image = cio.load_image(b)  # 16 x 16
    # scale 8 / (8 - 2 * 2) = 2: the window 4..8 (centre 6.5, half 2.5) grows to round(1.5 .. 11.5) = 2 .. 12
    numpy.testing.assert_allclose(det.crop(image, numpy.array([4, 4, 8, 8])),
                                  cio.resize_image(image[2:12, 2:12], (8, 8)), atol=1e-6)
    # at the corner the grown box -2 .. 8 leaves the image: 1 row and column of mean padding (round(2 * 8 / 11)),
    # then the clipped box 0 .. 8 resized to round(9 * 8 / 11) = 7 pixels
    crop = det.crop(image, numpy.array([0, 0, 4, 4]))
    mean_rgb01 = MEAN[::-1] / 255
    numpy.testing.assert_allclose(crop[0], numpy.broadcast_to(mean_rgb01, (8, 3)), atol=1e-6)
    numpy.testing.assert_allclose(crop[:, 0], numpy.broadcast_to(mean_rgb01, (8, 3)), atol=1e-6)
    numpy.testing.assert_allclose(crop[1:, 1:], cio.resize_image(image[0:8, 0:8], (7, 7)), atol=1e-6)
    with pytest.raises(CaffeishError, match="context_pad 4 leaves no room"):
        Detector(model, weights, context_pad=4)


def test_detect_cli_csv_and_list_in_input_order(setup, tmp_path):
    model, weights, (a, b) = setup
    numpy.save(tmp_path / "mean.npy", MEAN.reshape(3, 1, 1) * numpy.ones((3, 4, 4)))
    csv_in = tmp_path / "windows.csv"
    csv_in.write_text(f"xmin,filename,ymin,ymax,xmax,note\n3,{a},2,12,15,x\n2,{b},1,9,16,y\n0,{a},0,8,8,z\n")
    list_in = tmp_path / "windows.txt"
    list_in.write_text(f"# filename ymin xmin ymax xmax\n{a} 2 3 12 15\n\n{b} 1 2 9 16\n{a} 0 0 8 8\n")
    flags = ["--model", model, "--weights", weights, "--mean-file", str(tmp_path / "mean.npy"), "--context-pad", "0"]
    run("detect", str(csv_in), str(tmp_path / "out.csv"), *flags)
    run("detect", str(list_in), str(tmp_path / "out.npy"), *flags)
    det = Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    image_a, image_b = cio.load_image(a), cio.load_image(b)
    want = numpy.array([scores(det, image_a[2:12, 3:15]), scores(det, image_b[1:9, 2:16]),
                        scores(det, image_a[0:8, 0:8])])
    numpy.testing.assert_allclose(numpy.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-7)
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "ymin", "xmin", "ymax", "xmax"] + [f"class{k}" for k in range(5)]
    assert [r[:5] for r in rows[1:]] == [[a, "2", "3", "12", "15"], [b, "1", "2", "9", "16"], [a, "0", "0", "8", "8"]]
    numpy.testing.assert_allclose(numpy.array([[float(v) for v in r[5:]] for r in rows[1:]]), want, rtol=1e-5)


def test_detect_cli_mistakes_are_clear(setup, tmp_path):
    model, weights, (a, _) = setup
    flags = ["--model", model, "--weights", weights, "--context-pad", "2"]
    good = tmp_path / "good.txt"
    good.write_text(f"{a} 0 0 8 8\n")
    bad_line = tmp_path / "bad.txt"
    bad_line.write_text(f"{a} 0 0 8\n")
    missing = tmp_path / "missing.txt"
    missing.write_text(f"{tmp_path / 'nope.png'} 0 0 8 8\n")
    no_header = tmp_path / "w.csv"
    no_header.write_text(f"filename,ymin,xmin\n{a},0,0\n")
    out = tmp_path / "out.npy"
    cases = [
        ([str(bad_line), str(out)], "bad.txt:1: expected 'filename ymin xmin ymax xmax'"),
        ([str(missing), str(out)], "nope.png: no such file"),
        ([str(no_header), str(out)], "it lacks ymax, xmax"),
        ([str(good), str(tmp_path / "out.h5")], "OUTPUT must be a .csv or .npy file"),
        ([str(good), str(out), "--crop-mode", "selective_search"], "selective search proposals are not available"),
    ]
    for extra, message in cases:
        proc = run("detect", *extra, *flags, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert not out.exists()

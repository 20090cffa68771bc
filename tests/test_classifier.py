"""A pycaffe classification script, run with ``import caffeish as caffe``; and pycaffe's Classifier."""
import numpy
import pytest

import caffeish as caffe
from caffeish.classifier import Classifier
from caffeish.errors import CaffeishError

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = numpy.array([100.0, 110.0, 120.0])  # BGR, as the net sees it


@pytest.fixture
def tiny(saved_net, random_pngs):
    model, weights = saved_net(DEPLOY, "tiny.caffemodel", seed=7)
    paths = random_pngs({f"im{i}.png": size + (3,) for i, size in enumerate([(8, 8), (12, 9), (5, 16), (8, 8), (20, 20)])},
                        seed=0)
    return model, weights, paths


def one_by_one(net, data):
    """The net's prob for each item, one forward of batch 1 each."""
    rows = []
    for item in data:
        rows.append(numpy.array(net.forward(data=item[None])["prob"])[0])
    return numpy.array(rows)


def test_pycaffe_script_transformer_forward_all_top5(tiny):
    model, weights, paths = tiny
    net = caffe.Net(model, weights, caffe.TEST)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", MEAN)
    images = [caffe.io.load_image(p) for p in paths]
    data = numpy.array([transformer.preprocess("data", im) for im in images])
    prob = net.forward_all(data=data)["prob"]  # 5 images over batches of 4: the last batch is padded
    assert prob.shape == (5, 7) and prob.dtype == numpy.float32
    top5 = prob.argsort(axis=1)[:, ::-1][:, :5]
    # the same numbers written out: resize, HWC -> CHW, RGB -> BGR, * 255, - mean
    want = numpy.array([(caffe.io.resize_image(im, (8, 8)).transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None])
                        for im in images], dtype=numpy.float32)
    numpy.testing.assert_allclose(data, want, rtol=1e-6, atol=1e-4)
    expected = one_by_one(net, want)
    numpy.testing.assert_allclose(prob, expected, rtol=1e-5, atol=1e-7)
    numpy.testing.assert_array_equal(top5, expected.argsort(axis=1)[:, ::-1][:, :5])


def test_classifier_predict_centre_and_oversample(tiny):
    model, weights, paths = tiny
    clf = Classifier(model, weights, image_dims=(10, 11), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    assert isinstance(clf, caffe.Net) and list(clf.crop_dims) == [8, 8]
    images = [caffe.io.load_image(p) for p in paths]
    resized = numpy.array([caffe.io.resize_image(im, (10, 11)) for im in images])

    def prep(hwc):
        return (hwc.transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None]).astype(numpy.float32)

    centre = clf.predict(images, oversample=False)
    # centre crop of a 10 x 11 image: rows int(5 - 4) = 1 .. 9, columns int(5.5 - 4) = 1 .. 9
    want = one_by_one(clf, numpy.array([prep(im[1:9, 1:9]) for im in resized]))
    assert centre.shape == (5, 7)
    numpy.testing.assert_allclose(centre, want, rtol=1e-5, atol=1e-7)

    ten = clf.predict(images)  # oversample=True, pycaffe's default
    crops = caffe.io.oversample(resized, (8, 8))
    want = one_by_one(clf, numpy.array([prep(c) for c in crops])).reshape(5, 10, 7).mean(1)
    assert ten.shape == (5, 7)
    numpy.testing.assert_allclose(ten, want, rtol=1e-5, atol=1e-7)
    numpy.testing.assert_allclose(ten.sum(1), 1, rtol=1e-5)


def test_classifier_defaults_and_mistakes(tiny):
    model, weights, paths = tiny
    clf = Classifier(model, weights)  # image_dims: the input size; no mean, no scaling
    assert tuple(clf.image_dims) == (8, 8)
    image = caffe.io.load_image(paths[0])
    out = clf.predict([image], oversample=False)
    numpy.testing.assert_allclose(out, one_by_one(clf, image.transpose(2, 0, 1)[None]), rtol=1e-5, atol=1e-7)
    with pytest.raises(CaffeishError, match="at least the net's input size"):
        Classifier(model, weights, image_dims=(6, 6))
    with pytest.raises(CaffeishError, match="mean of shape \\(3, 5, 5\\) does not fit input 'data'"):
        Classifier(model, weights, mean=numpy.zeros((3, 5, 5)))

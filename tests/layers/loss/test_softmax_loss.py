import math

import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FLT_MIN = 1.17549435e-38


def layer_for(extra="", dtype=numpy.float64):
    return make_layer(f'type: "SoftmaxWithLoss" {extra}', dtype=dtype)


def reference(x, labels, axis=1, ignore=None, mode="VALID"):
    """Caffe's loop: -sum log(max(p, FLT_MIN)) over counted labels / normalizer."""
    outer = int(numpy.prod(x.shape[:axis]))
    C = x.shape[axis]
    inner = int(numpy.prod(x.shape[axis + 1:]))
    xs = x.reshape(outer, C, inner)
    lab = labels.reshape(outer, inner)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            label = int(lab[i, j])
            if ignore is not None and label == ignore:
                continue
            m = max(xs[i, :, j])
            denom = sum(math.exp(v - m) for v in xs[i, :, j])
            p = math.exp(xs[i, label, j] - m) / denom
            loss -= math.log(max(p, FLT_MIN))
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return loss / max(1, norm)


def labels_blob(shape, classes, seed=0, ignore=None, frac_ignored=0.3):
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, classes, size=shape).astype(float)
    if ignore is not None:
        labels[rng.random(shape) < frac_ignored] = ignore
    return blob(labels)


@checks_forward("SoftmaxWithLoss")
@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 2, -1])
def test_softmax_loss_forward(mode, ignore):
    extra = f"loss_param {{ normalization: {mode} "
    extra += f"ignore_label: {ignore} }}" if ignore is not None else "}"
    layer = layer_for(extra)
    x = blob((4, 5, 2, 3), low=-3, high=3)
    labels = labels_blob((4, 1, 2, 3), 5, ignore=ignore)
    top = empty()
    layer.setup([x, labels], top)
    loss = layer.Forward([x, labels], top)
    expected = reference(x.data, labels.data, ignore=ignore, mode=mode)
    assert top[0].shape == ()
    numpy.testing.assert_allclose(float(top[0].data), expected, rtol=1e-12)
    numpy.testing.assert_allclose(loss, expected, rtol=1e-12)  # default loss weight 1


@pytest.mark.parametrize("normalize,mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_deprecated_normalize(normalize, mode):
    x = blob((3, 4, 5))
    labels = labels_blob((3, 5), 4, ignore=1)
    layer = layer_for(f"loss_param {{ normalize: {normalize} ignore_label: 1 }}")
    top = empty()
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    numpy.testing.assert_allclose(float(top[0].data), reference(x.data, labels.data, ignore=1, mode=mode))
    # An explicit normalization wins over the deprecated flag.
    layer = layer_for(f"loss_param {{ normalize: {normalize} normalization: FULL ignore_label: 1 }}")
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    numpy.testing.assert_allclose(float(top[0].data), reference(x.data, labels.data, ignore=1, mode="FULL"))


def test_softmax_loss_axis_and_prob_top():
    x = blob((2, 3, 4), low=-2, high=2)
    labels = labels_blob((2, 3), 4)
    layer = layer_for("softmax_param { axis: 2 }")
    top = empty(2)
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    numpy.testing.assert_allclose(float(top[0].data), reference(x.data, labels.data, axis=2))
    e = numpy.exp(x.data - x.data.max(axis=2, keepdims=True))
    numpy.testing.assert_allclose(top[1].data, e / e.sum(axis=2, keepdims=True))
    assert layer.loss_weights == [1.0, 0.0]


def test_softmax_loss_all_ignored_and_tiny_probability():
    layer = layer_for("loss_param { ignore_label: 0 }")
    x = blob(numpy.array([[0.0, 1.0], [2.0, 3.0]]))
    labels = blob(numpy.zeros(2))
    top = empty()
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    assert float(top[0].data) == 0.0
    # p underflows to 0: the log is clamped at FLT_MIN, as Caffe does.
    layer = layer_for()
    x = blob(numpy.array([[0.0, 1000.0]]))
    labels = blob(numpy.zeros(1))
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    numpy.testing.assert_allclose(float(top[0].data), -math.log(FLT_MIN), rtol=1e-6)


def test_softmax_loss_backward_scales_by_loss_weight_and_zeroes_ignored():
    x = blob((3, 4))
    labels = blob(numpy.array([1.0, 255.0, 3.0]))
    layer = layer_for("loss_param { ignore_label: 255 normalization: VALID }")
    top = empty()
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    top[0].diff[...] = 0.5
    layer.backward(top, [True, False], [x, labels])
    e = numpy.exp(x.data - x.data.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    expected = p.copy()
    expected[0, 1] -= 1
    expected[2, 3] -= 1
    expected[1] = 0
    numpy.testing.assert_allclose(x.diff, expected * 0.5 / 2)
    with pytest.raises(CaffeishError, match="label"):
        layer.backward(top, [True, True], [x, labels])


@pytest.mark.parametrize("bad", [5.0, -1.0])
def test_softmax_loss_label_out_of_range(bad):
    layer = layer_for()
    x = blob((3, 5))
    labels = blob(numpy.array([0.0, bad, 1.0]))
    top = empty()
    layer.setup([x, labels], top)
    with pytest.raises(CaffeishError, match=f"label value {bad:g} "):
        layer.Forward([x, labels], top)


def test_softmax_loss_label_count_mismatch():
    with pytest.raises(CaffeishError, match="number of labels"):
        layer_for().setup([blob((2, 3, 4)), blob(numpy.zeros(2))], empty())


def test_softmax_loss_float32():
    layer = layer_for(dtype=numpy.float32)
    x = blob((4, 3), dtype=numpy.float32)
    labels = blob(numpy.array([0.0, 1.0, 2.0, 1.0]), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x, labels], top)
    layer.Forward([x, labels], top)
    assert top[0].data.dtype == numpy.float32
    numpy.testing.assert_allclose(float(top[0].data), reference(x.data.astype(float), labels.data), rtol=1e-5)


@checks_gradient("SoftmaxWithLoss")
@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 1 normalization: FULL }",
                                   "loss_param { normalization: NONE } softmax_param { axis: 2 }",
                                   "loss_param { normalize: false }"])
def test_softmax_loss_gradient(extra):
    x = blob((2, 3, 3), low=-2, high=2)
    labels = labels_blob((2, 3), 3, seed=4)   # (2, 3) labels fit axis 1 and axis 2 alike
    assert (labels.data == 1).any()           # so the ignore_label case does ignore some
    check_gradient(layer_for(extra), [x, labels], empty(), check_bottom=[0])

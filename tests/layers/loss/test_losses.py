import math

import numpy
import pytest

from caffeish import CaffeishError, caffe_pb2
from caffeish.prototxt import write_binary_proto
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

LOG_THRESHOLD = 1e-20


def run(layer, bottom, n_top=1):
    top = empty(n_top)
    layer.setup(bottom, top)
    loss = layer.Forward(bottom, top)
    return top, loss


def int_labels(n, classes, seed=0, ignore=None, frac=0.3):
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n).astype(float)
    if ignore is not None:
        labels[rng.random(n) < frac] = ignore
    return labels


# -- SigmoidCrossEntropyLoss ------------------------------------------------------------------------------------

def sigmoid_ce_reference(x, t, ignore=None, mode="BATCH_SIZE"):
    loss, count = 0.0, 0
    xf, tf = x.ravel(), t.ravel()
    for i in range(xf.size):
        if ignore is not None and int(tf[i]) == ignore:
            continue
        p = 1.0 / (1.0 + math.exp(-xf[i]))
        loss -= tf[i] * math.log(p) + (1 - tf[i]) * math.log(1 - p)
        count += 1
    norm = {"FULL": xf.size, "VALID": count, "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    return loss / max(1, norm)


@checks_forward("SigmoidCrossEntropyLoss")
@pytest.mark.parametrize("extra,ignore,mode", [
    ("", None, "BATCH_SIZE"),                                     # Caffe's default for this layer
    ("loss_param { normalize: true }", None, "VALID"),
    ("loss_param { normalize: false }", None, "BATCH_SIZE"),
    ("loss_param { ignore_label: -1 normalization: VALID }", -1, "VALID"),
    ("loss_param { ignore_label: -1 normalization: FULL normalize: true }", -1, "FULL"),
    ("loss_param { ignore_label: -1 normalization: NONE }", -1, "NONE"),
])
def test_sigmoid_cross_entropy_forward(extra, ignore, mode):
    x = blob((3, 2, 2), low=-4, high=4)
    rng = numpy.random.default_rng(5)
    t = rng.random((3, 4))
    if ignore is not None:
        t[rng.random((3, 4)) < 0.3] = ignore
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" {extra}')
    top, loss = run(layer, [x, blob(t)])
    expected = sigmoid_ce_reference(x.data, t, ignore, mode)
    numpy.testing.assert_allclose(float(top[0].data), expected, rtol=1e-12)
    numpy.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_sigmoid_cross_entropy_is_stable_for_large_scores():
    x = blob(numpy.array([[1000.0, -1000.0]]))
    t = blob(numpy.array([[1.0, 0.0]]))
    top, _ = run(make_layer('type: "SigmoidCrossEntropyLoss"'), [x, t])
    assert float(top[0].data) == 0.0
    t = blob(numpy.array([[0.0, 1.0]]))
    top, _ = run(make_layer('type: "SigmoidCrossEntropyLoss"'), [x, t])
    numpy.testing.assert_allclose(float(top[0].data), 2000.0)


def test_sigmoid_cross_entropy_backward_and_errors():
    x = blob((2, 3))
    t = numpy.array([[1.0, 0.0, 255.0], [0.5, 255.0, 1.0]])
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 255 normalization: VALID }')
    top, _ = run(layer, [x, blob(t)])
    top[0].diff[...] = 2.0
    layer.backward(top, [True, False], [x, blob(t)])
    expected = (1 / (1 + numpy.exp(-x.data)) - t) * (t != 255) * 2.0 / 4
    numpy.testing.assert_allclose(x.diff, expected)
    with pytest.raises(CaffeishError, match="label"):
        layer.backward(top, [True, True], [x, blob(t)])
    with pytest.raises(CaffeishError, match="same count"):
        make_layer('type: "SigmoidCrossEntropyLoss"').setup([blob((2, 3)), blob((2, 4))], empty())


@checks_gradient("SigmoidCrossEntropyLoss")
@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: -1 normalization: VALID }"])
def test_sigmoid_cross_entropy_gradient(extra):
    x = blob((2, 3, 2), low=-3, high=3)
    t = numpy.random.default_rng(2).random((2, 6))
    t[0, 1] = t[1, 4] = -1
    check_gradient(make_layer(f'type: "SigmoidCrossEntropyLoss" {extra}'), [x, blob(t)], empty(), check_bottom=[0])


# -- HingeLoss ---------------------------------------------------------------------------------------------------

def hinge_reference(x, labels, norm):
    num = x.shape[0]
    flat = x.reshape(num, -1)
    loss = 0.0
    for i in range(num):
        for j in range(flat.shape[1]):
            t = -1.0 if j == int(labels[i]) else 1.0
            m = max(0.0, 1 + t * flat[i, j])
            loss += m if norm == "L1" else m * m
    return loss / num


@checks_forward("HingeLoss")
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_forward(norm):
    x = blob((4, 5), low=-2, high=2)
    labels = int_labels(4, 5)
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    top, _ = run(layer, [x, blob(labels)])
    numpy.testing.assert_allclose(float(top[0].data), hinge_reference(x.data, labels, norm), rtol=1e-12)


def test_hinge_loss_rejects_bad_labels():
    layer = make_layer('type: "HingeLoss"')
    top = empty()
    x, labels = blob((3, 4)), blob(numpy.array([0.0, 4.0, 1.0]))
    layer.setup([x, labels], top)
    with pytest.raises(CaffeishError, match="label value 4"):
        layer.Forward([x, labels], top)
    with pytest.raises(CaffeishError, match="one label per example"):
        layer.Forward([x, blob(numpy.zeros((3, 2)))], top)


@checks_gradient("HingeLoss")
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_gradient(norm):
    x = blob((3, 4), low=-2, high=2, rng=numpy.random.default_rng(3))
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    # Skip the hinge's kink: 1 + t x == 0 means |x| == 1.
    check_gradient(layer, [x, blob(int_labels(3, 4, seed=1))], empty(), check_bottom=[0], kink=1.0, kink_range=0.01)


# -- InfogainLoss ------------------------------------------------------------------------------------------------

def infogain_reference(x, labels, H, axis=1, ignore=None, mode="VALID"):
    outer = int(numpy.prod(x.shape[:axis]))
    C = x.shape[axis]
    inner = int(numpy.prod(x.shape[axis + 1:]))
    xs = numpy.moveaxis(x.reshape(outer, C, inner), 1, 2)
    lab = labels.reshape(outer, inner)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            label = int(lab[i, j])
            if ignore is not None and label == ignore:
                continue
            e = numpy.exp(xs[i, j] - xs[i, j].max())
            p = e / e.sum()
            for k in range(C):
                loss -= H[label, k] * math.log(max(p[k], LOG_THRESHOLD))
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return loss / max(1, norm)


def infogain_matrix(C, seed=0):
    return numpy.eye(C) + 0.3 * numpy.random.default_rng(seed).random((C, C))


@checks_forward("InfogainLoss")
@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
def test_infogain_loss_forward_with_source_file(tmp_path, mode):
    H = infogain_matrix(4)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 1, 4, 4])
    proto.data.extend(H.ravel().tolist())
    path = tmp_path / "H.binaryproto"
    write_binary_proto(str(path), proto)
    x = blob((3, 4, 2), low=-2, high=2)
    labels = int_labels(6, 4, ignore=-1).reshape(3, 2)
    layer = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }} '
                       f'loss_param {{ ignore_label: -1 normalization: {mode} }}')
    top, _ = run(layer, [x, blob(labels)], n_top=2)
    H32 = H.astype(numpy.float32).astype(float)   # the file stores floats
    numpy.testing.assert_allclose(float(top[0].data), infogain_reference(x.data, labels, H32, ignore=-1, mode=mode),
                                  rtol=1e-12)
    e = numpy.exp(x.data - x.data.max(axis=1, keepdims=True))
    numpy.testing.assert_allclose(top[1].data, e / e.sum(axis=1, keepdims=True))


def test_infogain_loss_matrix_bottom_and_axis():
    x = blob((2, 3, 5), low=-2, high=2)
    labels = int_labels(6, 5, seed=3).reshape(2, 3)
    H = infogain_matrix(5, seed=1)
    layer = make_layer('type: "InfogainLoss" infogain_loss_param { axis: 2 }')
    top, _ = run(layer, [x, blob(labels), blob(H)])
    numpy.testing.assert_allclose(float(top[0].data), infogain_reference(x.data, labels, H, axis=2), rtol=1e-12)


def test_infogain_loss_errors():
    x, labels = blob((2, 3)), blob(numpy.array([0.0, 2.0]))
    with pytest.raises(CaffeishError, match="infogain matrix"):
        make_layer('type: "InfogainLoss"').setup([x, labels], empty())
    with pytest.raises(CaffeishError, match="3 x 3"):
        make_layer('type: "InfogainLoss"').setup([x, labels, blob(numpy.eye(2))], empty())
    with pytest.raises(CaffeishError, match="normalize is deprecated"):
        make_layer('type: "InfogainLoss" loss_param { normalize: true }').setup([x, labels, blob(numpy.eye(3))],
                                                                                empty())
    layer = make_layer('type: "InfogainLoss"')
    top, _ = run(layer, [x, labels, blob(numpy.eye(3))])
    with pytest.raises(CaffeishError, match="infogain matrix inputs"):
        layer.backward(top, [True, False, True], [x, labels, blob(numpy.eye(3))])
    with pytest.raises(CaffeishError, match="label inputs"):
        layer.backward(top, [True, True, False], [x, labels, blob(numpy.eye(3))])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1) and not layer.allow_force_backward(2)


@checks_gradient("InfogainLoss")
@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 1 normalization: FULL }",
                                   "infogain_loss_param { axis: 2 } loss_param { normalization: BATCH_SIZE }"])
def test_infogain_loss_gradient(extra):
    x = blob((2, 3, 3), low=-2, high=2)
    labels = blob(int_labels(6, 3, seed=4).reshape(2, 3))
    layer = make_layer(f'type: "InfogainLoss" {extra}')
    check_gradient(layer, [x, labels, blob(infogain_matrix(3))], empty(), check_bottom=[0])


# -- MultinomialLogisticLoss -------------------------------------------------------------------------------------

@checks_forward("MultinomialLogisticLoss")
def test_multinomial_logistic_loss_forward():
    p = numpy.random.default_rng(0).random((4, 3))
    p /= p.sum(axis=1, keepdims=True)
    p[2, 1] = 0.0                      # clamped at 1e-20
    labels = numpy.array([0.0, 2.0, 1.0, 1.0])
    top, loss = run(make_layer('type: "MultinomialLogisticLoss"'), [blob(p), blob(labels)])
    expected = -sum(math.log(max(p[i, int(labels[i])], LOG_THRESHOLD)) for i in range(4)) / 4
    numpy.testing.assert_allclose(float(top[0].data), expected, rtol=1e-12)
    numpy.testing.assert_allclose(loss, expected, rtol=1e-12)


@checks_gradient("MultinomialLogisticLoss")
def test_multinomial_logistic_loss_gradient():
    p = numpy.random.default_rng(1).uniform(0.2, 1.0, (3, 4))
    labels = blob(numpy.array([3.0, 0.0, 1.0]))
    check_gradient(make_layer('type: "MultinomialLogisticLoss"'), [blob(p), labels], empty(), check_bottom=[0])


# -- ContrastiveLoss ---------------------------------------------------------------------------------------------

def contrastive_reference(a, b, y, margin, legacy):
    loss = 0.0
    for i in range(a.shape[0]):
        d2 = float(((a[i] - b[i]) ** 2).sum())
        if int(y[i]):
            loss += d2
        elif legacy:
            loss += max(margin - d2, 0.0)
        else:
            loss += max(margin - math.sqrt(d2), 0.0) ** 2
    return loss / a.shape[0] / 2


@checks_forward("ContrastiveLoss")
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_forward(legacy):
    rng = numpy.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (6, 3)), rng.uniform(-1, 1, (6, 3))
    y = numpy.array([1.0, 0.0, 0.0, 1.0, 0.7, 0.0])   # int(0.7) == 0: dissimilar, as in Caffe
    layer = make_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 1.5 '
                       f'legacy_version: {str(legacy).lower()} }}')
    top, _ = run(layer, [blob(a.reshape(6, 3, 1, 1)), blob(b.reshape(6, 3, 1, 1)), blob(y)])
    numpy.testing.assert_allclose(float(top[0].data), contrastive_reference(a, b, y, 1.5, legacy), rtol=1e-12)


def test_contrastive_loss_shapes_and_label_backward():
    layer = make_layer('type: "ContrastiveLoss"')
    with pytest.raises(CaffeishError, match="same C"):
        layer.setup([blob((2, 3)), blob((2, 4)), blob(numpy.ones(2))], empty())
    with pytest.raises(CaffeishError, match="one similarity label"):
        make_layer('type: "ContrastiveLoss"').setup([blob((2, 3)), blob((2, 3)), blob(numpy.ones(3))], empty())
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1) and not layer.allow_force_backward(2)


@checks_gradient("ContrastiveLoss")
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_gradient(legacy):
    rng = numpy.random.default_rng(2)
    a, b = blob(rng.uniform(-1, 1, (4, 3))), blob(rng.uniform(-1, 1, (4, 3)))
    y = blob(numpy.array([1.0, 0.0, 0.0, 1.0]))
    layer = make_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 2.0 '
                       f'legacy_version: {str(legacy).lower()} }}')
    # Caffe's dissimilar gradient divides by (d + 1e-4), not d: close to, not exactly, the true gradient.
    check_gradient(layer, [a, b, y], empty(), check_bottom=[0, 1], threshold=2e-3)

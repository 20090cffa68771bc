import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import checks_forward
from helpers import blob, empty, make_layer


def reference(scores, labels, top_k=1, axis=1, ignore=None):
    """Caffe's loop: a hit when fewer than top_k other classes score >= the label's score."""
    outer = int(numpy.prod(scores.shape[:axis]))
    C = scores.shape[axis]
    inner = int(numpy.prod(scores.shape[axis + 1:]))
    s = scores.reshape(outer, C, inner)
    lab = labels.reshape(outer, inner)
    hits, count = 0, 0
    per_hits, per_nums = [0] * C, [0] * C
    for i in range(outer):
        for j in range(inner):
            label = int(lab[i, j])
            if ignore is not None and label == ignore:
                continue
            per_nums[label] += 1
            better = sum(1 for k in range(C) if k != label and s[i, k, j] >= s[i, label, j])
            if better < top_k:
                hits += 1
                per_hits[label] += 1
            count += 1
    per_class = [h / n if n else 0.0 for h, n in zip(per_hits, per_nums)]
    return (hits / count if count else 0.0), per_class


def accuracy(extra=""):
    return make_layer(f'type: "Accuracy" accuracy_param {{ {extra} }}')


@checks_forward("Accuracy")
@pytest.mark.parametrize("top_k", [1, 2, 5])
@pytest.mark.parametrize("ignore", [None, 3])
def test_accuracy_forward(top_k, ignore):
    rng = numpy.random.default_rng(top_k)
    scores = blob((40, 5), rng=rng)
    labels = blob(rng.integers(0, 5, size=40).astype(float))
    extra = f"top_k: {top_k}" + (f" ignore_label: {ignore}" if ignore is not None else "")
    layer = accuracy(extra)
    top = empty(2)
    layer.setup([scores, labels], top)
    assert layer.Forward([scores, labels], top) == 0.0      # not a loss
    acc, per_class = reference(scores.data, labels.data, top_k, ignore=ignore)
    assert top[0].shape == () and top[1].shape == (5,)
    numpy.testing.assert_allclose(float(top[0].data), acc)
    numpy.testing.assert_allclose(top[1].data, per_class)
    if top_k == 5:
        assert float(top[0].data) == 1.0


def test_accuracy_axis_and_spatial_labels():
    rng = numpy.random.default_rng(7)
    scores = blob((2, 3, 4, 6), rng=rng)                     # classes along axis 3
    labels = blob(rng.integers(0, 6, size=(2, 3, 4)).astype(float))
    layer = accuracy("axis: -1 top_k: 2")
    top = empty(2)
    layer.setup([scores, labels], top)
    layer.Forward([scores, labels], top)
    acc, per_class = reference(scores.data, labels.data, 2, axis=3)
    numpy.testing.assert_allclose(float(top[0].data), acc)
    numpy.testing.assert_allclose(top[1].data, per_class)
    # axis 1 with an (N, C, H, W) score map and N*H*W labels.
    scores = blob((2, 4, 3), rng=rng)
    labels = blob(rng.integers(0, 4, size=(2, 1, 3)).astype(float))
    layer = accuracy()
    top = empty()
    layer.setup([scores, labels], top)
    layer.Forward([scores, labels], top)
    numpy.testing.assert_allclose(float(top[0].data), reference(scores.data, labels.data)[0])


def test_accuracy_ties_count_against_the_label():
    scores = blob(numpy.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]))
    labels = blob(numpy.array([0.0, 1.0, 2.0]))
    for top_k, expected in [(1, 0.0), (2, 2 / 3), (3, 1.0)]:
        layer = accuracy(f"top_k: {top_k}")
        top = empty()
        layer.setup([scores, labels], top)
        layer.Forward([scores, labels], top)
        numpy.testing.assert_allclose(float(top[0].data), expected)


def test_accuracy_all_ignored_and_absent_classes():
    layer = accuracy("ignore_label: 0")
    scores = blob((3, 4))
    labels = blob(numpy.zeros(3))
    top = empty(2)
    layer.setup([scores, labels], top)
    layer.Forward([scores, labels], top)
    assert float(top[0].data) == 0.0
    assert not top[1].data.any()


def test_accuracy_errors():
    with pytest.raises(CaffeishError, match="top_k"):
        accuracy("top_k: 5").setup([blob((2, 4)), blob(numpy.zeros(2))], empty())
    with pytest.raises(CaffeishError, match="number of labels"):
        accuracy().setup([blob((2, 4)), blob(numpy.zeros(3))], empty())
    layer = accuracy()
    scores, labels = blob((2, 4)), blob(numpy.array([0.0, 4.0]))
    top = empty()
    layer.setup([scores, labels], top)
    with pytest.raises(CaffeishError, match="label value 4 "):
        layer.Forward([scores, labels], top)
    assert not layer.has_backward and layer.loss_weights == [0.0]

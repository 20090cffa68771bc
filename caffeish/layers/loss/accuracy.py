"""The Accuracy layer (Caffe's AccuracyLayer): the fraction of examples whose label is among the top_k
scores, overall and optionally per class.
"""
from ...backend import get_array_module
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from .._common import classification_layout
from .softmax_loss import read_labels


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """Accuracy: the fraction of examples whose label is among the top_k scores.

    bottom[0]: scores, classes along ``accuracy_param.axis``; bottom[1]: labels,
    count(:axis) * count(axis+1:) of them.  top[0]: the scalar accuracy over the
    counted (not ignored) labels, 0 when none; optional top[1]: per-class accuracy,
    shape (num_classes,), 0 for classes that do not occur.

    As Caffe's AccuracyLayer: a label is a hit when fewer than top_k *other*
    classes score at least as high as it (>=), so ties count against the label.
    """
    exact_num_bottom = 2
    min_top = 1
    max_top = 2
    has_backward = False
    default_loss_weight = 0.0

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = int(p.ignore_label) if p.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        self.axis = bottom[0].canonical_axis(self.param.accuracy_param.axis)
        self.outer_num, self.inner_num, self.num_classes = classification_layout(
            bottom[0], bottom[1], self.axis, "label axis")
        if self.top_k > self.num_classes:
            raise CaffeishError(
                f"top_k ({self.top_k}) must be less than or equal to the number of classes ({self.num_classes})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.num_classes,))

    def forward(self, bottom, top):
        scores = bottom[0].data.reshape(self.outer_num, self.num_classes, self.inner_num)
        xp = get_array_module(scores)
        _, valid, safe = read_labels(bottom[1], self.outer_num, self.inner_num, self.num_classes,
                                     self.ignore_label, self.type)
        true_score = xp.take_along_axis(scores, safe[:, None, :], axis=1)
        # Classes scoring >= the true class, the true class itself included.
        at_least = (scores >= true_score).sum(axis=1)
        hit = valid & (at_least - 1 < self.top_k)
        count = valid.sum()
        correct = hit.sum()
        top[0].data[...] = xp.where(count == 0, 0.0, correct / xp.maximum(count, 1)).astype(self.dtype)
        if len(top) > 1:
            flat = safe.ravel()
            nums = xp.bincount(flat, weights=valid.ravel().astype(xp.float64), minlength=self.num_classes)
            hits = xp.bincount(flat, weights=hit.ravel().astype(xp.float64), minlength=self.num_classes)
            top[1].data[...] = xp.where(nums == 0, 0.0, hits / xp.maximum(nums, 1)).astype(self.dtype)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise CaffeishError("Accuracy layer has no backward pass")

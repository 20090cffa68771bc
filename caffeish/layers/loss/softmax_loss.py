"""The SoftmaxWithLoss layer (Caffe's SoftmaxWithLossLayer), and the loss normalizer and the label reading
(``normalizer``, ``read_labels``) that the other loss layers share.
"""
import numpy

from ...backend import get_array_module
from ...cuda import kernels as cuda_kernels
from ...cuda import softmax_loss as cuda_softmax_loss
from ...errors import CaffeishError
from ...layer import LossLayer, register_layer
from ...proto import caffe_pb2
from .._common import classification_layout
from ..common.softmax import softmax

FLT_MIN = float(numpy.finfo(numpy.float32).tiny)
_LP = caffe_pb2.LossParameter


def normalization_mode(loss_param):
    """Caffe's rule: the deprecated ``normalize`` counts only when ``normalization`` is unset."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return _LP.VALID if loss_param.normalize else _LP.BATCH_SIZE
    return loss_param.normalization


def normalizer(mode, outer_num, inner_num, valid_count):
    """The loss divisor, at least 1 (Caffe's LossLayer::GetNormalizer); ``valid_count`` may be an array."""
    if mode == _LP.FULL:
        value = outer_num * inner_num
    elif mode == _LP.VALID:
        value = valid_count
    elif mode == _LP.BATCH_SIZE:
        value = outer_num
    elif mode == _LP.NONE:
        value = 1
    else:
        raise CaffeishError(f"unknown loss_param.normalization mode {mode}")
    if isinstance(value, int):
        return float(max(1, value))
    return get_array_module(value).maximum(value, 1)


def read_labels(label_blob, outer_num, inner_num, num_classes, ignore_label, layer_type):
    """Labels as (outer, inner) ints, the mask of the counted ones, and safe indices (ignored -> 0).

    Raises CaffeishError naming the first counted label outside [0, num_classes).
    """
    raw = label_blob.data.reshape(outer_num, inner_num)
    xp = get_array_module(raw)
    labels = raw.astype(xp.int64)  # static_cast<int>: truncation
    valid = labels != ignore_label if ignore_label is not None else xp.ones(labels.shape, dtype=bool)
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = float(raw[bad].ravel()[0])
        raise CaffeishError(
            f"{layer_type}: label value {value:g} is out of range; labels must be integers in "
            f"[0, {num_classes - 1}] for {num_classes} classes"
            + (f" (or the ignore_label {ignore_label})" if ignore_label is not None else ""))
    return labels, valid, xp.where(valid, labels, 0)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """SoftmaxWithLoss: multinomial logistic loss of the softmax of the scores.

    bottom[0]: scores, softmax taken along ``softmax_param.axis`` (C classes);
    bottom[1]: labels, count(:axis) * count(axis+1:) integer values in [0, C)
    (or ``loss_param.ignore_label``).  top[0]: the scalar loss
    -sum log(max(p[label], FLT_MIN)) / normalizer; optional top[1]: the probabilities.
    """
    exact_num_bottom = 2
    exact_num_top = None
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.normalization = normalization_mode(lp)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis = bottom[0].canonical_axis(self.param.softmax_param.axis)
        self.outer_num, self.inner_num, self.num_classes = classification_layout(
            bottom[0], bottom[1], self.axis, "softmax axis")
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def _prob(self, bottom):
        return self.prob.reshape(self.outer_num, self.num_classes, self.inner_num)

    def _softmax(self, bottom):
        x = bottom[0].data
        xp = get_array_module(x)
        prob = getattr(self, "prob", None)
        if prob is None or prob.shape != x.shape or prob.dtype != x.dtype or get_array_module(prob) is not xp:
            self.prob = xp.empty_like(x)  # kept for backward; allocated once per shape
        softmax(x, self.axis, self.prob)
        return self._prob(bottom)

    def forward_cpu(self, bottom, top):
        prob = self._softmax(bottom)
        xp = get_array_module(prob)
        _, valid, safe = read_labels(bottom[1], self.outer_num, self.inner_num, self.num_classes,
                                     self.ignore_label, self.type)
        picked = xp.take_along_axis(prob, safe[:, None, :], axis=1)[:, 0, :]
        logs = xp.log(xp.maximum(picked, self.dtype.type(FLT_MIN)))
        loss = -(logs * valid).sum()
        self.valid, self.safe = valid, safe
        self.count = valid.sum()
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        top[0].data[...] = loss / xp.asarray(norm, dtype=self.dtype)
        if len(top) > 1:
            top[1].data[...] = self.prob

    def forward_gpu(self, bottom, top):
        """The per-position losses and counts in one kernel (``caffeish.cuda.softmax_loss``), then two sums."""
        if not cuda_kernels.usable(bottom[0].data, bottom[1].data):
            return self.forward_cpu(bottom, top)
        prob = self._softmax(bottom)
        xp = get_array_module(prob)
        n = self.outer_num * self.inner_num
        losses, counts = xp.empty(n, dtype=prob.dtype), xp.empty(n, dtype=prob.dtype)
        labels = bottom[1].data.reshape(-1)
        cuda_softmax_loss.forward(prob, labels, self.num_classes, self.inner_num, self.ignore_label, losses, counts)
        if bool((counts == cuda_softmax_loss.BAD_LABEL).any()):
            # the CPU's check names the first bad label
            read_labels(bottom[1], self.outer_num, self.inner_num, self.num_classes, self.ignore_label, self.type)
        self.count = counts.sum()
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        top[0].data[...] = losses.sum() / xp.asarray(norm, dtype=self.dtype)
        if len(top) > 1:
            top[1].data[...] = self.prob

    def _check_propagate_down(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise CaffeishError(f"{self.type} layer cannot backpropagate to label inputs")
        return propagate_down[0]

    def backward_gpu(self, top, propagate_down, bottom):
        prob = self._prob(bottom)
        if not cuda_kernels.usable(prob, bottom[1].data, bottom[0].diff):  # exactly when forward_gpu took them
            return self.backward_cpu(top, propagate_down, bottom)
        if not self._check_propagate_down(propagate_down):
            return
        xp = get_array_module(prob)
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        scale = (top[0].diff / xp.asarray(norm, dtype=self.dtype)).astype(prob.dtype).reshape(1)
        cuda_softmax_loss.backward(prob, bottom[1].data.reshape(-1), self.num_classes, self.inner_num,
                                   self.ignore_label, scale, bottom[0].diff.reshape(prob.shape))

    def backward_cpu(self, top, propagate_down, bottom):
        if not self._check_propagate_down(propagate_down):
            return
        prob = self._prob(bottom)
        xp = get_array_module(prob)
        # dx = (prob - onehot(label)) * valid * loss_weight / normalizer, built in the diff itself.
        grad = bottom[0].diff.reshape(prob.shape)
        grad[...] = prob
        outer = xp.arange(self.outer_num)[:, None]
        inner = xp.arange(self.inner_num)[None, :]
        grad[outer, self.safe, inner] -= 1   # one label per (outer, inner): no repeated index
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        scale = top[0].diff / xp.asarray(norm, dtype=self.dtype)
        if bool(self.valid.all()):
            grad *= scale
        else:
            grad *= (self.valid * scale)[:, None, :].astype(grad.dtype, copy=False)

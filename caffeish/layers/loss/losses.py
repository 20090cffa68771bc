"""Caffe's other loss layers: SigmoidCrossEntropyLoss, HingeLoss, InfogainLoss, MultinomialLogisticLoss,
ContrastiveLoss.   top[0]: the scalar loss (default loss weight 1).
"""
import numpy

from ...backend import get_array_module, to_current
from ...blob import proto_shape, proto_values
from ...errors import CaffeishError
from ...layer import LossLayer, register_layer
from ...proto import caffe_pb2
from ...prototxt import read_binary_proto
from .._common import classification_layout
from ..common.softmax import softmax
from .softmax_loss import normalizer, read_labels

#: Caffe's kLOG_THRESHOLD: probabilities are clamped here before the log.
LOG_THRESHOLD = 1e-20
_LP = caffe_pb2.LossParameter


def _ignore_label(loss_param):
    return int(loss_param.ignore_label) if loss_param.HasField("ignore_label") else None


def _no_label_gradient(layer, propagate_down, index=1, what="label"):
    if len(propagate_down) > index and propagate_down[index]:
        raise CaffeishError(f"{layer.type} layer cannot backpropagate to {what} inputs (bottom[{index}])")


def _per_example_labels(layer, bottom):
    """(num, dim, labels as ints): one integer label in [0, dim) per example of bottom[0]."""
    num = bottom[0].shape[0]
    if num == 0:
        raise CaffeishError(f"{layer.type}: bottom[0] {bottom[0].shape} holds no examples")
    dim = bottom[0].count // num
    if bottom[1].count != num:
        raise CaffeishError(f"{layer.type} needs one label per example: bottom[0] {bottom[0].shape} has {num} "
                            f"examples, but the label blob {bottom[1].shape} holds {bottom[1].count} values")
    labels, _, _ = read_labels(bottom[1], num, 1, dim, None, layer.type)
    return num, dim, labels[:, 0]


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """SigmoidCrossEntropyLoss   bottom[0]: scores x, bottom[1]: targets t in [0, 1], the same count.

    loss = -sum over counted elements of [t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))] / normalizer,
    computed stably as Caffe does; ``loss_param.ignore_label`` skips elements whose int(t) equals it.
    Normalization: ``loss_param.normalization`` if given, else the deprecated ``normalize`` (true: VALID,
    false: BATCH_SIZE), else BATCH_SIZE (this layer's own default in Caffe, not the proto's VALID).
    """
    exact_num_bottom = 2

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = _ignore_label(lp)
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        else:
            self.normalization = _LP.BATCH_SIZE

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise CaffeishError(f"SigmoidCrossEntropyLoss inputs must have the same count: bottom[0] "
                                f"{bottom[0].shape} has {bottom[0].count}, bottom[1] {bottom[1].shape} "
                                f"has {bottom[1].count}")
        self.outer_num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner_num = bottom[0].count // max(self.outer_num, 1)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        t = bottom[1].data.reshape(x.shape)
        if self.ignore_label is not None:
            self.valid = t.astype(xp.int64) != self.ignore_label
        else:
            self.valid = None
        pos = (x >= 0).astype(x.dtype)
        # -[x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))]: the exponent is never positive.
        terms = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        if self.valid is not None:
            terms = terms * self.valid
            count = self.valid.sum()
        else:
            count = self.outer_num * self.inner_num
        self.norm = normalizer(self.normalization, self.outer_num, self.inner_num, count)
        self.sigmoid = xp.tanh(x * 0.5) * 0.5 + 0.5
        top[0].data[...] = -terms.sum() / xp.asarray(self.norm, dtype=self.dtype)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        xp = get_array_module(self.sigmoid)
        grad = self.sigmoid - bottom[1].data.reshape(self.sigmoid.shape)
        if self.valid is not None:
            grad = grad * self.valid
        scale = top[0].diff / xp.asarray(self.norm, dtype=self.dtype)
        bottom[0].diff[...] = grad * scale


@register_layer("HingeLoss")
class HingeLossLayer(LossLayer):
    """HingeLoss   bottom[0]: scores (N, ...), dim = count / N; bottom[1]: N integer labels in [0, dim).

    t = +1 at the label, -1 elsewhere; loss = sum max(0, 1 - t x)^p / N, p = 1 (L1) or 2 (L2).
    """
    exact_num_bottom = 2

    def layer_setup(self, bottom, top):
        norm = self.param.hinge_loss_param.norm
        P = caffe_pb2.HingeLossParameter
        if norm not in (P.L1, P.L2):
            raise CaffeishError(f"hinge_loss_param.norm must be L1 or L2, got {norm}")
        self.norm = norm

    def forward(self, bottom, top):
        num, dim, labels = _per_example_labels(self, bottom)
        x = bottom[0].data.reshape(num, dim)
        xp = get_array_module(x)
        sign = xp.ones((num, dim), dtype=x.dtype)
        sign[xp.arange(num), labels] = -1
        self.sign = sign
        self.margins = xp.maximum(1 + sign * x, 0)   # Caffe keeps these in bottom[0].diff
        m = self.margins
        total = m.sum() if self.norm == caffe_pb2.HingeLossParameter.L1 else (m * m).sum()
        top[0].data[...] = total / self.dtype.type(num)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        num = self.margins.shape[0]
        xp = get_array_module(self.margins)
        g = self.margins * self.sign
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            g = xp.sign(g) * (top[0].diff / self.dtype.type(num))
        else:
            g = g * (top[0].diff * 2 / self.dtype.type(num))
        bottom[0].diff[...] = g.reshape(bottom[0].shape)


def read_infogain_matrix(path, dtype):
    """The infogain matrix H from a binaryproto BlobProto, as an array of its stored shape."""
    proto = read_binary_proto(path, caffe_pb2.BlobProto)
    shape = proto_shape(proto)
    values = proto_values(proto, "data", int(numpy.prod(shape, dtype=numpy.int64)), path)
    if values is None:
        raise CaffeishError(f"the infogain matrix file {path} holds no data")
    return to_current(values.reshape(shape), dtype)


@register_layer("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """InfogainLoss   bottom[0]: scores, softmax taken along ``infogain_loss_param.axis``; bottom[1]: labels
    (count(:axis) * count(axis+1:) of them); H: a C x C matrix from ``infogain_loss_param.source``
    (a binaryproto) or bottom[2].

    loss = -sum_counted sum_l H[label, l] log(max(p_l, 1e-20)) / normalizer,
    ``loss_param`` ignore_label and normalization (default VALID; the deprecated ``normalize`` is refused).
    Optional top[1]: the probabilities.  No gradient into labels or H (an error, as in Caffe).
    """
    exact_num_top = None
    min_top = 1
    max_top = 2
    min_bottom = 2
    max_bottom = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0  # never into labels or H

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = _ignore_label(lp)
        if lp.HasField("normalize"):
            raise CaffeishError("InfogainLoss: loss_param.normalize is deprecated and not accepted by this layer; "
                                "use loss_param.normalization (FULL, VALID, BATCH_SIZE or NONE)")
        self.normalization = lp.normalization
        self.infogain = None
        if len(bottom) < 3:
            p = self.param.infogain_loss_param
            if not p.HasField("source") or not p.source:
                raise CaffeishError("InfogainLoss needs the infogain matrix: give infogain_loss_param.source "
                                    "(a binaryproto file) or a third bottom blob")
            self.infogain = read_infogain_matrix(p.source, self.dtype)

    def _matrix(self, bottom):
        return bottom[2].data if len(bottom) > 2 else self.infogain

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis = bottom[0].canonical_axis(self.param.infogain_loss_param.axis)
        self.outer_num, self.inner_num, self.num_labels = classification_layout(
            bottom[0], bottom[1], self.axis, "infogain axis")
        H = self._matrix(bottom)
        C = self.num_labels
        if H.size != C * C:
            where = "bottom[2]" if len(bottom) > 2 else f"the matrix in {self.param.infogain_loss_param.source}"
            raise CaffeishError(f"the infogain matrix must be {C} x {C} for {C} classes, but {where} has shape "
                                f"{tuple(H.shape)} ({H.size} values)")
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        self.prob = xp.empty_like(x)
        softmax(x, self.axis, self.prob)
        prob = self.prob.reshape(self.outer_num, self.num_labels, self.inner_num)
        _, valid, safe = read_labels(bottom[1], self.outer_num, self.inner_num, self.num_labels,
                                     self.ignore_label, self.type)
        self.valid, self.safe = valid, safe
        H = self._matrix(bottom).reshape(self.num_labels, self.num_labels)
        rows = xp.moveaxis(H[safe], 2, 1)                 # (outer, C, inner): H[label, l]
        logs = xp.log(xp.maximum(prob, self.dtype.type(LOG_THRESHOLD)))
        loss = -(rows * logs * valid[:, None, :]).sum()
        self.count = valid.sum()
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        top[0].data[...] = loss / xp.asarray(norm, dtype=self.dtype)
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        _no_label_gradient(self, propagate_down, 2, "infogain matrix")
        if not propagate_down[0]:
            return
        xp = get_array_module(self.prob)
        prob = self.prob.reshape(self.outer_num, self.num_labels, self.inner_num)
        H = self._matrix(bottom).reshape(self.num_labels, self.num_labels)
        sum_rows = H.sum(axis=1)
        rows = xp.moveaxis(H[self.safe], 2, 1)
        grad = (prob * sum_rows[self.safe][:, None, :] - rows) * self.valid[:, None, :]
        norm = normalizer(self.normalization, self.outer_num, self.inner_num, self.count)
        scale = top[0].diff / xp.asarray(norm, dtype=self.dtype)
        bottom[0].diff.reshape(prob.shape)[...] = grad * scale


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(LossLayer):
    """MultinomialLogisticLoss   bottom[0]: probabilities (N, ...), bottom[1]: N integer labels.

    loss = -sum log(max(p[label], 1e-20)) / N.
    """
    exact_num_bottom = 2

    def forward(self, bottom, top):
        num, dim, labels = _per_example_labels(self, bottom)
        p = bottom[0].data.reshape(num, dim)
        xp = get_array_module(p)
        self.labels = labels
        self.picked = xp.maximum(p[xp.arange(num), labels], self.dtype.type(LOG_THRESHOLD))
        top[0].data[...] = -xp.log(self.picked).sum() / self.dtype.type(num)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        num = self.labels.shape[0]
        diff = bottom[0].diff.reshape(num, -1)
        xp = get_array_module(diff)
        diff[...] = 0
        diff[xp.arange(num), self.labels] = -(top[0].diff / self.dtype.type(num)) / self.picked


@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """ContrastiveLoss   bottom[0] a, bottom[1] b: (N, C) (or (N, C, 1, 1)); bottom[2] y: N flags,
    int(y) != 0 = similar.

    d = ||a - b||; loss = sum(similar ? d^2 : max(margin - d, 0)^2) / 2N, or with ``legacy_version``
    max(margin - d^2, 0) for dissimilar pairs.  Gradients into a and b (Caffe's, with its 1e-4 in the
    denominator of the non-legacy dissimilar term); none into y.
    """
    exact_num_bottom = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # never into the similarity labels

    def layer_setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        a, b, y = bottom
        if a.num_axes < 2 or b.num_axes < 2 or a.shape[1] != b.shape[1] or a.count_range(2) != 1 \
                or b.count_range(2) != 1:
            raise CaffeishError(f"ContrastiveLoss needs bottom[0] and bottom[1] of shape (N, C) or (N, C, 1, 1) with "
                                f"the same C, got {a.shape} and {b.shape}")
        if y.shape[:1] != a.shape[:1] or y.count != a.shape[0]:
            raise CaffeishError(f"ContrastiveLoss needs one similarity label per pair in bottom[2]: {a.shape[0]} "
                                f"pairs, but bottom[2] has shape {y.shape}")
        self.num, self.channels = a.shape[0], a.shape[1]

    def forward(self, bottom, top):
        a = bottom[0].data.reshape(self.num, self.channels)
        xp = get_array_module(a)
        self.diff = a - bottom[1].data.reshape(a.shape)
        self.dist_sq = (self.diff * self.diff).sum(axis=1)
        self.similar = bottom[2].data.reshape(self.num).astype(xp.int64) != 0
        margin = self.dtype.type(self.margin)
        if self.legacy:
            dissimilar = xp.maximum(margin - self.dist_sq, 0)
        else:
            dissimilar = xp.maximum(margin - xp.sqrt(self.dist_sq), 0) ** 2
        loss = xp.where(self.similar, self.dist_sq, dissimilar).sum()
        top[0].data[...] = loss / self.dtype.type(self.num) / self.dtype.type(2)

    def backward(self, top, propagate_down, bottom):
        margin = self.dtype.type(self.margin)
        xp = get_array_module(self.diff)
        if self.legacy:
            mdist = margin - self.dist_sq
            beta_factor = -xp.ones_like(mdist)
        else:
            dist = xp.sqrt(self.dist_sq)
            mdist = margin - dist
            beta_factor = -mdist / (dist + self.dtype.type(1e-4))
        dissimilar = xp.where(mdist > 0, beta_factor, 0)
        coeff = xp.where(self.similar, 1, dissimilar).astype(self.dtype)
        for i, sign in ((0, 1), (1, -1)):
            if i < len(propagate_down) and propagate_down[i]:
                alpha = top[0].diff * self.dtype.type(sign) / self.dtype.type(self.num)
                bottom[i].diff[...] = (alpha * coeff[:, None] * self.diff).reshape(bottom[i].shape)

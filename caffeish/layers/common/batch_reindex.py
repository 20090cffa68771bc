"""The BatchReindex layer (Caffe's BatchReindexLayer): items of bottom[0] picked along axis 0, with repeats,
by an index blob.
"""
import numpy

from ...backend import get_array_module, to_cpu
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    """BatchReindex: Caffe's selection (with repeats) of items along axis 0 by an index blob.

    bottom[0]: ``(N, ...)``.  bottom[1]: a 1-axis blob of K indices into axis 0 (floats truncated toward
    zero, as Caffe's cast; each must lie in [0, N)).  top: ``(K, ...)``, item k being ``bottom[0][index[k]]``.
    Backward accumulates: an item picked several times gets the sum of their gradients, one never picked
    gets 0.  The indices get no gradient (asking for one is an error, as in Caffe).
    """
    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise CaffeishError(f"BatchReindex's index bottom must have exactly 1 axis, got shape {bottom[1].shape}")
        if bottom[0].num_axes < 1:
            raise CaffeishError(f"BatchReindex needs a bottom with at least one axis, got shape {bottom[0].shape}")
        if top[0] is bottom[0]:
            raise CaffeishError("BatchReindex cannot run in place; give its top a name of its own")
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _indices(self, bottom):
        values = bottom[1].data
        num = bottom[0].shape[0]
        host = to_cpu(values)
        bad = ~((host >= 0) & (host < num))  # NaN is bad too
        if bad.any():
            raise CaffeishError(f"BatchReindex index {host[bad][0]:g} is out of range for a batch of {num} "
                                f"(indices must lie in [0, {num}))")
        return get_array_module(values).asarray(values).astype(numpy.int64)

    def forward(self, bottom, top):
        index = self._indices(bottom)
        top[0].data[...] = bottom[0].data[index]

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise CaffeishError("BatchReindex cannot backpropagate to its index bottom; "
                                "set propagate_down: false for it")
        if not propagate_down[0]:
            return
        index = self._indices(bottom)
        dy = top[0].diff
        xp = get_array_module(dy)
        num = bottom[0].shape[0]
        inner = bottom[0].count_range(1)
        # One bincount over (index, position within the item) accumulates repeated picks.
        flat = (index.reshape(-1, 1) * inner + xp.arange(inner, dtype=numpy.int64).reshape(1, -1)).ravel()
        dx = xp.bincount(flat, weights=dy.reshape(-1), minlength=num * inner)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape).astype(bottom[0].dtype, copy=False)

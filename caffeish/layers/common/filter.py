"""The Filter layer (Caffe's FilterLayer): the items (along axis 0) of each bottom whose selector, the last
bottom, is non-zero.
"""
import numpy

from ...backend import get_array_module, to_cpu
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("Filter")
class FilterLayer(Layer):
    """Filter: Caffe's selection of the items (along axis 0) whose selector is non-zero.

    bottom[0..K-1]: blobs with the same first axis N.  bottom[K] (the last): the selector, shape (N, 1, ...)
    -- every axis after the first must be 1.  top[0..K-1]: bottom[i] restricted to the selected items, in
    order: ``(number selected, ...)``.  As in Caffe, the reshape done at setup gives the tops all N items
    (so that the Net can be built before any data is seen); every forward then uses the real count.
    Backward copies each top's gradient back to its selected items and writes 0 for the others; the
    selector gets no gradient (asking for one is an error, as in Caffe).
    """
    min_bottom = 2
    min_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != self.selector_index

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise CaffeishError(f"Filter needs one top per filtered bottom (all bottoms but the last, the selector): "
                                f"{len(bottom)} bottoms need {len(bottom) - 1} tops, but {len(top)} given")
        self.selector_index = len(bottom) - 1
        self.first_reshape = True
        self.indices = None

    def reshape(self, bottom, top):
        selector = bottom[-1]
        if selector.num_axes < 1 or any(s != 1 for s in selector.shape[1:]):
            raise CaffeishError(f"the selector (the last bottom) must have shape (N, 1, ...) with every axis after "
                                f"the first equal to 1, got {selector.shape}")
        num = selector.shape[0]
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != num:
                raise CaffeishError(f"bottom {i} of shape {b.shape} must have the selector's first axis, {num}")
            if top[i] is b:
                raise CaffeishError("Filter cannot run in place; give its tops names of their own")
        values = selector.data.reshape(-1)
        xp = get_array_module(values)
        self.indices = xp.asarray(numpy.flatnonzero(to_cpu(values)))
        count = num if self.first_reshape else int(self.indices.size)
        self.first_reshape = False
        for t, b in zip(top, bottom[:-1]):
            t.reshape((count,) + tuple(b.shape[1:]))

    def forward(self, bottom, top):
        for t, b in zip(top, bottom[:-1]):
            t.data[...] = b.data[self.indices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[self.selector_index]:
            raise CaffeishError("Filter cannot backpropagate to its selector (the last bottom); "
                                "set propagate_down: false for it")
        for t, down, b in zip(top, propagate_down, bottom[:-1]):
            if down:
                dx = b.diff
                dx[...] = 0
                dx[self.indices] = t.diff

"""The ArgMax layer (Caffe's ArgMaxLayer): the indices, or values, of the top_k largest entries of each
example or along one axis.
"""
from ...backend import get_array_module
from ...errors import CaffeishError
from ...layer import Layer, register_layer


def top_k_indices(values, k):
    """Indices of the k largest along the last axis, larger value first, and on ties the larger index first."""
    xp = get_array_module(values)
    dim = values.shape[-1]
    # A stable sort of the reversed row keeps equal values in descending index order.
    order = xp.argsort(-values[..., ::-1], axis=-1, kind="stable")[..., :k]
    return (dim - 1) - order


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    """ArgMax: the indices (or values) of the top_k largest entries.

    Without ``axis``, each example (axis 0) is flattened: top is (N, 1, top_k), or (N, 2, top_k) with
    ``out_max_val`` (indices, then values), padded with 1s to bottom's number of axes (at least 3).
    With ``axis``, top is bottom's shape with that axis made top_k, holding indices, or values with
    ``out_max_val``.  Ties are ordered as Caffe's partial_sort of (value, index) pairs with
    std::greater: equal values put the larger index first.  Indices are written as floats.  No backward.
    """
    exact_num_bottom = 1
    exact_num_top = 1
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise CaffeishError(f"argmax_param.top_k must be at least 1, got {self.top_k}")
        self._check(bottom[0])

    def _check(self, blob):
        if blob.num_axes == 0:
            raise CaffeishError(f"ArgMax needs a bottom with at least one axis, got the scalar '{blob.name}'")
        if self.has_axis:
            self.axis = blob.canonical_axis(self.param.argmax_param.axis)
            if self.top_k > blob.shape[self.axis]:
                raise CaffeishError(f"argmax_param.top_k ({self.top_k}) is larger than axis {self.axis} of the "
                                    f"bottom of shape {blob.shape} ({blob.shape[self.axis]})")
        elif self.top_k > blob.count_range(1):
            raise CaffeishError(f"argmax_param.top_k ({self.top_k}) is larger than the {blob.count_range(1)} "
                                f"values per example of the bottom of shape {blob.shape}")

    def reshape(self, bottom, top):
        b = bottom[0]
        self._check(b)
        if self.has_axis:
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        top[0].reshape(shape)

    def forward(self, bottom, top):
        b, x = bottom[0], bottom[0].data
        xp = get_array_module(x)
        k = self.top_k
        if self.has_axis:
            outer, dim, inner = b.count_range(0, self.axis), b.shape[self.axis], b.count_range(self.axis + 1)
            rows = x.reshape(outer, dim, inner).transpose(0, 2, 1)            # (outer, inner, dim)
            index = top_k_indices(rows, k)
            out = xp.take_along_axis(rows, index, axis=-1) if self.out_max_val else index
            top[0].data.reshape(outer, k, inner)[...] = out.transpose(0, 2, 1)
        else:
            n = b.shape[0]
            rows = x.reshape(n, -1)
            index = top_k_indices(rows, k)
            y = top[0].data.reshape(n, -1, k)
            y[:, 0, :] = index
            if self.out_max_val:
                y[:, 1, :] = xp.take_along_axis(rows, index, axis=-1)

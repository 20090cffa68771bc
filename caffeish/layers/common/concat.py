"""The Concat layer (Caffe's ConcatLayer): any number of bottoms joined along one axis."""
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from .._common import axis_slice, legacy_axis


@register_layer("Concat")
class ConcatLayer(Layer):
    """Concat: joins any number of bottoms along one axis.

    bottom[i]: shapes equal except on ``concat_param.axis`` (default 1; the legacy
    ``concat_dim`` is used instead when it is set).  top: the bottoms side by side on
    that axis.  With a single bottom the top shares its data and diff (no copy), as
    Caffe does.
    """
    min_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        first = bottom[0]
        axis = legacy_axis(self.param.concat_param, "concat_dim", first)
        self.axis = axis
        top_shape = list(first.shape)
        for i, b in enumerate(bottom[1:], start=1):
            same = b.num_axes == first.num_axes and all(
                b.shape[j] == first.shape[j] for j in range(first.num_axes) if j != axis)
            if not same:
                raise CaffeishError(
                    f"bottom[{i}] has shape {b.shape} but bottom[0] has shape {first.shape}; all bottoms must have "
                    f"the same number of axes and the same shape except on the concat axis {axis}")
            top_shape[axis] += b.shape[axis]
        top[0].reshape(top_shape)
        if len(bottom) == 1:
            top[0].share_data(first)
            top[0].share_diff(first)

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        out = top[0].data
        offset = 0
        for b in bottom:
            n = b.shape[self.axis]
            out[axis_slice(self.axis, offset, offset + n)] = b.data
            offset += n

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return  # the diff is shared
        diff = top[0].diff
        offset = 0
        for b, down in zip(bottom, propagate_down):
            n = b.shape[self.axis]
            if down:
                b.diff[...] = diff[axis_slice(self.axis, offset, offset + n)]
            offset += n

"""The Slice layer (Caffe's SliceLayer): one bottom cut into several tops along one axis."""
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from .._common import axis_slice, legacy_axis


@register_layer("Slice")
class SliceLayer(Layer):
    """Slice: cuts one bottom into several tops along one axis.

    ``slice_param.axis`` (default 1; the legacy ``slice_dim`` is used instead when set).
    ``slice_point``: the len(top) - 1 indices, strictly increasing and inside the
    axis, where each top after the first begins; when empty, the axis is split
    evenly (its size must divide by the number of tops).  Backward writes each top's
    diff back into its part of the bottom's diff.  A single top shares the bottom's
    data and diff, as in Caffe.
    """
    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        self.slice_points = [int(s) for s in self.param.slice_param.slice_point]

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = legacy_axis(self.param.slice_param, "slice_dim", b)
        size = b.shape[axis]
        points = self.slice_points
        if points:
            if len(points) != len(top) - 1:
                raise CaffeishError(f"slice_point gives {len(points)} points {points}, but {len(top)} tops need "
                                    f"{len(top) - 1}")
            prev = 0
            for s in points:
                if not prev < s < size:
                    raise CaffeishError(f"slice_point {points} must be strictly increasing and inside (0, {size}), "
                                        f"the size of axis {axis} of the bottom of shape {b.shape}")
                prev = s
            bounds = [0] + points + [size]
        else:
            if size % len(top):
                raise CaffeishError(f"{len(top)} tops do not evenly divide axis {axis} (size {size}) of the bottom "
                                    f"of shape {b.shape}; give slice_point to cut it unevenly")
            step = size // len(top)
            bounds = [i * step for i in range(len(top) + 1)]
        self.axis, self.bounds = axis, bounds
        shape = list(b.shape)
        for i, t in enumerate(top):
            shape[axis] = bounds[i + 1] - bounds[i]
            t.reshape(shape)
        if len(top) == 1:
            top[0].share_data(b)
            top[0].share_diff(b)

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        data = bottom[0].data
        for i, t in enumerate(top):
            t.data[...] = data[axis_slice(self.axis, self.bounds[i], self.bounds[i + 1])]

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        diff = bottom[0].diff
        for i, t in enumerate(top):
            diff[axis_slice(self.axis, self.bounds[i], self.bounds[i + 1])] = t.diff

"""The Reshape layer (Caffe's ReshapeLayer): the bottom given a new shape without copying (the top shares its
data and diff).
"""
import numpy

from ...errors import CaffeishError
from ...layer import register_layer
from .._common import ViewLayer


@register_layer("Reshape")
class ReshapeLayer(ViewLayer):
    """Reshape: gives the bottom a new shape without copying (top shares data and diff).

    ``reshape_param.shape`` replaces bottom axes ``axis`` .. ``axis + num_axes``
    (defaults 0 and -1: the whole shape; a negative axis counts from the end, -1
    meaning after the last axis).  In the new dims, 0 copies the bottom's dim at the
    same position (relative to ``axis``) and one -1 is inferred so that the counts
    match.  The total count must stay the same.
    """

    def layer_setup(self, bottom, top):
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        self.dims = dims
        bad = [d for d in dims if d < -1]
        if bad:
            raise CaffeishError(f"reshape_param.shape {dims} has dim {bad[0]}; dims must be positive, "
                                "0 (copy the bottom's dim) or -1 (infer)")
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise CaffeishError(f"reshape_param.shape {dims} has {len(inferred)} dims of -1; at most one may be "
                                "inferred")
        self.inferred_axis = inferred[0] if inferred else -1
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        self.constant_count = int(numpy.prod([d for d in dims if d > 0], dtype=numpy.int64))

    def top_shape(self, b):
        p = self.param.reshape_param
        n = b.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise CaffeishError(f"reshape_param.axis {p.axis} is out of range for the {n}-D bottom of shape {b.shape}")
        if p.num_axes < -1:
            raise CaffeishError(f"reshape_param.num_axes is {p.num_axes}; it must be >= 0, or -1 for all axes")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise CaffeishError(f"reshape_param.axis {p.axis} + num_axes {p.num_axes} goes past the last axis of "
                                f"the bottom of shape {b.shape}")
        shape = list(b.shape[:start]) + list(self.dims) + list(b.shape[end:])
        for i in self.copy_axes:
            if start + i >= n:
                raise CaffeishError(f"reshape_param.shape {self.dims} has a 0 at position {i}, but the bottom of "
                                    f"shape {b.shape} has no axis {start + i} to copy")
            shape[start + i] = b.shape[start + i]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * b.count_range(0, start) * b.count_range(end)
            for i in self.copy_axes:
                explicit *= shape[start + i]
            if explicit == 0 or b.count % explicit:
                raise CaffeishError(
                    f"cannot infer the -1 in reshape_param.shape {self.dims}: the bottom of shape {b.shape} has "
                    f"{b.count} elements, which is not a multiple of the product {explicit} of the other dims")
            shape[start + self.inferred_axis] = b.count // explicit
        count = int(numpy.prod(shape, dtype=numpy.int64))
        if count != b.count:
            raise CaffeishError(f"reshape_param.shape {self.dims} makes top shape {tuple(shape)} ({count} elements) "
                                f"from the bottom of shape {b.shape} ({b.count} elements); the counts must match")
        return shape

"""The Flatten layer (Caffe's FlattenLayer): a run of axes merged into one, the top sharing the bottom's data
and diff.
"""
from ...errors import CaffeishError
from ...layer import register_layer
from .._common import ViewLayer


@register_layer("Flatten")
class FlattenLayer(ViewLayer):
    """Flatten: merges axes ``flatten_param.axis`` .. ``end_axis`` (default 1 .. -1) into one.

    bottom: any shape (at least ``axis + 1`` axes); top: shape[:axis] +
    [prod(shape[axis:end_axis+1])] + shape[end_axis+1:].  The top shares the bottom's
    data and diff buffers (Caffe's ShareData/ShareDiff), so forward and backward copy
    nothing: the gradient written into the top's diff is already the bottom's.
    """

    def top_shape(self, b):
        p = self.param.flatten_param
        start = b.canonical_axis(p.axis)
        end = b.canonical_axis(p.end_axis)
        if end < start - 1:  # Caffe's count(start, end + 1) needs start <= end + 1
            raise CaffeishError(f"flatten_param end_axis {p.end_axis} (axis {end}) comes before axis {p.axis} "
                                f"(axis {start}) for the bottom of shape {b.shape}")
        shape = b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1:]
        return shape

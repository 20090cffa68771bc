"""Pieces several layers share: axis slicing, legacy axis fields, views, label layouts."""
from ..errors import CaffeishError
from ..layer import Layer


def axis_slice(axis, start, stop):
    """An index selecting ``start:stop`` on ``axis`` and everything on the other axes."""
    return (slice(None),) * axis + (slice(start, stop),)


def legacy_axis(param, legacy_field, blob):
    """``param.axis``, or the deprecated ``legacy_field`` (concat_dim, slice_dim) when that is set."""
    if param.HasField("axis") and param.HasField(legacy_field):
        raise CaffeishError(f"both axis ({param.axis}) and {legacy_field} ({getattr(param, legacy_field)}) are given; "
                            f"give only one ({legacy_field} is the deprecated name of axis)")
    if param.HasField(legacy_field):
        value = int(getattr(param, legacy_field))
        if value >= blob.num_axes:
            raise CaffeishError(f"{legacy_field} {value} is out of range for the bottom of shape {blob.shape} "
                                f"({blob.num_axes} axes)")
        return value
    return blob.canonical_axis(param.axis)


def classification_layout(scores, labels, axis, what):
    """(outer_num, inner_num, num_classes) for scores with classes on ``axis``, checked against the labels."""
    outer, inner = scores.count_range(0, axis), scores.count_range(axis + 1)
    if outer * inner != labels.count:
        raise CaffeishError(
            f"number of labels must match number of predictions: scores of shape {scores.shape} with {what} "
            f"{axis} need {outer * inner} labels, but the label blob has {labels.count} (shape {labels.shape})")
    return outer, inner, scores.shape[axis]


class ViewLayer(Layer):
    """A top that is the bottom with another shape: data and diff are shared, nothing is copied.

    Subclasses give ``top_shape(bottom_blob)``.  Running in place is refused: the
    layer that wrote the bottom would then see a diff of the wrong shape.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, blob):
        raise NotImplementedError

    def reshape(self, bottom, top):
        shape = self.top_shape(bottom[0])
        if top[0] is bottom[0]:
            raise CaffeishError(f"{self.type} cannot run in place; give its top a name of its own")
        top[0].reshape(shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass  # data is shared

    def backward(self, top, propagate_down, bottom):
        pass  # diff is shared: the top's gradient is the bottom's

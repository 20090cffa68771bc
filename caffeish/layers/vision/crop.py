"""The Crop layer (Caffe's CropLayer): bottom[0] cropped to the shape of bottom[1] from ``crop_param.axis``
on, at the given offsets.
"""
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("Crop")
class CropLayer(Layer):
    """Crop: Caffe's crop of bottom[0] to the shape of bottom[1] from ``crop_param.axis`` (default 2) on.

    bottom[0]: the data.  bottom[1]: only its shape is read (same number of axes).  top: bottom[0]'s shape
    with every axis ``i >= axis`` taken from bottom[1]; axis ``i`` starts at ``offset`` -- none given: 0,
    one given: that one for every cropped axis, else one per cropped axis.  Backward zero-fills bottom[0]'s
    gradient and copies the top's into the cropped window; bottom[1] gets no gradient (zeros if asked).
    """
    exact_num_bottom = 2
    exact_num_top = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        self.axis = bottom[0].canonical_axis(p.axis)
        self.offset = [int(o) for o in p.offset]
        nd = bottom[0].num_axes
        if len(self.offset) > 1 and self.axis + len(self.offset) != nd:
            raise CaffeishError(f"crop_param gives {len(self.offset)} offsets, but from axis {self.axis} the bottom "
                                f"of shape {bottom[0].shape} has {nd - self.axis} axes to crop: give one offset "
                                f"for all, or one per cropped axis")

    def reshape(self, bottom, top):
        data, like = bottom[0], bottom[1]
        if data.num_axes != like.num_axes:
            raise CaffeishError(f"Crop's bottoms need the same number of axes: {data.shape} vs. {like.shape}")
        if top[0] is data:
            raise CaffeishError("Crop cannot run in place; give its top a name of its own")
        shape, index = list(data.shape), []
        for i in range(data.num_axes):
            if i < self.axis:
                index.append(slice(None))
                continue
            offset = 0 if not self.offset else self.offset[0 if len(self.offset) == 1 else i - self.axis]
            if data.shape[i] - offset < like.shape[i]:
                raise CaffeishError(f"the crop of axis {i} is out of bounds: size {like.shape[i]} at offset "
                                    f"{offset} does not fit in {data.shape[i]} (bottom shapes {data.shape} and "
                                    f"{like.shape})")
            shape[i] = like.shape[i]
            index.append(slice(offset, offset + like.shape[i]))
        self.index = tuple(index)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.index]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            dx[self.index] = top[0].diff
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0

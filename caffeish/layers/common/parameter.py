"""The Parameter layer (Caffe's ParameterLayer): no bottom; its one top is the layer's learned blob."""
from ...layer import Layer, ParamBlob, register_layer


@register_layer("Parameter")
class ParameterLayer(Layer):
    """Parameter: no bottom; its one top is the layer's learned blob, of shape ``parameter_param.shape``.

    The blob starts at zeros (Caffe fills it with nothing).  Forward copies it into the top; backward adds
    the top's diff into the blob's diff.  (Caffe shares the top's data and diff with the blob instead;
    copying keeps the blob safe from in-place consumers and keeps gradient accumulation.)
    """
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.init_params([ParamBlob("parameter", shape, None)], f"with parameter_param.shape {shape}")

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff

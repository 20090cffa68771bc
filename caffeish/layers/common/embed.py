"""The Embed layer (Caffe's EmbedLayer): a lookup table, one learned row of weights per input index."""
from ...backend import get_array_module
from ...errors import CaffeishError
from ...layer import Layer, ParamBlob, register_layer


@register_layer("Embed")
class EmbedLayer(Layer):
    """Embed: a lookup table.  y[..., :] = W[x[...], :] (+ b).

    bottom: integer indices in [0, input_dim), stored as floats, any shape; top: bottom's shape plus
    num_output.  Weights are input_dim x num_output (InnerProduct's, transposed), the bias num_output.
    There is no gradient with respect to the indices: asking for one is an error, as in Caffe.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        self.N, self.K = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        if self.N <= 0:
            raise CaffeishError(f"embed_param.num_output must be positive, got {self.N}")
        if self.K <= 0:
            raise CaffeishError(f"embed_param.input_dim must be positive, got {self.K}")
        specs = [ParamBlob("weights", (self.K, self.N), p.weight_filler)]
        if self.bias_term:
            specs.append(ParamBlob("bias", (self.N,), p.bias_filler))
        self.init_params(specs, f"with input_dim {self.K}, num_output {self.N} and bias_term "
                                f"{str(self.bias_term).lower()}")

    def allow_force_backward(self, bottom_index):
        return False   # indices have no gradient

    def reshape(self, bottom, top):
        self.M = bottom[0].count
        top[0].reshape(bottom[0].shape + (self.N,))

    def _indices(self, x):
        """The bottom as int64 indices (truncated as Caffe's static_cast), checked to be whole and in range."""
        xp = get_array_module(x)
        flat = x.reshape(-1)
        index = flat.astype(xp.int64)
        bad = (index < 0) | (index >= self.K) | (index != flat)
        if bool(bad.any()):
            position = int(xp.nonzero(bad)[0][0])
            value = float(flat[position])
            raise CaffeishError(f"Embed input {value:g} at position {position} of the bottom (shape {x.shape}) is "
                                f"not a whole number in [0, input_dim = {self.K})")
        return index

    def forward(self, bottom, top):
        index = self._indices(bottom[0].data)
        y = self.blobs[0].data[index]                  # (M, N)
        if self.bias_term:
            y += self.blobs[1].data
        top[0].data.reshape(self.M, self.N)[...] = y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise CaffeishError("Embed cannot propagate a gradient to its input indices; "
                                "set propagate_down: false for its bottom")
        dy = top[0].diff.reshape(self.M, self.N)
        xp = get_array_module(dy)
        if self.param_propagate_down[0]:
            index = self._indices(bottom[0].data)
            # Scatter-add each row of dy into its index's row: one bincount over (index, column) pairs.
            cells = (index[:, None] * self.N + xp.arange(self.N)).reshape(-1)
            grad = xp.bincount(cells, weights=dy.reshape(-1), minlength=self.K * self.N)
            self.blobs[0].diff += grad.reshape(self.K, self.N).astype(dy.dtype, copy=False)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)

"""The InnerProduct layer (Caffe's InnerProductLayer): fully connected, y = x W^T + b."""
from ...backend import get_array_module
from ...errors import CaffeishError
from ...cpu import workspace
from ...layer import Layer, ParamBlob, register_layer


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """InnerProduct (fully connected): y = x W^T + b.

    bottom: any shape; everything from ``axis`` on is flattened, so the layer does
    M = count(:axis) inner products of length K = count(axis:).  top: bottom's
    shape up to ``axis``, then num_output (N).  Weights are N x K, or K x N when
    ``transpose`` is set; the bias has N elements.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def macs(self, bottom, top):
        """Each input value meets num_output weights."""
        return bottom[0].count * self.num_output if bottom else 0

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        if self.num_output <= 0:
            raise CaffeishError(f"inner_product_param.num_output must be positive, got {self.num_output}")
        axis = bottom[0].canonical_axis(p.axis)
        self.K = bottom[0].count_range(axis)
        N, K = self.num_output, self.K
        specs = [ParamBlob("weights", (K, N) if self.transpose else (N, K), p.weight_filler)]
        if self.bias_term:
            specs.append(ParamBlob("bias", (N,), p.bias_filler))
        self.init_params(specs, f"with num_output {N}, K {K}, transpose {str(self.transpose).lower()} and "
                                f"bias_term {str(self.bias_term).lower()}")

    def reshape(self, bottom, top):
        axis = bottom[0].canonical_axis(self.param.inner_product_param.axis)
        new_K = bottom[0].count_range(axis)
        if new_K != self.K:
            raise CaffeishError(
                f"input size incompatible with inner product parameters: bottom shape {bottom[0].shape} "
                f"flattens to {new_K} values from axis {axis}, but the weights expect {self.K}")
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    # OpenBLAS splits a GEMM's threads over the rows of its output, so when M is the smaller side each product
    # is computed transposed -- (A B)^T = B^T A^T -- into a work buffer and copied back (a small array); see
    # bench/README.md, Tuning history.
    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        xp = get_array_module(x)
        w = self.blobs[0].data
        wt = w if self.transpose else w.T      # K x N
        y = top[0].data.reshape(self.M, self.num_output)
        if self.M < self.num_output:
            yt = workspace(xp, y.dtype, "ip.t", y.size).reshape(self.num_output, self.M)
            xp.matmul(wt.T, x.T, out=yt)
            if self.bias_term:
                xp.add(yt.T, self.blobs[1].data, out=y)
            else:
                y[...] = yt.T
            return
        xp.matmul(x, wt, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        M, N, K = self.M, self.num_output, self.K
        dy = top[0].diff.reshape(M, N)
        xp = get_array_module(dy)
        if self.param_propagate_down[0]:
            x = bottom[0].data.reshape(M, K)
            dw = self.blobs[0].diff
            a, b = (x.T, dy) if self.transpose else (dy.T, x)   # dW = a @ b: K x N, or N x K
            if _all_zero(xp, dw):
                # Cleared diffs (every iteration but the accumulating ones): the GEMM writes straight in.
                xp.matmul(a, b, out=dw)
            else:
                tmp = workspace(xp, dw.dtype, "ip.dw", dw.size).reshape(dw.shape)
                xp.matmul(a, b, out=tmp)
                dw += tmp
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            w = self.blobs[0].data
            wk = w.T if self.transpose else w      # N x K
            dx = bottom[0].diff.reshape(M, K)
            if M < K:
                dxt = workspace(xp, dx.dtype, "ip.t", dx.size).reshape(K, M)
                xp.matmul(wk.T, dy.T, out=dxt)
                dx[...] = dxt.T
            else:
                xp.matmul(dy, wk, out=dx)


def _all_zero(xp, a):
    """Whether every element of ``a`` is 0 -- a cheap look at the first elements, then one read."""
    flat = a.reshape(-1)
    if bool(flat[:256].any()):
        return False
    return not bool(flat.any())

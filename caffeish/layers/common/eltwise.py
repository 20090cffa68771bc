"""The Eltwise layer (Caffe's EltwiseLayer): element-wise PROD, SUM (with one coefficient per bottom) or MAX
of two or more bottoms of one shape.
"""
from ...backend import get_array_module
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from ...proto import caffe_pb2

_OP = caffe_pb2.EltwiseParameter
PROD, SUM, MAX = _OP.PROD, _OP.SUM, _OP.MAX


@register_layer("Eltwise")
class EltwiseLayer(Layer):
    """Eltwise: element-wise PROD, SUM (with one coefficient per bottom) or MAX of two or more bottoms.

    bottoms: two or more of the same shape; top: that shape.
    - SUM: top = sum_i coeff_i * bottom_i (coeff all 1 when not given).
    - PROD: top = prod_i bottom_i.  Backward is the product of the other bottoms
      (``stable_prod_grad``, default) or top / bottom_i.
    - MAX: top = max_i bottom_i; the index of the winner is kept for backward, which
      routes the whole gradient to it.  Ties follow Caffe's CPU code: between bottoms 0
      and 1 the later one wins, for bottoms 2+ the earlier winner is kept.
    """
    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        coeff = [float(c) for c in p.coeff]
        if coeff and len(coeff) != len(bottom):
            raise CaffeishError(f"eltwise_param gives {len(coeff)} coeff values but the layer has {len(bottom)} "
                                "bottoms; give one coefficient per bottom, or none")
        if p.operation == PROD and coeff:
            raise CaffeishError("eltwise_param coeff is only for operation SUM, but operation is PROD")
        self.op = p.operation
        self.coeffs = coeff or [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self.max_idx = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], start=1):
            if b.shape != bottom[0].shape:
                raise CaffeishError(f"bottom[{i}] has shape {b.shape} but bottom[0] has shape {bottom[0].shape}; "
                                    "Eltwise needs all bottoms of the same shape")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        out = top[0].data
        xp = get_array_module(out)
        if self.op == PROD:
            xp.multiply(bottom[0].data, bottom[1].data, out=out)
            for b in bottom[2:]:
                out *= b.data
        elif self.op == SUM:
            out[...] = bottom[0].data if self.coeffs[0] == 1 else self.coeffs[0] * bottom[0].data
            for c, b in zip(self.coeffs[1:], bottom[1:]):
                if c == 1:
                    out += b.data
                else:
                    out += c * b.data
        elif self.op == MAX:
            a, b = bottom[0].data, bottom[1].data
            take_b = ~(a > b)  # Caffe: bottom 1 wins ties with bottom 0
            mask = take_b.astype(xp.int32)
            out[...] = xp.where(take_b, b, a)
            for i, blob in enumerate(bottom[2:], start=2):
                x = blob.data
                better = x > out  # strictly greater: the earlier winner keeps ties
                out[...] = xp.where(better, x, out)
                mask = xp.where(better, xp.int32(i), mask)
            self.max_idx = mask
        else:
            raise CaffeishError(f"unknown eltwise_param operation {self.op}")

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        xp = get_array_module(dy)
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == PROD:
                if self.stable_prod_grad:
                    others = [o for j, o in enumerate(bottom) if j != i]
                    grad = others[0].data * others[1].data if len(others) > 1 else others[0].data.copy()
                    for o in others[2:]:
                        grad *= o.data
                else:
                    grad = top[0].data / b.data
                b.diff[...] = grad * dy
            elif self.op == SUM:
                c = self.coeffs[i]
                b.diff[...] = dy if c == 1 else c * dy
            else:
                b.diff[...] = xp.where(self.max_idx == i, dy, 0)

"""Element-wise neuron layers ELU, Swish, Clip, AbsVal, BNLL, Power, Exp, Log and Threshold (bottom, top: any
shape, the same; all may run in place except AbsVal, which Caffe refuses).

Parameters are float fields: their values are the float32 roundings, as in Caffe.
"""
import math

from ...backend import get_array_module
from ...errors import CaffeishError
from ...layer import NeuronLayer, register_layer

#: Caffe's BNLL clamps x at this value before exp in backward.
BNLL_THRESHOLD = 50.0


class _KeepsInput(NeuronLayer):
    """A neuron layer whose backward reads x: running in place, forward saves a copy of it first.

    Where backward needs the input x and the layer runs in place (Clip, BNLL, Power, Log, ELU with
    alpha < 0), forward keeps a copy of x before overwriting it, as Caffe's PReLU does, so the gradient
    stays right (Caffe itself would read y there).
    """
    _saved_input = None

    def keeps_input(self):
        return True

    def save_input(self, bottom, top):
        in_place = top[0] is bottom[0] and self.keeps_input()
        self._saved_input = bottom[0].data.copy() if in_place else None

    def input_data(self, bottom):
        return self._saved_input if self._saved_input is not None else bottom[0].data


@register_layer("ELU")
class ELULayer(_KeepsInput):
    """y = max(x, 0) + alpha * (exp(min(x, 0)) - 1);  dy/dx = 1 for x > 0, y + alpha otherwise."""

    def layer_setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)

    def keeps_input(self):
        # In place, y > 0 exactly where x > 0 unless alpha < 0.
        return self.alpha < 0

    def forward(self, bottom, top):
        self.save_input(bottom, top)
        x = bottom[0].data
        xp = get_array_module(x)
        top[0].data[...] = xp.maximum(x, 0) + self.alpha * (xp.exp(xp.minimum(x, 0)) - 1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, dy = self.input_data(bottom), top[0].data, top[0].diff
        xp = get_array_module(dy)
        bottom[0].diff[...] = xp.where(x > 0, dy, dy * (y + self.alpha))


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta x);  dy/dx = beta y + sigmoid(beta x) (1 - beta y), from y and the kept sigmoid."""

    def layer_setup(self, bottom, top):
        self.beta = float(self.param.swish_param.beta)
        self.sigmoid = None

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        self.sigmoid = xp.tanh(x * (0.5 * self.beta)) * 0.5 + 0.5   # Caffe's stable sigmoid
        top[0].data[...] = x * self.sigmoid

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        by = top[0].data * self.beta
        bottom[0].diff[...] = top[0].diff * (by + self.sigmoid * (1 - by))


@register_layer("Clip")
class ClipLayer(_KeepsInput):
    """y = max(min, min(x, max));  the gradient passes where min <= x <= max (ends included, as Caffe)."""

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        if not (self.param.HasField("clip_param") and p.HasField("min") and p.HasField("max")):
            raise CaffeishError("Clip needs both clip_param.min and clip_param.max")
        self.min, self.max = float(p.min), float(p.max)
        if self.min > self.max:
            raise CaffeishError(f"clip_param.min ({self.min:g}) is greater than clip_param.max ({self.max:g})")

    def forward(self, bottom, top):
        self.save_input(bottom, top)
        x = bottom[0].data
        xp = get_array_module(x)
        top[0].data[...] = xp.maximum(xp.minimum(x, self.max), self.min)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.input_data(bottom)
        bottom[0].diff[...] = top[0].diff * ((x >= self.min) & (x <= self.max))


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """y = |x|;  dy/dx = sign(x) (0 at 0).  Not in place: Caffe refuses it, as y loses the sign."""

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise CaffeishError("AbsVal cannot run in place (backward needs the sign of the input); "
                                "give its top a name of its own")

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        xp.abs(x, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data
        xp = get_array_module(x)
        bottom[0].diff[...] = top[0].diff * xp.sign(x)


@register_layer("BNLL")
class BNLLLayer(_KeepsInput):
    """y = log(1 + exp(x)), as x + log(1 + exp(-x)) for x > 0;  dy/dx = e / (e + 1), e = exp(min(x, 50))."""

    def forward(self, bottom, top):
        self.save_input(bottom, top)
        x = bottom[0].data
        xp = get_array_module(x)
        # Both of Caffe's branches in one: exp(-|x|) is exp(-x) for x > 0 and exp(x) otherwise; never overflows.
        top[0].data[...] = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.input_data(bottom)
        xp = get_array_module(x)
        e = xp.exp(xp.minimum(x, BNLL_THRESHOLD))
        bottom[0].diff[...] = top[0].diff * (e / (e + 1))


@register_layer("Power")
class PowerLayer(_KeepsInput):
    """y = (shift + scale * x) ^ power.

    scale * power == 0 makes y constant: 1 when power is 0, else shift ^ power (and the gradient 0).
    Backward uses Caffe's forms: power 1 gives scale; power 2 gives 2 scale (shift + scale x);
    shift 0 gives power y / x; otherwise power scale y / (shift + scale x).
    """

    def layer_setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale

    def keeps_input(self):
        return self.diff_scale != 0 and self.power != 1

    def forward(self, bottom, top):
        if self.diff_scale == 0:
            if self.power == 0:
                value = 1.0
            else:
                with_dtype = self.dtype.type
                value = with_dtype(self.shift) ** with_dtype(self.power)
            top[0].data[...] = value
            self._saved_input = None
            return
        self.save_input(bottom, top)
        t = bottom[0].data
        xp = get_array_module(t)
        if self.scale != 1:
            t = t * self.scale
        if self.shift != 0:
            t = t + self.shift
        if self.power != 1:
            t = xp.power(t, self.power)
        top[0].data[...] = t

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.diff_scale == 0:
            bottom[0].diff[...] = 0
            return
        dy = top[0].diff
        if self.power == 1:
            bottom[0].diff[...] = dy * self.diff_scale
            return
        x = self.input_data(bottom)
        if self.power == 2:
            grad = x * (self.diff_scale * self.scale)
            if self.shift != 0:
                grad = grad + self.diff_scale * self.shift
        elif self.shift == 0:
            grad = top[0].data / x * self.power
        else:
            base = x * self.scale if self.scale != 1 else x
            grad = top[0].data / (base + self.shift) * self.diff_scale
        bottom[0].diff[...] = dy * grad


def _log_base(base, what):
    """log(base), 1 for Caffe's base -1 (meaning e); other bases must be positive."""
    if base == -1:
        return 1.0
    if not base > 0 or math.isinf(base):
        raise CaffeishError(f"{what}.base must be a positive number, or -1 for e; got {base:g}")
    return math.log(base)


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale * x), base -1 meaning e;  dy/dx = y * scale * log(base).  Backward reads y only."""

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        self.inner_scale = _log_base(base, "exp_param") * scale
        try:
            self.outer_scale = 1.0 if shift == 0 else (math.exp(shift) if base == -1 else base ** shift)
        except OverflowError:
            raise CaffeishError(f"exp_param: base^shift ({'e' if base == -1 else f'{base:g}'}^{shift:g}) overflows; "
                                "a smaller shift is needed") from None

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = get_array_module(x)
        y = xp.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        if self.outer_scale != 1:
            y *= self.outer_scale
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        grad = top[0].diff * top[0].data
        if self.inner_scale != 1:
            grad *= self.inner_scale
        bottom[0].diff[...] = grad


@register_layer("Log")
class LogLayer(_KeepsInput):
    """y = log_base(shift + scale * x), base -1 meaning e;  dy/dx = scale / (log(base) (shift + scale * x))."""

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        log_base = _log_base(float(p.base), "log_param")
        if log_base == 0:
            raise CaffeishError("log_param.base 1 has log(base) = 0, so no logarithm to that base exists")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = float(p.scale), float(p.shift)
        self.backward_scale = self.scale / log_base

    def _argument(self, x):
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x

    def forward(self, bottom, top):
        self.save_input(bottom, top)
        x = bottom[0].data
        xp = get_array_module(x)
        y = xp.log(self._argument(x))
        if self.base_scale != 1:
            y *= self.base_scale
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        inverse = 1 / self._argument(self.input_data(bottom))
        if self.backward_scale != 1:
            inverse *= self.backward_scale
        bottom[0].diff[...] = top[0].diff * inverse


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 where x > threshold, else 0.  No backward (Caffe's is not implemented)."""
    has_backward = False

    def layer_setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = (x > self.threshold).astype(top[0].data.dtype)

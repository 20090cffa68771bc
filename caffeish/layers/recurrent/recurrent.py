"""The recurrent layers (Caffe's RecurrentLayer family): RNN and LSTM, and LSTMUnit (one LSTM step).  Caffe
builds an unrolled net; this computes the same function directly, one vectorised step per time step.
"""
import numpy

from ...backend import get_array_module, to_cpu, to_current
from ...errors import CaffeishError
from ...layer import Layer, ParamBlob, register_layer


def _sigmoid(xp, x):
    return xp.tanh(x * 0.5) * 0.5 + 0.5


def lstm_step(xp, gates, c_prev, cont):
    """One LSTM step from pre-activation gates (N, 4H); ``cont`` (N, 1).  Returns (acts, c, tanh_c, h)."""
    H = c_prev.shape[-1]
    acts = xp.empty_like(gates)
    acts[:, :3 * H] = _sigmoid(xp, gates[:, :3 * H])
    acts[:, 3 * H:] = xp.tanh(gates[:, 3 * H:])
    i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    c = cont * f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return acts, c, tanh_c, o * tanh_c


def lstm_step_backward(xp, acts, c_prev, tanh_c, cont, dc, dh):
    """Gradients of one step: (d pre-activation gates (N, 4H), d c_prev) from dc, dh (the step's c and h)."""
    H = c_prev.shape[-1]
    i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = xp.empty_like(acts)
    dgates[:, :H] = dc * g * i * (1 - i)
    dgates[:, H:2 * H] = dc * cont * c_prev * f * (1 - f)
    dgates[:, 2 * H:3 * H] = dh * tanh_c * o * (1 - o)
    dgates[:, 3 * H:] = dc * i * (1 - g * g)
    return dgates, dc * cont * f


class _RecurrentLayer(Layer):
    """What RNN and LSTM share: blob counts, shapes, parameters, the carried state, the input transforms.

    Bottoms: x (T, N, ...) -- everything from axis 2 on is one input of D values; cont (T, N), where
    cont[t, n] == 0 starts a new sequence (the state carried into step t is multiplied by cont[t, n]);
    optionally x_static (N, ...), added to every step's pre-activation; with ``recurrent_param.expose_hidden``
    the initial state follows: h_0 (1, N, H) for RNN, h_0 and c_0 (1, N, H) for LSTM.
    Tops: the outputs (T, N, H); with expose_hidden also the final state (h_T for RNN, h_T and c_T for LSTM).
    H = ``recurrent_param.num_output``.

    As in Caffe: without expose_hidden the state at the end of one forward pass is the initial state of the
    next (zeros at first; ``reset()`` zeroes it), so cont == 0 at a sequence's first step is what separates
    sequences.  Gradients flow into x, x_static and the parameters, never across forward passes: with
    expose_hidden, the diffs of the h_T/c_T tops are ignored and h_0/c_0 receive no gradient (zero diff),
    which is what Caffe's unrolled net does.  Backpropagating into cont is an error.
    """
    #: names of the recurrent state blobs, in Caffe's bottom/top order
    state_names = ("h",)
    #: rows of the input weight matrices, as a multiple of num_output (4 for the LSTM's gates)
    gate_factor = 1

    def __init__(self, param, dtype=numpy.float32):
        super().__init__(param, dtype=dtype)
        self.expose_hidden = bool(param.recurrent_param.expose_hidden)
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.min_bottom = 2 + exposed
        self.max_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed
        self.carry = None

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # never into the sequence continuation indicators

    def param_specs(self, weight_filler, bias_filler):
        """The parameter blobs (ParamBlobs) in Caffe's order, for the sizes ``layer_setup`` found."""
        raise NotImplementedError

    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise CaffeishError(f"recurrent_param.num_output must be positive, got {self.num_output}")
        self.static_input = len(bottom) > 2 + (len(self.state_names) if self.expose_hidden else 0)
        self._check_inputs(bottom)
        self.D = bottom[0].count_range(2)
        self.D_static = bottom[2].count_range(1) if self.static_input else 0
        specs = self.param_specs(p.weight_filler, p.bias_filler)
        #: Caffe's names of the parameter blobs, in order (W_xc, b_c, ...)
        self.param_names = [spec.name for spec in specs]
        self.init_params(specs, f"with num_output {self.num_output}, input size {self.D}"
                         + (f" and static input size {self.D_static}" if self.static_input else ""))

    def _check_inputs(self, bottom):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise CaffeishError(f"{self.type}: bottom[0] must have at least 2 axes (timesteps, streams, ...), "
                                f"got shape {x.shape}")
        T, N = x.shape[:2]
        if cont.shape != (T, N):
            raise CaffeishError(f"{self.type}: bottom[1] (the sequence continuation indicators) must have shape "
                                f"(T, N) = {(T, N)} to match bottom[0] {x.shape}, got {cont.shape}")
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != N:
                raise CaffeishError(f"{self.type}: the static input bottom[2] must have shape (N, ...) with N = {N} "
                                    f"streams, got {xs.shape}")

    def reshape(self, bottom, top):
        self._check_inputs(bottom)
        x = bottom[0]
        T, N = x.shape[:2]
        if x.count_range(2) != self.D:
            raise CaffeishError(f"{self.type}: each step of bottom[0] {x.shape} has {x.count_range(2)} values, "
                                f"but the layer was set up for {self.D}")
        if self.static_input and bottom[2].count_range(1) != self.D_static:
            raise CaffeishError(f"{self.type}: the static input {bottom[2].shape} has {bottom[2].count_range(1)} "
                                f"values per stream, but the layer was set up for {self.D_static}")
        state_shape = (1, N, self.num_output)
        if self.expose_hidden:
            first = 2 + int(self.static_input)
            for j, name in enumerate(self.state_names):
                b = bottom[first + j]
                if b.shape != state_shape:
                    raise CaffeishError(f"{self.type}: the initial state {name}_0 (bottom[{first + j}]) must have "
                                        f"shape {state_shape}, got {b.shape}")
            for j in range(len(self.state_names)):
                top[1 + j].reshape(state_shape)
        elif self.carry is not None and self.carry[0].shape != state_shape:
            self.carry = None  # the batch changed: start from zeros
        self.T, self.N = T, N
        top[0].reshape((T, N, self.num_output))

    def reset(self):
        """Zero the state carried from one forward pass to the next (Caffe's RecurrentLayer::Reset)."""
        self.carry = None

    def _initial_state(self, bottom, xp):
        if self.expose_hidden:
            first = 2 + int(self.static_input)
            return [bottom[first + j].data.reshape(self.N, self.num_output) for j in range(len(self.state_names))]
        if self.carry is None:
            return [xp.zeros((self.N, self.num_output), dtype=self.dtype) for _ in self.state_names]
        return [s.reshape(self.N, self.num_output) for s in self.carry]

    def _finish_forward(self, top, final):
        if self.expose_hidden:
            for j, state in enumerate(final):
                top[1 + j].data[...] = state.reshape(top[1 + j].shape)
        else:
            self.carry = [state.reshape(1, self.N, self.num_output).copy() for state in final]

    def _input_transform(self, bottom):
        """W x_t + b (+ W_static x_static) for all steps: (T, N, rows)."""
        x = bottom[0].data.reshape(self.T * self.N, self.D)
        pre = x @ self.blobs[0].data.T + self.blobs[1].data
        pre = pre.reshape(self.T, self.N, -1)
        if self.static_input:
            xs = bottom[2].data.reshape(self.N, self.D_static)
            pre += (xs @ self.blobs[2].data.T)[None]
        return pre

    def _input_backward(self, bottom, propagate_down, dpre):
        """Parameter and bottom gradients of ``_input_transform`` given d pre-activations (T, N, rows)."""
        rows = dpre.shape[-1]
        flat = dpre.reshape(self.T * self.N, rows)
        if self.param_propagate_down[0]:
            self.blobs[0].diff += flat.T @ bottom[0].data.reshape(self.T * self.N, self.D)
        if self.param_propagate_down[1]:
            self.blobs[1].diff += flat.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff.reshape(self.T * self.N, self.D)[...] = flat @ self.blobs[0].data
        if self.static_input:
            dstatic = dpre.sum(axis=0)
            if self.param_propagate_down[2]:
                self.blobs[2].diff += dstatic.T @ bottom[2].data.reshape(self.N, self.D_static)
            if propagate_down[2]:
                bottom[2].diff.reshape(self.N, self.D_static)[...] = dstatic @ self.blobs[2].data
        if self.expose_hidden:  # Caffe's unrolled net sends nothing back into the initial state
            first = 2 + int(self.static_input)
            for j in range(len(self.state_names)):
                if first + j < len(propagate_down) and propagate_down[first + j]:
                    bottom[first + j].diff[...] = 0

    def _check_backward(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise CaffeishError(f"{self.type} layer cannot backpropagate to the sequence continuation indicators "
                                "(bottom[1])")

    def _cont(self, bottom):
        return bottom[1].data.reshape(self.T, self.N, 1).astype(self.dtype, copy=False)

    # -- the carried state is saved for exact resume -----------------------------------------------------------
    def get_state(self):
        if self.expose_hidden or self.carry is None:
            return None
        return {"type": self.type, "shape": list(self.carry[0].shape),
                "state": [to_cpu(s).ravel().tolist() for s in self.carry]}

    def set_state(self, state):
        values = state.get("state")
        if not values:
            self.carry = None
            return
        shape = tuple(int(d) for d in state.get("shape", ()))
        if len(values) != len(self.state_names) or any(len(v) != int(numpy.prod(shape)) for v in values):
            raise CaffeishError(f"the saved recurrent state does not fit this {self.type} layer "
                                f"({len(self.state_names)} state blobs of shape {shape} expected)",
                                layer=self.name, layer_type=self.type)
        self.carry = [to_current(numpy.asarray(v).reshape(shape), self.dtype) for v in values]


@register_layer("LSTM")
class LSTMLayer(_RecurrentLayer):
    """LSTM (bottoms and tops: see ``_RecurrentLayer``).

        gates_t = W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1});
        i, f, o = sigmoid(gates[0:H], [H:2H], [2H:3H]); g = tanh(gates[3H:4H])   (Caffe's LSTMUnit order)
        c_t = cont_t f c_{t-1} + i g;  h_t = o tanh(c_t);  top = h.
        Parameters, in Caffe's order: W_xc (4H, D), b_c (4H,), [W_xc_static (4H, D_static)], W_hc (4H, H).
    """
    state_names = ("h", "c")

    def param_specs(self, weight_filler, bias_filler):
        H = self.num_output
        specs = [ParamBlob("W_xc", (4 * H, self.D), weight_filler), ParamBlob("b_c", (4 * H,), bias_filler)]
        if self.static_input:
            specs.append(ParamBlob("W_xc_static", (4 * H, self.D_static), weight_filler))
        specs.append(ParamBlob("W_hc", (4 * H, H), weight_filler))
        return specs

    def forward(self, bottom, top):
        pre = self._input_transform(bottom)
        xp = get_array_module(pre)
        T, N, H = self.T, self.N, self.num_output
        cont = self._cont(bottom)
        W_hc = self.blobs[-1].data
        h0, c0 = self._initial_state(bottom, xp)
        h = xp.empty((T + 1, N, H), dtype=self.dtype)
        c = xp.empty((T + 1, N, H), dtype=self.dtype)
        tanh_c = xp.empty((T, N, H), dtype=self.dtype)
        acts = xp.empty((T, N, 4 * H), dtype=self.dtype)
        h[0], c[0] = h0, c0
        for t in range(T):
            gates = pre[t] + (cont[t] * h[t]) @ W_hc.T
            acts[t], c[t + 1], tanh_c[t], h[t + 1] = lstm_step(xp, gates, c[t], cont[t])
        self.h, self.c, self.tanh_c, self.acts = h, c, tanh_c, acts
        top[0].data[...] = h[1:]
        self._finish_forward(top, (h[T], c[T]))

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        xp = get_array_module(self.acts)
        T, N, H = self.T, self.N, self.num_output
        cont = self._cont(bottom)
        W_hc = self.blobs[-1].data
        dtop = top[0].diff
        dpre = xp.empty((T, N, 4 * H), dtype=self.dtype)
        dW_hc = xp.zeros((4 * H, H), dtype=self.dtype)
        dh_next = xp.zeros((N, H), dtype=self.dtype)
        dc_next = xp.zeros((N, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            dgates, dc_next = lstm_step_backward(xp, self.acts[t], self.c[t], self.tanh_c[t], cont[t],
                                                 dc_next, dtop[t] + dh_next)
            dpre[t] = dgates
            dW_hc += dgates.T @ (cont[t] * self.h[t])
            dh_next = (dgates @ W_hc) * cont[t]
        if self.param_propagate_down[-1]:
            self.blobs[-1].diff += dW_hc
        self._input_backward(bottom, propagate_down, dpre)


@register_layer("RNN")
class RNNLayer(_RecurrentLayer):
    """RNN (bottoms and tops: see ``_RecurrentLayer``).

        h_t = tanh(W_xh x_t + b_h [+ W_xh_static x_static] + W_hh (cont_t h_{t-1}));
        o_t = tanh(W_ho h_t + b_o);  top = o.
        Parameters: W_xh (H, D), b_h (H,), [W_xh_static (H, D_static)], W_hh (H, H), W_ho (H, H), b_o (H,).
    """
    state_names = ("h",)

    def param_specs(self, weight_filler, bias_filler):
        H = self.num_output
        specs = [ParamBlob("W_xh", (H, self.D), weight_filler), ParamBlob("b_h", (H,), bias_filler)]
        if self.static_input:
            specs.append(ParamBlob("W_xh_static", (H, self.D_static), weight_filler))
        specs += [ParamBlob("W_hh", (H, H), weight_filler), ParamBlob("W_ho", (H, H), weight_filler),
                  ParamBlob("b_o", (H,), bias_filler)]
        return specs

    def forward(self, bottom, top):
        pre = self._input_transform(bottom)
        xp = get_array_module(pre)
        T, N, H = self.T, self.N, self.num_output
        cont = self._cont(bottom)
        W_hh, W_ho, b_o = (b.data for b in self.blobs[-3:])
        (h0,) = self._initial_state(bottom, xp)
        h = xp.empty((T + 1, N, H), dtype=self.dtype)
        h[0] = h0
        for t in range(T):
            h[t + 1] = xp.tanh(pre[t] + (cont[t] * h[t]) @ W_hh.T)
        o = xp.tanh(h[1:].reshape(T * N, H) @ W_ho.T + b_o)
        self.h, self.o = h, o
        top[0].data[...] = o.reshape(T, N, H)
        self._finish_forward(top, (h[T],))

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        xp = get_array_module(self.o)
        T, N, H = self.T, self.N, self.num_output
        cont = self._cont(bottom)
        W_hh, W_ho = self.blobs[-3].data, self.blobs[-2].data
        do = top[0].diff.reshape(T * N, H) * (1 - self.o * self.o)
        if self.param_propagate_down[-2]:
            self.blobs[-2].diff += do.T @ self.h[1:].reshape(T * N, H)
        if self.param_propagate_down[-1]:
            self.blobs[-1].diff += do.sum(axis=0)
        dh_out = (do @ W_ho).reshape(T, N, H)
        dpre = xp.empty((T, N, H), dtype=self.dtype)
        dW_hh = xp.zeros((H, H), dtype=self.dtype)
        dh_next = xp.zeros((N, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            ht = self.h[t + 1]
            dp = (dh_out[t] + dh_next) * (1 - ht * ht)
            dpre[t] = dp
            dW_hh += dp.T @ (cont[t] * self.h[t])
            dh_next = (dp @ W_hh) * cont[t]
        if self.param_propagate_down[-3]:
            self.blobs[-3].diff += dW_hh
        self._input_backward(bottom, propagate_down, dpre)


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """LSTMUnit: one step of the LSTM formula (see ``LSTMLayer``).

    Bottoms: c_prev (1, N, H), gates x (1, N, 4H) (pre-activation, order i, f, o, g), cont (1, N);
    tops: c (1, N, H), h (1, N, H).
    """
    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # never into the sequence continuation indicators

    def reshape(self, bottom, top):
        c_prev, x, cont = bottom
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise CaffeishError(f"LSTMUnit: bottom[0] (the previous cell state) must have shape (1, N, H), "
                                f"got {c_prev.shape}")
        _, N, H = c_prev.shape
        if x.shape != (1, N, 4 * H):
            raise CaffeishError(f"LSTMUnit: bottom[1] (the gate inputs) must have shape (1, N, 4H) = "
                                f"{(1, N, 4 * H)} for bottom[0] {c_prev.shape}, got {x.shape}")
        if cont.shape != (1, N):
            raise CaffeishError(f"LSTMUnit: bottom[2] (the sequence continuation indicators) must have shape "
                                f"(1, N) = {(1, N)}, got {cont.shape}")
        self.N, self.H = N, H
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)

    def forward(self, bottom, top):
        gates = bottom[1].data.reshape(self.N, 4 * self.H)
        xp = get_array_module(gates)
        c_prev = bottom[0].data.reshape(self.N, self.H)
        cont = bottom[2].data.reshape(self.N, 1)
        self.acts, c, self.tanh_c, h = lstm_step(xp, gates, c_prev, cont)
        top[0].data[...] = c.reshape(top[0].shape)
        top[1].data[...] = h.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise CaffeishError("LSTMUnit layer cannot backpropagate to the sequence continuation indicators "
                                "(bottom[2])")
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = get_array_module(self.acts)
        N, H = self.N, self.H
        dgates, dc_prev = lstm_step_backward(
            xp, self.acts, bottom[0].data.reshape(N, H), self.tanh_c, bottom[2].data.reshape(N, 1),
            top[0].diff.reshape(N, H), top[1].diff.reshape(N, H))
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev.reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].diff[...] = dgates.reshape(bottom[1].shape)

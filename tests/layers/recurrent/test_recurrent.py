import math

import numpy
import pytest

import caffeish
from caffeish import CaffeishError, Net, caffe_pb2
from caffeish.prototxt import parse_text
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FILLERS = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.3 max: 0.3 }'


def recurrent(kind, H=3, expose=False, extra=""):
    caffeish.set_random_seed(7)
    return make_layer(f'type: "{kind}" recurrent_param {{ num_output: {H} {FILLERS} '
                      f'expose_hidden: {str(expose).lower()} }} {extra}')


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def lstm_reference(x, cont, params, H, xs=None, h0=None, c0=None):
    """Caffe's unrolled LSTM, one stream and one unit at a time."""
    T, N = x.shape[:2]
    X = x.reshape(T, N, -1)
    W_xc, b_c = params[0], params[1]
    W_s = params[2] if xs is not None else None
    W_hc = params[-1]
    h = numpy.zeros((N, H)) if h0 is None else h0.reshape(N, H).copy()
    c = numpy.zeros((N, H)) if c0 is None else c0.reshape(N, H).copy()
    out = numpy.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            hp = cont[t, n] * h[n]
            gates = W_xc @ X[t, n] + b_c + W_hc @ hp
            if W_s is not None:
                gates = gates + W_s @ xs[n].ravel()
            new_c, new_h = numpy.zeros(H), numpy.zeros(H)
            for k in range(H):
                i, f, o = sig(gates[k]), sig(gates[H + k]), sig(gates[2 * H + k])
                g = math.tanh(gates[3 * H + k])
                new_c[k] = cont[t, n] * f * c[n, k] + i * g
                new_h[k] = o * math.tanh(new_c[k])
            c[n], h[n] = new_c, new_h
            out[t, n] = new_h
    return out, h, c


def rnn_reference(x, cont, params, H, xs=None, h0=None):
    T, N = x.shape[:2]
    X = x.reshape(T, N, -1)
    W_xh, b_h = params[0], params[1]
    W_s = params[2] if xs is not None else None
    W_hh, W_ho, b_o = params[-3:]
    h = numpy.zeros((N, H)) if h0 is None else h0.reshape(N, H).copy()
    out = numpy.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            pre = W_xh @ X[t, n] + b_h + W_hh @ (cont[t, n] * h[n])
            if W_s is not None:
                pre = pre + W_s @ xs[n].ravel()
            h[n] = numpy.tanh(pre)
            out[t, n] = numpy.tanh(W_ho @ h[n] + b_o)
    return out, h


CONT = numpy.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])   # T=4, N=2, resets mid-sequence


def params_of(layer):
    return [b.data.copy() for b in layer.blobs]


# -- LSTM ---------------------------------------------------------------------------------------------------------

@checks_forward("LSTM")
@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_matches_step_by_step_reference(static):
    layer = recurrent("LSTM")
    x = blob((4, 2, 2, 1), low=-1, high=1)
    xs = blob((2, 3), rng=numpy.random.default_rng(5)) if static else None
    bottom = [x, blob(CONT)] + ([xs] if static else [])
    top = empty()
    layer.setup(bottom, top)
    H, D = 3, 2
    expected_shapes = [(4 * H, D), (4 * H,)] + ([(4 * H, 3)] if static else []) + [(4 * H, H)]
    assert [b.shape for b in layer.blobs] == expected_shapes
    assert layer.param_names == ["W_xc", "b_c"] + (["W_xc_static"] if static else []) + ["W_hc"]
    layer.Forward(bottom, top)
    expected, _, _ = lstm_reference(x.data, CONT, params_of(layer), H, xs=xs.data if static else None)
    assert top[0].shape == (4, 2, 3)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12, atol=1e-14)


def test_lstm_cont_zero_resets_the_state():
    layer = recurrent("LSTM")
    x = blob((4, 2, 2), low=-1, high=1)
    top = empty()
    layer.setup([x, blob(CONT)], top)
    layer.Forward([x, blob(CONT)], top)
    # Stream 1 restarts at t=2: its steps 2.. equal a fresh run on those steps alone.
    tail = blob(x.data[2:, 1:2].copy())
    fresh = recurrent("LSTM")
    ftop = empty()
    fresh.setup([tail, blob(numpy.array([[0.0], [1.0]]))], ftop)
    fresh.Forward([tail, blob(numpy.array([[0.0], [1.0]]))], ftop)
    numpy.testing.assert_allclose(top[0].data[2:, 1:2], ftop[0].data, rtol=1e-12)


def test_lstm_carries_state_between_forward_passes_like_caffe():
    layer = recurrent("LSTM")
    x1, x2 = blob((2, 2, 2), low=-1, high=1), blob((2, 2, 2), rng=numpy.random.default_rng(9))
    ones = blob(numpy.ones((2, 2)))
    top = empty()
    layer.setup([x1, blob(numpy.array([[0.0, 0.0], [1.0, 1.0]]))], top)
    layer.Forward([x1, blob(numpy.array([[0.0, 0.0], [1.0, 1.0]]))], top)
    _, hT, cT = lstm_reference(x1.data, numpy.array([[0.0, 0.0], [1.0, 1.0]]), params_of(layer), 3)
    layer.Forward([x2, ones], top)
    expected, _, _ = lstm_reference(x2.data, numpy.ones((2, 2)), params_of(layer), 3, h0=hT, c0=cT)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    # The carried state is saved for exact resume, and restored.
    state = layer.get_state()
    other = recurrent("LSTM")
    otop = empty()
    other.setup([x2, ones], otop)
    other.set_state(state)
    other.Forward([x2, ones], otop)
    layer.Forward([x2, ones], top)
    numpy.testing.assert_array_equal(otop[0].data, top[0].data)
    layer.reset()
    layer.Forward([x2, ones], top)
    expected, _, _ = lstm_reference(x2.data, numpy.ones((2, 2)), params_of(layer), 3)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12)


def test_lstm_expose_hidden():
    layer = recurrent("LSTM", expose=True)
    x = blob((3, 2, 2), low=-1, high=1)
    cont = blob(numpy.ones((3, 2)))
    h0, c0 = blob((1, 2, 3), rng=numpy.random.default_rng(3)), blob((1, 2, 3), rng=numpy.random.default_rng(4))
    top = empty(3)
    layer.setup([x, cont, h0, c0], top)
    layer.Forward([x, cont, h0, c0], top)
    expected, hT, cT = lstm_reference(x.data, cont.data, params_of(layer), 3, h0=h0.data, c0=c0.data)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    numpy.testing.assert_allclose(top[1].data, hT[None], rtol=1e-12)
    numpy.testing.assert_allclose(top[2].data, cT[None], rtol=1e-12)
    assert layer.get_state() is None
    with pytest.raises(CaffeishError, match=r"c_0 \(bottom\[3\]\) must have shape \(1, 2, 3\)"):
        layer.Forward([x, cont, h0, blob((1, 2, 4))], top)


@checks_gradient("LSTM")
@pytest.mark.parametrize("static", [False, True])
def test_lstm_gradient(static):
    layer = recurrent("LSTM")
    x = blob((3, 2, 2), low=-1, high=1)
    cont = blob(numpy.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))   # first step 0: carried state irrelevant
    bottom = [x, cont] + ([blob((2, 2), rng=numpy.random.default_rng(8))] if static else [])
    check_gradient(layer, bottom, empty(), check_bottom=[0, 2] if static else [0])


def test_lstm_expose_hidden_gradient_like_caffe():
    """Gradients reach x and the parameters; h_0 and c_0 get none (Caffe's unrolled net sends none)."""
    layer = recurrent("LSTM", expose=True)
    x = blob((3, 2, 2), low=-1, high=1)
    cont = blob(numpy.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]))
    h0, c0 = blob((1, 2, 3), rng=numpy.random.default_rng(3)), blob((1, 2, 3), rng=numpy.random.default_rng(4))
    bottom, top = [x, cont, h0, c0], empty(3)
    layer.setup(bottom, top)
    for k in (0, 7, 17):
        check_gradient(layer, bottom, top, check_bottom=[0], top_id=0, top_data_id=k, setup=False)
    h0.diff[...] = c0.diff[...] = 5.0
    layer.backward(top, [True, False, True, True], bottom)
    assert not h0.diff.any() and not c0.diff.any()


def test_lstm_errors():
    x = blob((3, 2, 2))
    with pytest.raises(CaffeishError, match=r"must have shape \(T, N\) = \(3, 2\)"):
        recurrent("LSTM").setup([x, blob(numpy.ones((3, 3)))], empty())
    with pytest.raises(CaffeishError, match="num_output must be positive"):
        make_layer('type: "LSTM"').setup([x, blob(numpy.ones((3, 2)))], empty())
    with pytest.raises(CaffeishError, match="at least 2 bottom"):
        recurrent("LSTM").setup([x], empty())
    with pytest.raises(CaffeishError, match="exactly 3 top"):
        recurrent("LSTM", expose=True).setup([x, blob(numpy.ones((3, 2))), blob((1, 2, 3)), blob((1, 2, 3))],
                                             empty())
    layer = recurrent("LSTM")
    top = empty()
    layer.setup([x, blob(numpy.ones((3, 2)))], top)
    layer.Forward([x, blob(numpy.ones((3, 2)))], top)
    with pytest.raises(CaffeishError, match="continuation indicators"):
        layer.backward(top, [True, True], [x, blob(numpy.ones((3, 2)))])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(CaffeishError, match="set up for 2"):
        layer.Forward([blob((3, 2, 3)), blob(numpy.ones((3, 2)))], top)


def test_lstm_in_a_net_loads_caffe_shaped_weights():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "cont" top: "y"
            input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 3 dim: 2 dim: 5 } } }
    layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
            recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }
    """
    caffeish.set_random_seed(1)
    net = Net(parse_text(text, caffe_pb2.NetParameter()), caffeish.TRAIN, dtype=numpy.float64)
    assert [b.shape for b in net.params["lstm"]] == [(20, 4), (20,), (20, 5)]
    trained = net.to_proto()
    for bp in trained.layer[1].blobs:   # as Caffe writes them: float data, 2-D weights
        n = len(bp.double_data)
        del bp.double_data[:]
        bp.data.extend([0.01 * k for k in range(n)])
    net.copy_from(trained)
    numpy.testing.assert_allclose(net.params["lstm"][2].data.ravel()[:3], [0.0, 0.01, 0.02])
    net.blobs["x"].data[...] = numpy.random.default_rng(0).uniform(-1, 1, (3, 2, 4))
    net.blobs["cont"].data[...] = [[0, 0], [1, 1], [1, 1]]
    net.clear_param_diffs()
    net.forward_backward()
    assert all(b.diff.any() for b in net.params["lstm"])


# -- RNN ----------------------------------------------------------------------------------------------------------

@checks_forward("RNN")
@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward_matches_reference(static):
    layer = recurrent("RNN")
    x = blob((4, 2, 3), low=-1, high=1)
    xs = blob((2, 2, 1), rng=numpy.random.default_rng(5)) if static else None
    bottom = [x, blob(CONT)] + ([xs] if static else [])
    top = empty()
    layer.setup(bottom, top)
    H = 3
    assert [b.shape for b in layer.blobs] == [(H, 3), (H,)] + ([(H, 2)] if static else []) + [(H, H), (H, H), (H,)]
    assert layer.param_names == ["W_xh", "b_h"] + (["W_xh_static"] if static else []) + ["W_hh", "W_ho", "b_o"]
    layer.Forward(bottom, top)
    expected, _ = rnn_reference(x.data, CONT, params_of(layer), H, xs=xs.data if static else None)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12, atol=1e-14)


def test_rnn_expose_hidden():
    layer = recurrent("RNN", expose=True)
    x, cont, h0 = blob((3, 2, 2)), blob(numpy.ones((3, 2))), blob((1, 2, 3), rng=numpy.random.default_rng(2))
    top = empty(2)
    layer.setup([x, cont, h0], top)
    layer.Forward([x, cont, h0], top)
    expected, hT = rnn_reference(x.data, cont.data, params_of(layer), 3, h0=h0.data)
    numpy.testing.assert_allclose(top[0].data, expected, rtol=1e-12)
    numpy.testing.assert_allclose(top[1].data, hT[None], rtol=1e-12)


@checks_gradient("RNN")
@pytest.mark.parametrize("static", [False, True])
def test_rnn_gradient(static):
    layer = recurrent("RNN")
    x = blob((3, 2, 2), low=-1, high=1)
    cont = blob(numpy.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]))
    bottom = [x, cont] + ([blob((2, 3), rng=numpy.random.default_rng(8))] if static else [])
    check_gradient(layer, bottom, empty(), check_bottom=[0, 2] if static else [0])


# -- LSTMUnit -----------------------------------------------------------------------------------------------------

@checks_forward("LSTMUnit")
def test_lstm_unit_forward():
    N, H = 3, 2
    c_prev = blob((1, N, H), rng=numpy.random.default_rng(1))
    gates = blob((1, N, 4 * H), low=-2, high=2)
    cont = blob(numpy.array([[1.0, 0.0, 1.0]]))
    layer = make_layer('type: "LSTMUnit"')
    top = empty(2)
    layer.setup([c_prev, gates, cont], top)
    layer.Forward([c_prev, gates, cont], top)
    for n in range(N):
        for k in range(H):
            x = gates.data[0, n]
            i, f, o, g = sig(x[k]), sig(x[H + k]), sig(x[2 * H + k]), math.tanh(x[3 * H + k])
            c = cont.data[0, n] * f * c_prev.data[0, n, k] + i * g
            assert top[0].data[0, n, k] == pytest.approx(c, rel=1e-12)
            assert top[1].data[0, n, k] == pytest.approx(o * math.tanh(c), rel=1e-12)


def test_lstm_unit_shape_errors():
    layer = make_layer('type: "LSTMUnit"')
    with pytest.raises(CaffeishError, match=r"\(1, N, 4H\)"):
        layer.setup([blob((1, 2, 3)), blob((1, 2, 8)), blob(numpy.ones((1, 2)))], empty(2))
    with pytest.raises(CaffeishError, match=r"\(1, N\) = \(1, 2\)"):
        layer.setup([blob((1, 2, 3)), blob((1, 2, 12)), blob(numpy.ones((2, 1)))], empty(2))
    assert not layer.allow_force_backward(2)


@checks_gradient("LSTMUnit")
def test_lstm_unit_gradient():
    c_prev = blob((1, 2, 3), rng=numpy.random.default_rng(1))
    gates = blob((1, 2, 12), low=-2, high=2)
    cont = blob(numpy.array([[1.0, 0.0]]))
    check_gradient(make_layer('type: "LSTMUnit"'), [c_prev, gates, cont], empty(2), check_bottom=[0, 1])

import numpy
import pytest

from caffeish import caffe_pb2
from caffeish.errors import CaffeishError
from caffeish.net import Net
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def bn_layer(params="", phase=caffe_pb2.TRAIN, extra=""):
    return make_layer(f'type: "BatchNorm" batch_norm_param {{ {params} }} {extra}', phase=phase)


def loop_stats(x):
    """Per-channel mean and biased variance over every axis but 1, by explicit loops."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    mean, var = numpy.zeros(c), numpy.zeros(c)
    for ch in range(c):
        values = [flat[i, ch, j] for i in range(n) for j in range(flat.shape[2])]
        mean[ch] = sum(values) / len(values)
        var[ch] = sum((v - mean[ch]) ** 2 for v in values) / len(values)
    return mean, var


def f32(value):
    """Proto floats are single precision."""
    return float(numpy.float32(value))


def normalise(x, mean, var, eps):
    eps = f32(eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / numpy.sqrt(var.reshape(shape) + eps)


@checks_forward("BatchNorm")
@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (4, 3), (2, 3, 2, 2, 2)])
def test_batch_norm_train_forward_and_running_sums(shape):
    layer = bn_layer("moving_average_fraction: 0.9 eps: 0.001")
    x1, x2 = blob(shape, rng=numpy.random.default_rng(1)), blob(shape, rng=numpy.random.default_rng(2))
    top = empty()
    layer.setup([x1], top)
    assert not layer.use_global_stats
    assert [b.shape for b in layer.blobs] == [(shape[1],), (shape[1],), (1,)]
    layer.Forward([x1], top)
    m1, v1 = loop_stats(x1.data)
    numpy.testing.assert_allclose(top[0].data, normalise(x1.data, m1, v1, 1e-3), rtol=1e-10, atol=1e-12)
    layer.Forward([x2], top)
    m2, v2 = loop_stats(x2.data)
    numpy.testing.assert_allclose(top[0].data, normalise(x2.data, m2, v2, 1e-3), rtol=1e-10, atol=1e-12)
    m = x1.count // shape[1]
    corr = m / (m - 1)
    maf = f32(0.9)
    numpy.testing.assert_allclose(layer.blobs[2].data, [maf * 1 + 1], rtol=1e-15)
    numpy.testing.assert_allclose(layer.blobs[0].data, maf * m1 + m2, rtol=1e-12)
    numpy.testing.assert_allclose(layer.blobs[1].data, maf * corr * v1 + corr * v2, rtol=1e-12)


@checks_forward("BatchNorm")
def test_batch_norm_test_phase_uses_global_stats():
    layer = bn_layer("eps: 0.01", phase=caffe_pb2.TEST)
    x = blob((2, 3, 2, 2))
    top = empty()
    layer.setup([x], top)
    assert layer.use_global_stats
    layer.blobs[0].data[...] = [1.0, -2.0, 0.5]
    layer.blobs[1].data[...] = [4.0, 2.0, 8.0]
    layer.blobs[2].data[...] = 2.0
    before = [b.data.copy() for b in layer.blobs]
    layer.Forward([x], top)
    mean, var = numpy.array([0.5, -1.0, 0.25]), numpy.array([2.0, 1.0, 4.0])
    numpy.testing.assert_allclose(top[0].data, normalise(x.data, mean, var, 0.01), rtol=1e-12)
    for b, old in zip(layer.blobs, before):  # global statistics are only read
        numpy.testing.assert_array_equal(b.data, old)


def test_batch_norm_zero_scale_factor_means_zero_statistics():
    layer = bn_layer(phase=caffe_pb2.TEST)
    x = blob((2, 2, 3))
    top = empty()
    layer.setup([x], top)
    layer.blobs[0].data[...] = 5.0
    layer.blobs[1].data[...] = 5.0
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data, x.data / numpy.sqrt(1e-5), rtol=1e-6)


def test_batch_norm_use_global_stats_overrides_phase():
    train_global = bn_layer("use_global_stats: true")
    test_batch = bn_layer("use_global_stats: false", phase=caffe_pb2.TEST)
    x = blob((3, 2, 2, 2))
    for layer, expect in ((train_global, True), (test_batch, False)):
        top = empty()
        layer.setup([x], top)
        assert layer.use_global_stats is expect
        layer.Forward([x], top)
        assert float(layer.blobs[2].data[0]) == (0.0 if expect else 1.0)


def test_batch_norm_in_place_and_float32():
    x = blob((4, 3, 2, 2), dtype=numpy.float32)
    expect = normalise(x.data.astype(float), *loop_stats(x.data.astype(float)), 1e-5)
    layer = make_layer('type: "BatchNorm"', dtype=numpy.float32)
    layer.setup([x], [x])
    layer.Forward([x], [x])
    assert x.data.dtype == numpy.float32
    numpy.testing.assert_allclose(x.data, expect, rtol=1e-4, atol=1e-5)
    x.diff[...] = 1.0  # a constant gradient is removed entirely by the mean subtraction
    layer.backward([x], [True], [x])
    numpy.testing.assert_allclose(x.diff, 0.0, atol=1e-5)


def test_batch_norm_sets_zero_lr_mult_param_specs():
    layer = bn_layer()
    layer.setup([blob((2, 3))], empty())
    assert [p.lr_mult for p in layer.param.param] == [0.0, 0.0, 0.0]
    assert layer.param_propagate_down == [False, False, False]
    partial = bn_layer(extra="param { lr_mult: 0 }")
    partial.setup([blob((2, 3))], empty())
    assert len(partial.param.param) == 3
    with pytest.raises(CaffeishError, match="param 1 has lr_mult 1"):
        bn_layer(extra="param { lr_mult: 0 } param { lr_mult: 1 }").setup([blob((2, 3))], empty())


def test_batch_norm_in_a_net_is_not_learned():
    net = Net(_net_param(), caffe_pb2.TRAIN, dtype=numpy.float64)
    bn = net.layer_dict["bn"]
    assert bn.param_propagate_down == [False, False, False]
    assert net.params_lr == [0.0, 0.0, 0.0]


def _net_param():
    from caffeish.prototxt import parse_text
    return parse_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } } '
                      'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }', caffe_pb2.NetParameter())


def test_batch_norm_errors():
    with pytest.raises(CaffeishError, match="3 blobs"):
        make_layer('type: "BatchNorm" blobs { shape { dim: 3 } }').setup([blob((2, 3))], empty())
    layer = bn_layer()
    layer.setup([blob((2, 3))], empty())
    with pytest.raises(CaffeishError, match="4 channels.*set up for 3"):
        layer.Forward([blob((2, 4))], empty())


@checks_gradient("BatchNorm")
@pytest.mark.parametrize("params,phase,shape", [
    ("", caffe_pb2.TRAIN, (3, 2, 2, 3)),
    ("eps: 0.1", caffe_pb2.TRAIN, (5, 3)),
    ("", caffe_pb2.TEST, (2, 3, 2, 2)),
])
def test_batch_norm_gradient(params, phase, shape):
    layer = bn_layer(params, phase=phase)
    x = blob(shape)
    top = empty()
    layer.setup([x], top)
    if phase == caffe_pb2.TEST:
        layer.blobs[0].data[...] = numpy.arange(shape[1]) * 0.3
        layer.blobs[1].data[...] = numpy.arange(1, shape[1] + 1) * 0.7
        layer.blobs[2].data[...] = 0.8
    check_gradient(layer, [x], top, check_params=False, setup=False)

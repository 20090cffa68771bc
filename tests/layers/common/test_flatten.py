import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.prototxt import parse_text
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@checks_forward("Flatten")
@pytest.mark.parametrize("param, shape, expected", [
    ("", (2, 3, 4, 5), (2, 60)),
    ("flatten_param { axis: 0 }", (2, 3, 4), (24,)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 3, 4, 5), (2, 12, 5)),
    ("flatten_param { axis: -2 }", (2, 3, 4, 5), (2, 3, 20)),
    ("flatten_param { axis: 2 end_axis: -2 }", (2, 3, 4, 5), (2, 3, 4, 5)),
    ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 4), (2, 3, 1, 4)),  # Caffe's count(2, 2) == 1
])
def test_flatten_forward(param, shape, expected):
    layer = make_layer(f'type: "Flatten" {param}')
    bottom = [blob(shape)]
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    assert top[0].shape == expected
    numpy.testing.assert_array_equal(top[0].data, bottom[0].data.reshape(expected))
    assert top[0].shares_data_with(bottom[0])


def test_flatten_shares_diff():
    layer = make_layer('type: "Flatten"')
    bottom = [blob((2, 3, 2))]
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    top[0].diff[...] = numpy.arange(12.0).reshape(2, 6)
    layer.Backward(top, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.arange(12.0).reshape(2, 3, 2))


def test_flatten_errors():
    with pytest.raises(CaffeishError, match="out of range"):
        make_layer('type: "Flatten" flatten_param { axis: 3 }').setup([blob((2, 3))], empty())
    with pytest.raises(CaffeishError, match="end_axis 0 .* comes before axis 2"):
        make_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 0 }').setup([blob((2, 3, 4))], empty())
    x = blob((2, 3))
    with pytest.raises(CaffeishError, match="in place"):
        make_layer('type: "Flatten"').setup([x], [x])


@checks_gradient("Flatten")
@pytest.mark.parametrize("param", ["", "flatten_param { axis: 0 end_axis: 1 }"])
def test_flatten_gradient(param):
    check_gradient(make_layer(f'type: "Flatten" {param}'), [blob((2, 3, 2, 2))], empty())


NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
layer { name: "flat" type: "%s" bottom: "x" top: "f" %s }
layer { name: "relu" type: "ReLU" bottom: "f" top: "r" }
"""


@pytest.mark.parametrize("kind, param", [("Flatten", ""), ("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }")])
def test_gradient_arrives_through_net(kind, param):
    net = caffeish.Net(parse_text(NET % (kind, param), caffe_pb2.NetParameter()), caffeish.TRAIN,
                       dtype=numpy.float64)
    rng = numpy.random.default_rng(0)
    for n in (2, 5, 1):  # the batch grows and shrinks: the sharing must follow the bottom's buffer
        x = rng.uniform(-1, 1, (n, 3, 2))
        out = net.forward(x=x)["r"]
        numpy.testing.assert_array_equal(out, numpy.maximum(x, 0).reshape(n, 6))
        dr = rng.uniform(-1, 1, (n, 6))
        dx = net.backward(r=dr)["x"]
        numpy.testing.assert_array_equal(dx, (dr * (x.reshape(n, 6) > 0)).reshape(n, 3, 2))

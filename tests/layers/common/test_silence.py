import numpy
import pytest

import caffeish
from caffeish import CaffeishError, caffe_pb2
from caffeish.prototxt import parse_text
from gradient_check import checks_forward, checks_gradient
from helpers import blob, make_layer


@checks_forward("Silence")
def test_silence_forward_leaves_bottoms_alone():
    layer = make_layer('type: "Silence"')
    bottom = [blob((2, 3)), blob((4,))]
    before = [b.data.copy() for b in bottom]
    layer.setup(bottom, [])
    assert layer.Forward(bottom, []) == 0.0
    for b, d in zip(bottom, before):
        numpy.testing.assert_array_equal(b.data, d)


@checks_gradient("Silence")
def test_silence_backward_zeroes_diffs():
    # The gradient checker's objective needs a top; Silence has none, and its gradient is 0 by definition.
    layer = make_layer('type: "Silence"')
    bottom = [blob((2, 3)), blob((4,)), blob((1, 2))]
    layer.setup(bottom, [])
    for b in bottom:
        b.diff[...] = 5.0
    assert layer.has_backward
    layer.Backward([], [True, False, True], bottom)
    assert (bottom[0].diff == 0).all()
    assert (bottom[1].diff == 5.0).all()
    assert (bottom[2].diff == 0).all()


def test_silence_counts():
    with pytest.raises(CaffeishError, match="at least 1 bottom"):
        make_layer('type: "Silence"').setup([], [])
    with pytest.raises(CaffeishError, match="exactly 0 top"):
        make_layer('type: "Silence"').setup([blob((2,))], [blob((2,))])


def test_silence_in_net_hides_output():
    net = caffeish.Net(parse_text("""
        layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 } } }
        layer { name: "s" type: "Silence" bottom: "y" }
    """, caffe_pb2.NetParameter()), caffeish.TEST)
    assert net.outputs == ["x"]

import numpy

from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


@checks_forward("Split")
def test_split_forward_shares_data():
    layer = make_layer('type: "Split"')
    x = blob((2, 3))
    top = empty(3)
    layer.setup([x], top)
    layer.Forward([x], top)
    for t in top:
        numpy.testing.assert_array_equal(t.data, x.data)
    x.data[0, 0] = 42.0
    assert top[2].data[0, 0] == 42.0


@checks_gradient("Split")
def test_split_gradient():
    check_gradient(make_layer('type: "Split"'), [blob((2, 3, 2))], empty(2))

from gradient_check import checks_forward
from helpers import empty, make_layer


@checks_forward("Input")
def test_input_shapes():
    layer = make_layer('type: "Input" input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } }')
    top = empty(2)
    layer.setup([], top)
    assert top[0].shape == (2, 3) and top[1].shape == (4,)

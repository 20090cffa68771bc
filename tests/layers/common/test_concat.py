import numpy
import pytest

from caffeish import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def _bottoms(shapes, seed=0):
    rng = numpy.random.default_rng(seed)
    return [blob(s, rng=rng) for s in shapes]


@checks_forward("Concat")
@pytest.mark.parametrize("param, shapes, axis", [
    ("", [(2, 3, 2), (2, 1, 2), (2, 4, 2)], 1),
    ("concat_param { axis: 0 }", [(1, 3, 2), (3, 3, 2)], 0),
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 4)], 2),
    ("concat_param { axis: 2 }", [(2, 1, 3, 2), (2, 1, 1, 2)], 2),
    ("concat_param { concat_dim: 0 }", [(2, 3), (1, 3), (4, 3)], 0),
])
def test_concat_forward(param, shapes, axis):
    layer = make_layer(f'type: "Concat" {param}')
    bottom = _bottoms(shapes)
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    ref = numpy.concatenate([b.data for b in bottom], axis=axis)
    assert top[0].shape == ref.shape
    numpy.testing.assert_array_equal(top[0].data, ref)
    # A second pass with a new batch size reshapes the top.
    bigger = _bottoms([tuple(s[:0]) + (s[0] + (axis != 0),) + tuple(s[1:]) for s in shapes], seed=1)
    layer.Forward(bigger, top)
    numpy.testing.assert_array_equal(top[0].data, numpy.concatenate([b.data for b in bigger], axis=axis))


def test_concat_single_bottom_shares_data_and_diff():
    layer = make_layer('type: "Concat"')
    bottom = _bottoms([(2, 3)])
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    numpy.testing.assert_array_equal(top[0].data, bottom[0].data)
    assert top[0].shares_data_with(bottom[0])
    top[0].diff[...] = 7.0
    layer.backward(top, [True], bottom)
    assert (bottom[0].diff == 7.0).all()


def test_concat_backward_respects_propagate_down():
    layer = make_layer('type: "Concat"')
    bottom = _bottoms([(2, 2), (2, 3)])
    top = empty()
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    bottom[0].diff[...] = -1.0
    top[0].diff[...] = numpy.arange(10.0).reshape(2, 5)
    layer.backward(top, [False, True], bottom)
    assert (bottom[0].diff == -1.0).all()
    numpy.testing.assert_array_equal(bottom[1].diff, numpy.arange(10.0).reshape(2, 5)[:, 2:])


def test_concat_shape_mismatch_names_bottom():
    layer = make_layer('type: "Concat"')
    with pytest.raises(CaffeishError) as err:
        layer.setup(_bottoms([(2, 3, 4), (2, 1, 4), (2, 3, 5)]), empty())
    msg = str(err.value)
    assert "bottom[2]" in msg and "(2, 3, 5)" in msg and "(2, 3, 4)" in msg


def test_concat_axes_count_mismatch():
    with pytest.raises(CaffeishError, match=r"bottom\[1\].*\(2, 3\)"):
        make_layer('type: "Concat"').setup(_bottoms([(2, 3, 1), (2, 3)]), empty())


def test_concat_bad_params():
    with pytest.raises(CaffeishError, match="both axis"):
        make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }').setup(_bottoms([(2, 3)] * 2), empty())
    with pytest.raises(CaffeishError, match="concat_dim 2 is out of range"):
        make_layer('type: "Concat" concat_param { concat_dim: 2 }').setup(_bottoms([(2, 3)] * 2), empty())
    with pytest.raises(CaffeishError, match="out of range"):
        make_layer('type: "Concat" concat_param { axis: -3 }').setup(_bottoms([(2, 3)] * 2), empty())
    with pytest.raises(CaffeishError, match="at least 1 bottom"):
        make_layer('type: "Concat"').setup([], empty())


@checks_gradient("Concat")
@pytest.mark.parametrize("param, shapes", [
    ("", [(2, 1, 3), (2, 2, 3), (2, 3, 3)]),
    ("concat_param { axis: 0 }", [(1, 2, 3), (2, 2, 3)]),
    ("concat_param { axis: -1 }", [(2, 2, 1), (2, 2, 2)]),
    ("", [(2, 3, 2)]),
])
def test_concat_gradient(param, shapes):
    check_gradient(make_layer(f'type: "Concat" {param}'), _bottoms(shapes), empty())

import math

import numpy
import pytest

from caffeish import Blob, CaffeishError, caffe_pb2, set_random_seed
from caffeish.fillers import fill


def filled(shape, **kw):
    set_random_seed(5)
    b = Blob(shape, dtype=numpy.float64)
    fill(b, caffe_pb2.FillerParameter(**kw))
    return b.data


def test_constant_and_uniform():
    assert (filled((3, 4), type="constant", value=0.25) == 0.25).all()
    u = filled((200, 50), type="uniform", min=-2, max=3)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05


def test_gaussian_and_sparse():
    g = filled((400, 50), type="gaussian", mean=1, std=2)
    assert abs(g.mean() - 1) < 0.05 and abs(g.std() - 2) < 0.05
    s = filled((100, 400), type="gaussian", std=1, sparse=20)
    assert abs((s != 0).mean() - 0.2) < 0.01


def test_positive_unitball_rows_sum_to_one():
    p = filled((10, 3, 2), type="positive_unitball")
    assert (p >= 0).all()
    numpy.testing.assert_allclose(p.reshape(10, -1).sum(1), 1)


@pytest.mark.parametrize("norm, n", [("FAN_IN", 3 * 25), ("FAN_OUT", 200 * 25), ("AVERAGE", (75 + 5000) / 2)])
def test_xavier_and_msra_scale(norm, n):
    vn = caffe_pb2.FillerParameter.VarianceNorm.Value(norm)
    x = filled((200, 3, 5, 5), type="xavier", variance_norm=vn)
    assert abs(x).max() <= math.sqrt(3 / n) and abs(x).max() > 0.95 * math.sqrt(3 / n)
    m = filled((200, 3, 5, 5), type="msra", variance_norm=vn)
    assert abs(m.std() - math.sqrt(2 / n)) < 0.03 * math.sqrt(2 / n)


def test_bilinear_matches_caffe_formula():
    b = filled((2, 1, 4, 4), type="bilinear")
    f = math.ceil(4 / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    for y in range(4):
        for x in range(4):
            assert b[1, 0, y, x] == pytest.approx((1 - abs(x / f - c)) * (1 - abs(y / f - c)))
    with pytest.raises(CaffeishError, match="bilinear"):
        filled((2, 3), type="bilinear")


def test_unknown_filler_lists_known():
    with pytest.raises(CaffeishError, match="unknown filler type 'xavieer'.*xavier"):
        filled((2,), type="xavieer")

import math

import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def mvn_layer(params=""):
    return make_layer(f'type: "MVN" mvn_param {{ {params} }}')


def loop_mvn(x, normalize_variance, across_channels, eps):
    """Caffe's MVN, one (image) or (image, channel) group at a time."""
    x4 = x.reshape(x.shape + (1,) * (4 - x.ndim))
    out = numpy.zeros_like(x4)
    n, c = x4.shape[:2]
    groups = [(i, slice(None)) for i in range(n)] if across_channels else \
        [(i, ch) for i in range(n) for ch in range(c)]
    for i, ch in groups:
        values = x4[i, ch].ravel().tolist()
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        scale = std + eps if normalize_variance else 1.0
        out[i, ch] = (x4[i, ch] - mean) / scale
    return out


@checks_forward("MVN")
@pytest.mark.parametrize("params,normalize,across", [
    ("", True, False),
    ("across_channels: true", True, True),
    ("normalize_variance: false", False, False),
    ("normalize_variance: false across_channels: true", False, True),
    ("eps: 0.5", True, False),
])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4)])
def test_mvn_forward(params, normalize, across, shape):
    layer = mvn_layer(params)
    x = blob(shape, rng=numpy.random.default_rng(3))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    eps = float(numpy.float32(0.5)) if "eps" in params else float(numpy.float32(1e-9))
    ref = loop_mvn(x.data, normalize, across, eps)
    assert top[0].shape == ref.shape  # Caffe's top is always (num, channels, height, width)
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-10, atol=1e-12)


def test_mvn_eps_is_added_to_the_std():
    x = blob(numpy.array([[[1.0, 3.0]]]))  # one (image, channel) plane: mean 2, std 1
    layer = mvn_layer("eps: 1")
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_allclose(top[0].data.ravel(), [-0.5, 0.5])  # not 1 / sqrt(2)


def test_mvn_in_place():
    x = blob((2, 2, 3, 3))
    ref = loop_mvn(x.data.copy(), True, False, float(numpy.float32(1e-9)))
    layer = mvn_layer()
    layer.setup([x], [x])
    layer.Forward([x], [x])
    numpy.testing.assert_allclose(x.data, ref, rtol=1e-10)
    with pytest.raises(CaffeishError, match="in place only on a 4-axis bottom"):
        y = blob((2, 3))
        mvn_layer().setup([y], [y])
    with pytest.raises(CaffeishError, match="at most 4 axes"):
        mvn_layer().setup([blob((1, 1, 1, 1, 2))], empty())


@checks_gradient("MVN")
@pytest.mark.parametrize("params,shape", [
    ("", (2, 3, 2, 3)),
    ("across_channels: true", (2, 2, 3, 2)),
    ("normalize_variance: false", (2, 3, 2, 2)),
    ("normalize_variance: false across_channels: true", (3, 4)),
])
def test_mvn_gradient(params, shape):
    check_gradient(mvn_layer(params), [blob(shape)], empty())

import numpy
import pytest

from caffeish import backend, caffe_pb2
from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer

FLT_MAX = float(numpy.finfo(numpy.float32).max)


def pool_layer(params):
    return make_layer(f'type: "Pooling" pooling_param {{ {params} }}')


def caffe_pooled(size, k, s, p, ceil=True):
    """Caffe's rule, in floats as Caffe computes it."""
    q = (size + 2 * p - k) / s
    out = int(numpy.ceil(q) if ceil else numpy.floor(q)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def naive_pool(x, kh, kw, sh, sw, ph_, pw_, method, ceil=True):
    """Caffe's Forward_cpu loops: returns (top, mask)."""
    n, c, h, w = x.shape
    oh, ow = caffe_pooled(h, kh, sh, ph_, ceil), caffe_pooled(w, kw, sw, pw_, ceil)
    top = numpy.zeros((n, c, oh, ow))
    mask = numpy.full((n, c, oh, ow), -1.0)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph_, j * sw - pw_
                    if method == "MAX":
                        he, we = min(hs + kh, h), min(ws + kw, w)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best = -FLT_MAX
                        for y in range(hs, he):
                            for z in range(ws, we):
                                if x[b, ch, y, z] > best:
                                    best, mask[b, ch, i, j] = x[b, ch, y, z], y * w + z
                        top[b, ch, i, j] = best
                    else:
                        he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
                        size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        top[b, ch, i, j] = x[b, ch, hs:he, ws:we].sum() / size
    return top, mask


def permuted(shape, seed=0):
    """Distinct values, so that every max is unique and the gradient is well defined."""
    rng = numpy.random.default_rng(seed)
    count = int(numpy.prod(shape))
    return blob(rng.permutation(count).reshape(shape) / count - 0.5)


@pytest.mark.parametrize("params,shape,expected", [
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5), (3, 2)),             # Caffe's TestSetup
    ("kernel_size: 3 stride: 2 pad: 1", (2, 3, 6, 5), (4, 3)),      # Caffe's TestSetupPadded
    ("kernel_size: 3 stride: 2", (1, 1, 6, 6), (3, 3)),             # ceil: the last window hangs over
    ("kernel_size: 3 stride: 2 pad: 1", (1, 1, 6, 6), (4, 4)),
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 6, 6), (2, 2)),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5), (3, 3)),      # the last window would start in the pad: dropped
    ("kernel_size: 3 stride: 1 pad: 1", (1, 1, 5, 5), (5, 5)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1", (1, 1, 7, 4), (3, 3)),
    ("global_pooling: true", (2, 3, 5, 4), (1, 1)),
])
def test_pooling_output_sizes(params, shape, expected):
    for method in ("MAX", "AVE"):
        layer = pool_layer(f"pool: {method} {params}")
        top = empty()
        layer.setup([blob(shape)], top)
        assert top[0].shape == shape[:2] + expected


@checks_forward("Pooling")
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params,shape,geom", [
    ("kernel_size: 3 stride: 2", (2, 2, 6, 5), (3, 3, 2, 2, 0, 0)),
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 6), (3, 3, 2, 2, 1, 1)),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5), (2, 2, 2, 2, 1, 1)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1", (1, 2, 7, 5), (3, 2, 2, 1, 2, 1)),
    ("kernel_size: 4 stride: 3 pad: 2", (1, 1, 9, 8), (4, 4, 3, 3, 2, 2)),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (1, 2, 6, 7), (3, 3, 2, 2, 1, 1)),
])
def test_pooling_forward(method, params, shape, geom):
    layer = pool_layer(f"pool: {method} {params}")
    x = blob(shape, rng=numpy.random.default_rng(5))
    top = empty(2 if method == "MAX" else 1)
    layer.setup([x], top)
    layer.Forward([x], top)
    ref, mask = naive_pool(x.data, *geom, method, ceil="FLOOR" not in params)
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-12)
    if method == "MAX":
        numpy.testing.assert_array_equal(top[1].data, mask)


def test_pooling_max_known_values():
    # Caffe's TestForwardMaxTopMask input: 3 x 5, kernel 2, stride 1.
    plane = numpy.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], dtype=float)
    x = blob(numpy.broadcast_to(plane, (2, 2, 3, 5)).copy())
    layer = pool_layer("pool: MAX kernel_size: 2 stride: 1")
    top = empty(2)
    layer.setup([x], top)
    layer.Forward([x], top)
    numpy.testing.assert_array_equal(top[0].data[1, 1], [[9, 5, 5, 8], [9, 5, 5, 8]])
    numpy.testing.assert_array_equal(top[1].data[1, 1], [[5, 2, 2, 9], [5, 12, 12, 9]])


def test_pooling_max_ties_take_first_in_scan_order():
    x = blob(numpy.ones((1, 1, 4, 4)))
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2 pad: 1")
    top = empty(2)
    layer.setup([x], top)
    layer.Forward([x], top)
    # 3 x 3 windows starting at -1, 1, 3: the first element inside the image wins.
    first = [[0, 1, 3], [4, 5, 7], [12, 13, 15]]
    numpy.testing.assert_array_equal(top[1].data[0, 0], first)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], [x])
    expected = numpy.zeros(16)
    expected[numpy.ravel(first)] = 1.0
    numpy.testing.assert_array_equal(x.diff.ravel(), expected)


def test_pooling_max_backward_uses_mask_top():
    x = permuted((1, 2, 4, 4))
    layer = pool_layer("pool: MAX kernel_size: 2 stride: 2")
    top = empty(2)
    layer.setup([x], top)
    layer.Forward([x], top)
    top[1].data[...] = 0  # Caffe routes the gradient wherever the mask top says
    top[0].diff[...] = 1.0
    layer.backward(top, [True], [x])
    assert x.diff[0, 0, 0, 0] == 4.0 and x.diff[0, 1, 0, 0] == 4.0 and x.diff.sum() == 8.0


def test_pooling_ave_float32_global():
    x = blob((2, 3, 4, 5), dtype=numpy.float32)
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].data.dtype == numpy.float32
    numpy.testing.assert_allclose(top[0].data[:, :, 0, 0], x.data.mean(axis=(2, 3)), rtol=1e-5)
    x2 = blob((2, 3, 3, 3), dtype=numpy.float32)
    layer.Forward([x2], top)  # global pooling follows the new size
    numpy.testing.assert_allclose(top[0].data[:, :, 0, 0], x2.data.mean(axis=(2, 3)), rtol=1e-5)


@checks_gradient("Pooling")
@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_size: 3 stride: 2", (1, 2, 6, 5)),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 1, 5, 5)),
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", (1, 2, 4, 5)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 6)),
    ("pool: AVE kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 1", (2, 1, 5, 4)),
    ("pool: AVE global_pooling: true", (2, 2, 3, 4)),
])
def test_pooling_gradient(params, shape):
    check_gradient(pool_layer(params), [permuted(shape)], empty())


@pytest.mark.parametrize("params,ntop,message", [
    ("pool: STOCHASTIC kernel_size: 2", 2, "second"),
    ("pool: MAX", 1, "kernel_size"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", 1, "not both"),
    ("pool: MAX kernel_h: 2", 1, "kernel_h and kernel_w"),
    ("pool: MAX kernel_size: 2 pad: 2", 1, "smaller than the kernel"),
    ("pool: MAX kernel_size: 2 pad_h: 1", 1, "pad_h and pad_w"),
    ("pool: AVE kernel_size: 2", 2, "second"),
    ("pool: MAX global_pooling: true kernel_size: 2", 1, "global_pooling"),
    ("pool: MAX global_pooling: true stride: 2", 1, "global_pooling"),
    ("pool: MAX kernel_size: 2 stride: 0", 1, "stride"),
    ("pool: MAX kernel_size: 9", 1, "empty"),
])
def test_pooling_errors(params, ntop, message):
    with pytest.raises(CaffeishError, match=message):
        pool_layer(params).setup([blob((1, 1, 4, 4))], empty(ntop))


# -- STOCHASTIC ----------------------------------------------------------------------

def naive_stochastic(x, kh, kw, sh, sw, oh, ow, u=None):
    """Caffe's StoPoolForwardTrain (given the uniforms ``u``) or StoPoolForwardTest kernels, element by element.

    The windows ignore the padding: they start at (i sh, j sw), clipped to the image.  Returns (top, index).
    """
    n, c, h, w = x.shape
    top = numpy.zeros((n, c, oh, ow))
    index = numpy.full((n, c, oh, ow), -1)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh, j * sw
                    cells = [(y, z) for y in range(hs, min(hs + kh, h)) for z in range(ws, min(ws + kw, w))]
                    total = sum(x[b, ch, y, z] for y, z in cells)
                    if u is None:
                        squares = sum(x[b, ch, y, z] ** 2 for y, z in cells)
                        top[b, ch, i, j] = squares / total if total > 0 else 0.0
                        continue
                    threshold, running = u[b, ch, i, j] * total, 0.0
                    for y, z in cells:
                        running += x[b, ch, y, z]
                        if running >= threshold:
                            top[b, ch, i, j], index[b, ch, i, j] = x[b, ch, y, z], y * w + z
                            break
    return top, index


STOCHASTIC_CASES = [
    # params, shape, (kh, kw, sh, sw)
    ("kernel_size: 3 stride: 2", (2, 2, 6, 5), (3, 3, 2, 2)),
    ("kernel_size: 2 stride: 2", (1, 3, 4, 4), (2, 2, 2, 2)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2", (1, 2, 5, 5), (3, 2, 1, 2)),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 4, 4), (3, 3, 2, 2)),  # the last windows start past the image
]


@checks_forward("Pooling")
@pytest.mark.parametrize("params,shape,geom", STOCHASTIC_CASES)
@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_pooling_stochastic_forward(params, shape, geom, phase):
    x = blob(shape, rng=numpy.random.default_rng(2), low=0.0, high=1.0)
    x.data[0, 0, 0, :2] = 0.0  # a zero in the first window
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: STOCHASTIC {params} }}', phase=phase)
    top = empty()
    layer.setup([x], top)
    backend.set_random_seed(11)
    layer.Forward([x], top)
    backend.set_random_seed(11)
    u = backend.random_uniform(numpy, top[0].shape, numpy.float64) if phase == caffe_pb2.TRAIN else None
    ref, index = naive_stochastic(x.data, *geom, *top[0].shape[2:], u=u)
    numpy.testing.assert_allclose(top[0].data, ref, rtol=1e-12)
    if phase == caffe_pb2.TRAIN:
        numpy.testing.assert_array_equal(layer.engine.rand_idx, index)
        first = top[0].data.copy()
        backend.set_random_seed(11)
        layer.Forward([x], top)  # re-seeding repeats the draw
        numpy.testing.assert_array_equal(top[0].data, first)


def test_pooling_stochastic_samples_in_proportion():
    plane = numpy.array([[1.0, 3.0, 0.0, 0.0]])
    x = blob(numpy.broadcast_to(plane, (1, 4000, 1, 4)).copy())
    layer = pool_layer("pool: STOCHASTIC kernel_h: 1 kernel_w: 2 stride: 2")
    top = empty()
    layer.setup([x], top)
    backend.set_random_seed(3)
    layer.Forward([x], top)
    picks = top[0].data[0, :, 0]
    assert set(numpy.unique(picks[:, 0])) == {1.0, 3.0}
    assert abs((picks[:, 0] == 3.0).mean() - 0.75) < 0.03
    numpy.testing.assert_array_equal(picks[:, 1], 0.0)  # an all-zero window outputs 0 (its first element)
    top[0].diff[...] = 1.0
    layer.backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff[0, :, 0, 2], 1.0)  # the first element of the all-zero window
    numpy.testing.assert_array_equal(x.diff[0, :, 0, 0] + x.diff[0, :, 0, 1], 1.0)
    numpy.testing.assert_array_equal(x.diff[0, :, 0, 3], 0.0)


def test_pooling_stochastic_test_phase_has_no_backward():
    x = blob((1, 1, 4, 4), low=0.0, high=1.0)
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }',
                       phase=caffe_pb2.TEST)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    with pytest.raises(CaffeishError, match="no backward pass in the TEST phase"):
        layer.backward(top, [True], [x])


@checks_gradient("Pooling")
@pytest.mark.parametrize("params,shape", [
    ("kernel_size: 3 stride: 2", (1, 2, 5, 5)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", (2, 1, 4, 5)),
])
def test_pooling_stochastic_gradient(params, shape):
    # check_gradient re-seeds before every forward pass, so every pass draws the same uniforms; the sampled
    # position is then piecewise constant in x, and these inputs keep every perturbation off the jumps.
    x = blob(shape, rng=numpy.random.default_rng(1), low=0.1, high=1.0)
    check_gradient(pool_layer(f"pool: STOCHASTIC {params}"), [x], empty())

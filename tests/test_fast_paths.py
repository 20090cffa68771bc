"""Each fast path of the CPU-performance work against the plain reference it replaces, on random shapes.

Odd sizes, padding, strides, dilation, groups, chunked batches, overlapping and non-overlapping pooling
windows; float64 for exactness and float32 to check that nothing is silently computed in float64.
"""
import itertools

import numpy
import pytest

import caffeish
from caffeish import backend, caffe_pb2, im2col
from caffeish.cpu import buffers, native, release_workspace, set_num_threads, workspace
from caffeish.cpu import threads as cpu_threads
from caffeish.cpu.native import direct
from caffeish.im2col import geometry, col2im_cm, col2im_cm_wide, im2col_cm
from caffeish.layers.vision import conv_engines, engines
from caffeish.layers.vision import lrn as lrn_module
from caffeish.solvers import sgd as sgd_module
from caffeish.prototxt import parse_text
from helpers import blob, empty, make_layer, random_geometry

RNG = numpy.random.default_rng(20240611)


@pytest.fixture(params=["serial", "threads"])
def threads(request, monkeypatch):
    """Run a test both serially and with the element-wise work split across 3 threads, however small."""
    if request.param == "threads":
        monkeypatch.setattr(cpu_threads, "PARALLEL_MIN_ELEMENTS", 1)
        set_num_threads(3)
        request.addfinalizer(lambda: set_num_threads(None))
    return request.param


# -- the plain references: one strided slice per kernel offset (the code the fast paths replaced) -----
def ref_im2col(x, kernel, stride, pad, dilation):
    """(N, C * prod(kernel), prod(out)), Caffe's layout, by a loop over the kernel offsets."""
    n, c = x.shape[:2]
    out, padded, offsets, slices = geometry(x.shape[2:], kernel, stride, pad, dilation, None)
    source = numpy.zeros((n, c) + padded, dtype=x.dtype)
    source[(slice(None), slice(None)) + tuple(slice(p, p + s) for s, p in zip(x.shape[2:], pad))] = x
    cols = numpy.empty((n, c, len(offsets)) + out, dtype=x.dtype)
    for k, offset in enumerate(offsets):
        cols[:, :, k] = source[(slice(None), slice(None)) + slices(offset)]
    return cols.reshape(n, c * len(offsets), -1)


def ref_col2im(cols, shape, kernel, stride, pad, dilation):
    n, c = shape[:2]
    spatial = tuple(shape[2:])
    out, padded, offsets, slices = geometry(spatial, kernel, stride, pad, dilation, None)
    cols = cols.reshape((n, c, len(offsets)) + out)
    target = numpy.zeros((n, c) + padded, dtype=cols.dtype)
    for k, offset in enumerate(offsets):
        target[(slice(None), slice(None)) + slices(offset)] += cols[:, :, k]
    return target[(slice(None), slice(None)) + tuple(slice(p, p + s) for s, p in zip(spatial, pad))]


def channel_major(cols_batch):
    """(N, K, L) -> (K, N * L)."""
    n, k, length = cols_batch.shape
    return cols_batch.transpose(1, 0, 2).reshape(k, n * length)


# -- im2col / col2im ------------------------------------------------------------------------------
@pytest.mark.parametrize("trial", range(40))
def test_im2col_cm_matches_reference(trial, threads):
    rng = numpy.random.default_rng(trial)
    nd = int(rng.integers(1, 4))
    spatial, kernel, stride, pad, dilation = random_geometry(rng, nd)
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    x = rng.standard_normal((n, c) + spatial)
    ref = ref_im2col(x, kernel, stride, pad, dilation)
    numpy.testing.assert_array_equal(im2col_cm(x, kernel, stride, pad, dilation), channel_major(ref))
    numpy.testing.assert_array_equal(im2col_cm(x, kernel, stride, pad, dilation, slot="test"), channel_major(ref))
    numpy.testing.assert_array_equal(im2col.im2col(x, kernel, stride, pad, dilation), ref)


@pytest.mark.parametrize("trial", range(40))
def test_col2im_cm_and_wide_match_reference(trial, threads):
    rng = numpy.random.default_rng(100 + trial)
    nd = int(rng.integers(1, 4))
    spatial, kernel, stride, pad, dilation = random_geometry(rng, nd, unit_last_stride=trial % 2 == 0)
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    out, padded, offsets, _ = geometry(spatial, kernel, stride, pad, dilation, None)
    cols = rng.standard_normal((n, c * len(offsets), int(numpy.prod(out))))
    ref = ref_col2im(cols, (n, c) + spatial, kernel, stride, pad, dilation)
    got = numpy.full((n, c) + spatial, numpy.nan)
    numpy.testing.assert_allclose(col2im_cm(channel_major(cols), got, kernel, stride, pad, dilation, slot="t"),
                                  ref, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(im2col.col2im(cols, (n, c) + spatial, kernel, stride, pad, dilation), ref,
                                  rtol=1e-12, atol=1e-12)
    if stride[-1] == 1:
        # Wide columns: each output row as long as the padded row, the extra columns 0.
        wide = numpy.zeros((c * len(offsets), n) + out[:-1] + (padded[-1],))
        wide[..., :out[-1]] = channel_major(cols).reshape((c * len(offsets), n) + out)
        got = numpy.full((n, c) + spatial, numpy.nan)
        col2im_cm_wide(wide.reshape(c * len(offsets), -1), got, kernel, stride, pad, dilation, slot="t")
        numpy.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_col2im_disjoint_windows_assign():
    """Non-overlapping windows (stride >= extent) are written, not summed: the rest must come out 0."""
    for kernel, stride, spatial in (((2, 2), (2, 2), (6, 4)), ((2, 3), (3, 4), (8, 9)), ((1, 1), (2, 2), (5, 5))):
        n, c = 2, 3
        out, _, offsets, _ = geometry(spatial, kernel, stride, (0, 0), (1, 1), None)
        cols = RNG.standard_normal((n, c * len(offsets), int(numpy.prod(out))))
        ref = ref_col2im(cols, (n, c) + spatial, kernel, stride, (0, 0), (1, 1))
        got = numpy.full((n, c) + spatial, numpy.nan)
        col2im_cm(channel_major(cols), got, kernel, stride, (0, 0), (1, 1))
        numpy.testing.assert_array_equal(got, ref)


def test_workspace_is_reused_and_grows():
    a = workspace(numpy, numpy.float32, "test.grow", 10)
    b = workspace(numpy, numpy.float32, "test.grow", 5)
    assert b.base is a.base or numpy.shares_memory(a, b)
    c = workspace(numpy, numpy.float32, "test.grow", 100)
    assert c.size == 100 and c.dtype == numpy.float32
    assert workspace(numpy, numpy.float64, "test.grow", 5).dtype == numpy.float64


# -- Convolution ----------------------------------------------------------------------------------
def ref_conv(x, w, b, stride, pad, dilation, group, dy):
    """Forward and backward by the reference im2col and per-group GEMMs, in float64."""
    n, c = x.shape[:2]
    o = w.shape[0]
    kernel = w.shape[2:]
    cols = ref_im2col(x.astype(numpy.float64), kernel, stride, pad, dilation)         # (n, C kk, L)
    cols = cols.reshape(n, group, -1, cols.shape[-1])
    wg = w.astype(numpy.float64).reshape(group, o // group, -1)
    y = numpy.einsum("gok,ngkl->ngol", wg, cols).reshape((n, o) + dy.shape[2:])
    if b is not None:
        y += b.reshape((1, o) + (1,) * (y.ndim - 2))
    dyg = dy.astype(numpy.float64).reshape(n, group, o // group, -1)
    dw = numpy.einsum("ngol,ngkl->gok", dyg, cols).reshape(w.shape)
    db = dy.reshape(n, o, -1).sum(axis=(0, 2))
    dcols = numpy.einsum("gok,ngol->ngkl", wg, dyg).reshape(n, -1, cols.shape[-1])
    dx = ref_col2im(dcols, x.shape, kernel, stride, pad, dilation)
    return y, dw, db, dx


CONV_CASES = [
    # input shape, num_output, kernel, stride, pad, dilation, group
    ((3, 5, 11, 9), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),          # wide backward, transposed forward
    ((2, 4, 13, 7), 128, (5, 3), (1, 1), (2, 0), (1, 1), 2),        # many outputs: plain forward
    ((2, 6, 12, 11), 6, (3, 3), (2, 2), (1, 2), (1, 1), 3),         # strided: regular col2im
    ((2, 4, 15, 14), 4, (3, 3), (1, 1), (2, 2), (2, 2), 2),         # dilated
    ((1, 3, 7, 6), 5, (2, 3), (1, 1), (0, 1), (1, 1), 1),           # one image
    ((3, 6, 5, 4), 4, (1, 1), (1, 1), (0, 0), (1, 1), 2),           # 1x1
    ((1, 6, 5, 4), 70, (1, 1), (1, 1), (0, 0), (1, 1), 1),          # 1x1, one image
    ((2, 3, 5, 6, 4), 4, (2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 1), 1),  # 3-D
    ((2, 3, 9, 2), 3, (5, 1), (1, 1), (2, 0), (1, 1), 1),           # wide pays not: width 2
    ((2, 2, 8), 3, (3,), (1,), (1,), (1,), 1),                      # 1-D
    ((2, 2, 5, 6), 3, (2, 2), (1, 1), (2, 2), (1, 1), 1),           # pad past the kernel
]


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("paths", ["best", "no-correlate", "plain"])
@pytest.mark.parametrize("images", ["whole batch", "image threads", "native"])
def test_convolution_fast_paths_match_reference(case, dtype, chunked, paths, images, threads, monkeypatch):
    shape, o, kernel, stride, pad, dilation, group = case
    monkeypatch.setattr(cpu_threads, "ENABLED", images == "image threads")
    monkeypatch.setattr(engines, "NATIVE", images == "native")
    monkeypatch.setattr(direct, "MIN_OUTPUTS", 1)  # these cases are small; the kernel takes them all here
    monkeypatch.setattr(direct, "POINTWISE_TO_GEMM", False)
    phases = direct.StridePhases(kernel, stride, pad, (1, 1)) if len(kernel) == 2 else None
    native_applies = phases is not None and (set(stride) == {1} or (
        set(dilation) == {1} and phases.waste <= direct.STRIDED_WASTE))
    if images == "native" and not (native_applies and native.library() is not None):
        pytest.skip("not a 2-D convolution the native kernels take" if not native_applies else native.status())
    if chunked:
        monkeypatch.setattr(conv_engines, "COL_BUFFER_BYTES", 1)  # one image per chunk
        monkeypatch.setattr(cpu_threads, "CHUNK_BYTES", 1)
    if paths != "best":  # the input's gradient by the other routes: wide columns, then plain col2im
        monkeypatch.setattr(conv_engines, "CORRELATE_DATA_GRADIENT", False)
    if paths == "plain":
        monkeypatch.setattr(conv_engines, "WIDE_COL2IM", False)
    fields = " ".join([f"num_output: {o}", f"group: {group}"] + [f"kernel_size: {k}" for k in kernel]
                      + [f"stride: {s}" for s in stride] + [f"pad: {p}" for p in pad]
                      + [f"dilation: {d}" for d in dilation])
    layer = make_layer(f'type: "Convolution" convolution_param {{ {fields} weight_filler {{ type: "gaussian" '
                       f'std: 0.5 }} bias_filler {{ type: "uniform" min: -1 max: 1 }} }}', dtype=dtype)
    x = blob(shape, dtype=dtype, rng=numpy.random.default_rng(len(shape) * 7 + o))
    top = empty(dtype=dtype)
    layer.setup([x], top)
    assert (layer.engine.name == "native") == (images == "native")
    layer.Forward([x], top)
    dy = numpy.random.default_rng(o).standard_normal(top[0].shape).astype(dtype)
    top[0].diff[...] = dy
    for blob_ in layer.blobs:
        blob_.diff[...] = 0.25  # backward accumulates into the parameters' diffs
    x.diff[...] = numpy.nan       # and overwrites the bottom's
    layer.Backward(top, [True], [x])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    y, dw, db, dx = ref_conv(x.data, w, b, stride, pad, dilation, group, dy)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == numpy.float64 else dict(rtol=2e-4, atol=2e-4)
    for got in (top[0].data, layer.blobs[0].diff, layer.blobs[1].diff, x.diff):
        assert got.dtype == dtype
    numpy.testing.assert_allclose(top[0].data, y, **tol)
    numpy.testing.assert_allclose(layer.blobs[0].diff, dw + 0.25, **tol)
    numpy.testing.assert_allclose(layer.blobs[1].diff, db + 0.25, **tol)
    numpy.testing.assert_allclose(x.diff, dx, **tol)


def test_convolution_layers_sharing_the_workspace_stay_correct():
    """Two layers use the same work buffers; interleaving their passes changes nothing."""
    def build(o, seed):
        layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: {o} kernel_size: 3 pad: 1 '
                           'weight_filler { type: "gaussian" std: 0.5 } }', dtype=numpy.float64)
        x = blob((2, 3, 6, 5), rng=numpy.random.default_rng(seed))
        top = empty()
        layer.setup([x], top)
        return layer, x, top
    (a, xa, ta), (b, xb, tb) = build(4, 1), build(100, 2)
    a.Forward([xa], ta)
    ya = ta[0].data.copy()
    b.Forward([xb], tb)
    ta[0].diff[...] = 1.0
    a.Backward(ta, [True], [xa])
    dxa = xa.diff.copy()
    a.Forward([xa], ta)
    a.Backward(ta, [True], [xa])
    numpy.testing.assert_array_equal(ta[0].data, ya)
    numpy.testing.assert_array_equal(xa.diff, dxa)


# -- Pooling --------------------------------------------------------------------------------------
def ref_pool(x, method, kernel, stride, pad, pooled):
    """Caffe's pooling window by window: MAX (first maximum in scan order, its flat index), AVE."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    y = numpy.zeros((n, c) + pooled)
    idx = numpy.full((n, c) + pooled, -1, dtype=numpy.int64)
    for b, ch, i, j in itertools.product(range(n), range(c), range(pooled[0]), range(pooled[1])):
        hs, ws = i * sh - ph_, j * sw - pw_
        he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
        size = (he - hs) * (we - ws)
        hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        if method == "MAX":
            best, where = -float(numpy.finfo(numpy.float32).max), -1  # Caffe starts from -FLT_MAX
            for r in range(hs0, he0):
                for s in range(ws0, we0):
                    if x[b, ch, r, s] > best:
                        best, where = x[b, ch, r, s], r * w + s
            y[b, ch, i, j], idx[b, ch, i, j] = best, where
        else:
            y[b, ch, i, j] = x[b, ch, hs0:he0, ws0:we0].sum() / size
    return y, idx


def ref_pool_backward(dy, x_shape, method, kernel, stride, pad, idx):
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    dx = numpy.zeros(x_shape)
    for b, ch, i, j in itertools.product(range(n), range(c), range(dy.shape[2]), range(dy.shape[3])):
        if method == "MAX":
            if idx[b, ch, i, j] >= 0:  # an empty window passes nothing back
                r, s = divmod(int(idx[b, ch, i, j]), w)
                dx[b, ch, r, s] += dy[b, ch, i, j]
        else:
            hs, ws = i * sh - ph_, j * sw - pw_
            he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
            size = (he - hs) * (we - ws)
            dx[b, ch, max(hs, 0):min(he, h), max(ws, 0):min(we, w)] += dy[b, ch, i, j] / size
    return dx


POOL_CASES = [
    # shape, kernel, stride, pad: overlapping, tiling, gapped, ceil-extended, padded, odd sizes
    ((2, 3, 9, 7), (3, 3), (2, 2), (0, 0)),
    ((2, 2, 8, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 3, 9, 10), (2, 2), (3, 3), (0, 0)),    # ceil rounding: the last windows lie past the input
    ((2, 2, 10, 9), (3, 2), (2, 3), (1, 1)),
    ((1, 2, 7, 7), (3, 3), (1, 1), (1, 1)),
    ((2, 1, 5, 11), (5, 4), (1, 2), (2, 0)),
    ((1, 2, 13, 12), (4, 3), (3, 2), (0, 1)),
    ((1, 2, 7, 300), (3, 3), (2, 2), (0, 0)),   # wide rows: flat indices far past 255
    ((2, 1, 2, 2), (3, 3), (1, 1), (1, 1)),     # kernel wider than the input
]


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_fast_paths_match_reference(case, method, dtype, threads):
    shape, kernel, stride, pad = case
    if method == "AVE" and case is POOL_CASES[2]:
        pytest.skip("a window past the input has size 0: AVE divides by it (as Caffe does)")
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} '
                       f'stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}', dtype=dtype)
    rng = numpy.random.default_rng(sum(shape))
    x = blob(numpy.round(rng.standard_normal(shape), 1), dtype=dtype)  # rounded: ties happen
    top = empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    y, idx = ref_pool(x.data.astype(numpy.float64), method, kernel, stride, pad, top[0].shape[2:])
    tol = 1e-12 if dtype == numpy.float64 else 1e-5
    assert top[0].data.dtype == dtype
    numpy.testing.assert_allclose(top[0].data, y, rtol=tol, atol=tol)
    dy = rng.standard_normal(top[0].shape).astype(dtype)
    top[0].diff[...] = dy
    x.diff[...] = numpy.nan
    layer.Backward(top, [True], [x])
    assert x.diff.dtype == dtype
    numpy.testing.assert_allclose(x.diff, ref_pool_backward(dy.astype(numpy.float64), shape, method, kernel, stride,
                                                            pad, idx), rtol=tol, atol=tol)
    if method == "MAX":  # the mask top holds the same indices
        masked = make_layer(f'type: "Pooling" pooling_param {{ pool: MAX kernel_h: {kernel[0]} kernel_w: {kernel[1]} '
                            f'stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}',
                            dtype=dtype)
        tops = empty(2, dtype=dtype)
        masked.setup([x], tops)
        masked.Forward([x], tops)
        numpy.testing.assert_array_equal(tops[1].data, idx)


# -- LRN ------------------------------------------------------------------------------------------
def ref_lrn(x, size, alpha, beta, k, dy):
    half = (size - 1) // 2
    c = x.shape[1]
    sq = numpy.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + c] for i in range(size))
    scale = k + alpha / size * window
    y = x * scale ** -beta
    ratio = numpy.pad(dy * x * scale ** (-beta - 1), ((0, 0), (half, half), (0, 0), (0, 0)))
    spread = sum(ratio[:, i:i + c] for i in range(size))
    dx = dy * scale ** -beta - 2 * alpha * beta / size * x * spread
    return y, dx


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("size,channels,cumulative", [(5, 7, False), (3, 2, False), (7, 3, False), (5, 9, True),
                                                      (9, 4, True), (1, 3, True)])
@pytest.mark.parametrize("in_place", [False, True])
def test_lrn_channel_sums_match_reference(size, channels, cumulative, in_place, dtype, threads, monkeypatch):
    if cumulative:
        monkeypatch.setattr(lrn_module, "SHIFTED_SUM_MAX_SIZE", 0)  # force the cumulative-sum path
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: {size} alpha: 0.5 beta: 0.75 k: 1.5 }}', dtype=dtype)
    rng = numpy.random.default_rng(size * 10 + channels)
    x0 = rng.standard_normal((2, channels, 3, 4))
    x = blob(x0, dtype=dtype)
    top = [x] if in_place else empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    dy = rng.standard_normal(x0.shape)
    y, dx = ref_lrn(x0, size, 0.5, 0.75, 1.5, dy)
    tol = 1e-12 if dtype == numpy.float64 else 2e-5
    numpy.testing.assert_allclose(top[0].data, y, rtol=tol, atol=tol)
    top[0].diff[...] = dy
    layer.Backward(top, [True], [x])
    assert x.diff.dtype == dtype and top[0].data.dtype == dtype
    numpy.testing.assert_allclose(x.diff, dx, rtol=tol, atol=tol)


# -- InnerProduct ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("m,k,n", [(2, 9, 7), (9, 3, 4), (5, 5, 5), (1, 30, 2)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_inner_product_orientations_match_reference(m, k, n, transpose, accumulate, dtype):
    layer = make_layer(f'type: "InnerProduct" inner_product_param {{ num_output: {n} transpose: {str(transpose).lower()} '
                       'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "uniform" min: -1 max: 1 } }',
                       dtype=dtype)
    rng = numpy.random.default_rng(m * 100 + k * 10 + n)
    x = blob(rng.standard_normal((m, k)), dtype=dtype)
    top = empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    w = layer.blobs[0].data.astype(numpy.float64)
    wk = w.T if transpose else w  # N x K
    tol = 1e-12 if dtype == numpy.float64 else 1e-5
    numpy.testing.assert_allclose(top[0].data, x.data @ wk.T + layer.blobs[1].data, rtol=tol, atol=tol)
    dy = rng.standard_normal((m, n))
    top[0].diff[...] = dy
    start = 0.5 if accumulate else 0.0   # a nonzero diff takes the accumulating path
    for b in layer.blobs:
        b.diff[...] = start
    layer.Backward(top, [True], [x])
    dw = dy.T @ x.data
    numpy.testing.assert_allclose(layer.blobs[0].diff, start + (dw.T if transpose else dw), rtol=tol, atol=tol)
    numpy.testing.assert_allclose(layer.blobs[1].diff, start + dy.sum(axis=0), rtol=tol, atol=tol)
    numpy.testing.assert_allclose(x.diff, dy @ wk, rtol=tol, atol=tol)
    assert all(b.diff.dtype == dtype for b in layer.blobs) and x.diff.dtype == dtype


# -- ReLU, Dropout, Softmax, SoftmaxWithLoss -------------------------------------------------------
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_matches_reference(slope, in_place, dtype, threads):
    layer = make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', dtype=dtype)
    x0 = numpy.random.default_rng(3).standard_normal((3, 4, 5)).astype(dtype)
    x0[0, 0, :2] = 0
    x = blob(x0, dtype=dtype)
    top = [x] if in_place else empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    slope = dtype(numpy.float32(slope))  # negative_slope is a float field
    numpy.testing.assert_array_equal(top[0].data, numpy.where(x0 > 0, x0, x0 * slope))
    dy = numpy.random.default_rng(4).standard_normal(x0.shape).astype(dtype)
    top[0].diff[...] = dy
    layer.Backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, dy * numpy.where(x0 > 0, dtype(1), slope))
    assert x.diff.dtype == dtype


def test_dropout_mask_and_scale_match_reference():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', dtype=numpy.float32)
    x = blob(numpy.random.default_rng(5).standard_normal((40, 30)), dtype=numpy.float32)
    top = empty(dtype=numpy.float32)
    layer.setup([x], top)
    backend.set_random_seed(9)
    layer.Forward([x], top)
    backend.set_random_seed(9)
    u = backend.random_uniform(numpy, x.shape, numpy.float32)
    ratio = float(numpy.float32(0.3))
    mask = (u >= ratio).astype(numpy.float32) * numpy.float32(1.0 / (1.0 - ratio))
    numpy.testing.assert_array_equal(top[0].data, x.data * mask)
    assert layer.mask.dtype == numpy.float32
    top[0].diff[...] = 2.0
    layer.Backward(top, [True], [x])
    numpy.testing.assert_array_equal(x.diff, 2.0 * mask)


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("in_place", [False, True])
def test_softmax_matches_reference(in_place, dtype):
    layer = make_layer('type: "Softmax" softmax_param { axis: 1 }', dtype=dtype)
    x0 = numpy.random.default_rng(6).standard_normal((3, 5, 2)) * 4
    x = blob(x0, dtype=dtype)
    top = [x] if in_place else empty(dtype=dtype)
    layer.setup([x], top)
    layer.Forward([x], top)
    e = numpy.exp(x0 - x0.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    tol = 1e-12 if dtype == numpy.float64 else 1e-6
    numpy.testing.assert_allclose(top[0].data, y, rtol=tol, atol=tol)
    dy = numpy.random.default_rng(7).standard_normal(x0.shape)
    top[0].diff[...] = dy
    layer.Backward(top, [True], [x])
    numpy.testing.assert_allclose(x.diff, (dy - (dy * y).sum(axis=1, keepdims=True)) * y, rtol=10 * tol, atol=10 * tol)
    assert top[0].data.dtype == dtype and x.diff.dtype == dtype


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_gradient_matches_reference(ignore, dtype):
    extra = f"loss_param {{ ignore_label: {ignore} }}" if ignore is not None else ""
    layer = make_layer(f'type: "SoftmaxWithLoss" {extra}', dtype=dtype)
    rng = numpy.random.default_rng(8)
    x0 = rng.standard_normal((4, 5, 3))
    labels = rng.integers(0, 5, size=(4, 3)).astype(numpy.float64)
    labels[0, 0] = 2
    x, t = blob(x0, dtype=dtype), blob(labels, dtype=dtype)
    top = empty(dtype=dtype)
    layer.setup([x, t], top)
    layer.Forward([x, t], top)
    top[0].diff[...] = 1.5
    layer.Backward(top, [True, False], [x, t])
    e = numpy.exp(x0 - x0.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    onehot = numpy.arange(5)[None, :, None] == labels[:, None, :]
    valid = numpy.ones(labels.shape) if ignore is None else (labels != ignore)
    expect = (p - onehot) * valid[:, None, :] * 1.5 / max(valid.sum(), 1)
    tol = 1e-12 if dtype == numpy.float64 else 1e-6
    numpy.testing.assert_allclose(x.diff, expect, rtol=tol, atol=tol)
    assert layer.prob.dtype == dtype and x.diff.dtype == dtype


# -- the fused SGD / Nesterov update -----------------------------------------------------------------
NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 50 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 37
        weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
"""


def unfused_update(solver):
    """Caffe's sequence, one full-array operation after another: what the fused slices must equal bit for bit."""
    p = solver.param
    rate = solver.get_learning_rate()
    for i, blob_ in enumerate(solver.net.learnable_params):
        data, diff, v = blob_.data, blob_.diff, solver.history_blob(i).data
        if p.iter_size > 1:
            diff *= 1.0 / p.iter_size
        decay = p.weight_decay * solver.net.params_weight_decay[i]
        if decay:
            diff += (numpy.sign(data) * decay) if p.regularization_type == "L1" else data * decay
        lr = rate * solver.net.params_lr[i]
        if p.type == "Nesterov":
            previous = v.copy()
            v *= p.momentum
            v += diff * lr
            diff[...] = v * (1 + p.momentum) - previous * p.momentum
        else:
            v *= p.momentum
            v += diff * lr
            diff[...] = v
        data -= diff


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("kind", ["SGD", "Nesterov"])
@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("iter_size", [1, 3])
def test_fused_update_equals_unfused_sequence(kind, regularization, iter_size, dtype, threads, monkeypatch):
    monkeypatch.setattr(sgd_module, "FUSED_CHUNK", 64)  # many slices, a ragged last one
    text = (f'type: "{kind}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 '
            f'regularization_type: "{regularization}" iter_size: {iter_size} display: 0')

    def make():
        param = parse_text(text, caffe_pb2.SolverParameter())
        param.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
        backend.set_random_seed(1)
        return caffeish.get_solver(param, dtype=dtype)
    fused, plain = make(), make()
    rng = numpy.random.default_rng(11)
    for _ in range(3):
        grads = [rng.standard_normal(b.shape).astype(dtype) for b in fused.net.learnable_params]
        for solver in (fused, plain):
            for b, g in zip(solver.net.learnable_params, grads):
                b.diff[...] = g
        fused.apply_update()
        unfused_update(plain)
        fused.iter += 1
        plain.iter += 1
        for a, b in zip(fused.net.learnable_params, plain.net.learnable_params):
            numpy.testing.assert_array_equal(a.data, b.data)
            numpy.testing.assert_array_equal(a.diff, b.diff)
            assert a.data.dtype == dtype
        for a, b in zip(fused.history, plain.history):
            numpy.testing.assert_array_equal(a.data, b.data)


# -- float32 stays float32 ----------------------------------------------------------------------------
def test_float32_training_iteration_makes_no_float64_buffers():
    """A float32 net's layers keep float32 state and work buffers (no silent float64 in the hot path)."""
    release_workspace()
    net = caffeish.Net("""
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 13 dim: 11 } } }
        layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
                convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" } } }
        layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
        layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
        layer { name: "n1" type: "LRN" bottom: "p1" top: "n1" lrn_param { local_size: 3 } }
        layer { name: "c2" type: "Convolution" bottom: "n1" top: "c2"
                convolution_param { num_output: 70 kernel_size: 3 group: 2 weight_filler { type: "gaussian" } } }
        layer { name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param { pool: AVE kernel_size: 2 stride: 1 } }
        layer { name: "fc" type: "InnerProduct" bottom: "p2" top: "fc" inner_product_param { num_output: 5 } }
        layer { name: "d" type: "Dropout" bottom: "fc" top: "fc" }
        layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
    """, caffeish.TRAIN)
    net.blobs["x"].data[...] = numpy.random.default_rng(0).standard_normal(net.blobs["x"].shape)
    net.blobs["prob"].diff[...] = 1.0
    net.forward_backward()
    for name, b in net.blobs.items():
        assert b.data.dtype == numpy.float32 and b.diff.dtype == numpy.float32, name
    kept = [net.layer_dict["d"].mask] + list(net.layer_dict["n1"]._kept)
    assert all(a.dtype == numpy.float32 for a in kept)
    pool = buffers._local.pool
    floats = {key[1] for key, buf in pool.items() if buf is not None and buf.dtype.kind == "f"}
    assert floats == {numpy.dtype(numpy.float32).str}, pool.keys()

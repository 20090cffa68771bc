"""The CUDA kernels' code run on the CPU (``cpu_emulation``) through their real wrappers, against the numpy layers.

Without a GPU this is what checks the kernels' arithmetic and indexing; on a GPU, tests/cuda's other files run
the same kernels for real.
"""
import numpy
import pytest

from caffeish import im2col
from caffeish.cuda import im2col as cuda_im2col
from caffeish.cuda import kernels
from caffeish.cuda import lrn as cuda_lrn
from caffeish.cuda import pooling as cuda_pooling
from caffeish.cuda import softmax_loss as cuda_softmax_loss
from cpu_emulation import compiler, function
from cuda_helpers import POOLING_CASES, REGULARIZATION, SOLVERS, solver_steps
from helpers import blob, empty, make_layer, random_geometry

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler (g++) to run the kernels' code")
DTYPES = [numpy.float32, numpy.float64]
TOLERANCE = {numpy.float32: dict(rtol=2e-5, atol=2e-6), numpy.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    """The wrappers take numpy arrays for device arrays, and their kernels run on the CPU."""
    monkeypatch.setattr(kernels, "function", function)
    monkeypatch.setattr(kernels, "is_cupy", lambda a: isinstance(a, numpy.ndarray))
    monkeypatch.setattr(kernels, "contiguous", numpy.ascontiguousarray)


def geometries(nd, count, seed, unit_last_stride=False):
    rng = numpy.random.default_rng(seed)
    return [random_geometry(rng, nd, unit_last_stride) for _ in range(count)]


# -- im2col / col2im -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", geometries(2, 12, 1) + geometries(1, 4, 2))
def test_im2col_and_col2im(geometry, dtype):
    spatial, kernel, stride, pad, dilation = geometry
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((2, 3) + spatial).astype(dtype)
    want = im2col.im2col_cm(x, kernel, stride, pad, dilation)  # numpy arrays: the generic path
    numpy.testing.assert_array_equal(cuda_im2col.im2col_cm(x, kernel, stride, pad, dilation), want)
    cols = rng.standard_normal(want.shape).astype(dtype)
    expected = im2col.col2im_cm(cols, numpy.empty_like(x), kernel, stride, pad, dilation)
    got = cuda_im2col.col2im_cm(cols, numpy.full_like(x, numpy.nan), kernel, stride, pad, dilation)
    numpy.testing.assert_allclose(got, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", geometries(2, 8, 4, unit_last_stride=True))
def test_col2im_wide(geometry, dtype):
    spatial, kernel, stride, pad, dilation = geometry
    rng = numpy.random.default_rng(5)
    out_shape, padded, _, _ = im2col.geometry(spatial, kernel, stride, pad, dilation, None)
    rows = numpy.prod(out_shape[:-1], dtype=int)
    cols = rng.standard_normal((3 * numpy.prod(kernel), 2, rows, padded[-1])).astype(dtype)
    cols[..., out_shape[-1]:] = 0  # what a top gradient padded with zeros gives
    cols = cols.reshape(3 * numpy.prod(kernel), -1)
    expected = im2col.col2im_cm_wide(cols, numpy.empty((2, 3) + spatial, dtype), kernel, stride, pad, dilation)
    got = cuda_im2col.col2im_cm_wide(cols, numpy.full((2, 3) + spatial, numpy.nan, dtype), kernel, stride, pad,
                                     dilation)
    numpy.testing.assert_allclose(got, expected, **TOLERANCE[dtype])


# -- pooling -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params,shape", POOLING_CASES)
def test_pooling(params, shape, method, dtype):
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {method} {params} }}', dtype=dtype)
    rng = numpy.random.default_rng(7)
    x = blob(numpy.round(rng.standard_normal(shape), 1), dtype=dtype)  # ties: the first maximum must win
    top = empty(2 if method == "MAX" else 1, dtype)
    layer.setup([x], top)
    layer.forward([x], top)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], [x])
    geometry = cuda_pooling.geometry_of(layer)
    y = numpy.full(top[0].shape, numpy.nan, dtype)
    mask = numpy.full(top[0].shape, -7, numpy.int32) if method == "MAX" else None
    cuda_pooling.forward(x.data, y, geometry, method == "MAX", mask)
    if method == "MAX":  # a choice, exact; an average is summed in another order
        numpy.testing.assert_array_equal(y, top[0].data)
        numpy.testing.assert_array_equal(mask, top[1].data.astype(numpy.int32))
    else:
        numpy.testing.assert_allclose(y, top[0].data, **TOLERANCE[dtype])
    dx = numpy.full(shape, numpy.nan, dtype)
    cuda_pooling.backward(top[0].diff, dx, geometry, method == "MAX", mask)
    numpy.testing.assert_allclose(dx, x.diff, **TOLERANCE[dtype])


# -- LRN -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,channels", [(5, 7), (3, 2), (5, 3), (1, 4)])
def test_lrn_across_channels(size, channels, dtype):
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: {size} alpha: 0.3 beta: 0.75 k: 1.5 }}', dtype=dtype)
    rng = numpy.random.default_rng(11)
    x = blob(rng.standard_normal((2, channels, 4, 3)), dtype=dtype)
    top = empty(1, dtype)
    layer.setup([x], top)
    layer.forward([x], top)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], [x])
    scale, powered, y = (numpy.full(x.shape, numpy.nan, dtype) for _ in range(3))
    hyper = (layer.size, layer.alpha, layer.beta)  # the proto's float32 values, as the layer passes them
    cuda_lrn.forward(x.data, y, scale, powered, *hyper, layer.k)
    numpy.testing.assert_allclose(y, top[0].data, **TOLERANCE[dtype])
    dx = numpy.full(x.shape, numpy.nan, dtype)
    cuda_lrn.backward(x.data, scale, powered, top[0].diff, dx, *hyper)
    numpy.testing.assert_allclose(dx, x.diff, **TOLERANCE[dtype])
    in_place = top[0].diff.copy()  # dx may be dy itself
    cuda_lrn.backward(x.data, scale, powered, in_place, in_place, *hyper)
    numpy.testing.assert_allclose(in_place, x.diff, **TOLERANCE[dtype])


# -- SoftmaxWithLoss -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", ["", "loss_param { ignore_label: 2 }",
                                   "loss_param { ignore_label: 0 normalization: BATCH_SIZE }"])
def test_softmax_loss(extra, dtype):
    layer = make_layer(f'type: "SoftmaxWithLoss" {extra}', dtype=dtype)
    rng = numpy.random.default_rng(13)
    scores = blob(rng.standard_normal((3, 4, 2, 5)), dtype=dtype)
    labels = blob(rng.integers(0, 4, (3, 2, 5)).astype(dtype), dtype=dtype)
    top = empty(2, dtype)
    layer.setup([scores, labels], top)
    layer.forward([scores, labels], top)
    top[0].diff[...] = 1.7
    layer.backward(top, [True, False], [scores, labels])
    prob = top[1].data.reshape(3, 4, 10)
    ignore = layer.ignore_label
    losses, counts = numpy.full(30, numpy.nan, dtype), numpy.full(30, numpy.nan, dtype)
    cuda_softmax_loss.forward(prob, labels.data.reshape(-1), 4, 10, ignore, losses, counts)
    from caffeish.layers.loss.softmax_loss import normalizer
    norm = normalizer(layer.normalization, 3, 10, counts.sum())
    numpy.testing.assert_allclose(losses.sum() / norm, top[0].data, **TOLERANCE[dtype])
    dx = numpy.full(prob.shape, numpy.nan, dtype)
    scale = numpy.asarray([1.7 / norm], dtype)
    cuda_softmax_loss.backward(prob, labels.data.reshape(-1), 4, 10, ignore, scale, dx)
    numpy.testing.assert_allclose(dx.reshape(scores.shape), scores.diff, **TOLERANCE[dtype])


# -- the layers' GPU methods and engines, with the emulated kernels in place of CuPy's -------------------------
def _passes(layer, bottoms, top, forward, backward, rng):
    """(tops' data, bottoms' diffs, parameter diffs) after ``forward`` and ``backward`` from fixed top diffs."""
    for b in layer.blobs:
        b.diff[...] = 0
    forward(bottoms, top)
    for t in top:
        t.diff[...] = rng.standard_normal(t.shape)
    backward(top, [True] + [False] * (len(bottoms) - 1), bottoms)
    return ([t.data.copy() for t in top], [b.diff.copy() for b in bottoms[:1]],
            [p.diff.copy() for p in layer.blobs])


def _assert_same_passes(got, want, dtype):
    for got_arrays, want_arrays in zip(got, want):
        for g, w in zip(got_arrays, want_arrays):
            numpy.testing.assert_allclose(g, w, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec,bottom_shapes", [
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 1.5 }', [(2, 5, 4, 3)]),
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 1 }', [(3, 4, 2, 5), (3, 2, 5)]),
])
def test_forward_gpu_and_backward_gpu_equal_the_cpu_methods(spec, bottom_shapes, dtype):
    """``Layer.forward`` sends CuPy arrays to forward_gpu / backward_gpu: here their kernel branches run on numpy
    arrays through the emulation and must give what forward_cpu / backward_cpu give."""
    layer = make_layer(spec, dtype=dtype)
    rng = numpy.random.default_rng(17)
    bottoms = [blob(rng.standard_normal(bottom_shapes[0]), dtype=dtype)]
    if len(bottom_shapes) > 1:
        bottoms.append(blob(rng.integers(0, 4, bottom_shapes[1]).astype(dtype), dtype=dtype))
    top = empty(1, dtype)
    layer.setup(bottoms, top)
    want = _passes(layer, bottoms, top, layer.forward_cpu, layer.backward_cpu, numpy.random.default_rng(1))
    got = _passes(layer, bottoms, top, layer.forward_gpu, layer.backward_gpu, numpy.random.default_rng(1))
    _assert_same_passes(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params,shape", POOLING_CASES)
def test_cuda_pooling_engine_equals_the_window_engine(params, shape, method, dtype):
    from caffeish.layers.vision.pooling_engines import CudaPooling, WindowPooling
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {method} {params} }}', dtype=dtype)
    rng = numpy.random.default_rng(19)
    x = blob(numpy.round(rng.standard_normal(shape), 1), dtype=dtype)
    top = empty(1, dtype)
    layer.setup([x], top)
    results = []
    for engine in (WindowPooling(layer), CudaPooling(layer)):
        layer.engine = engine
        results.append(_passes(layer, [x], top, layer.forward, layer.backward, numpy.random.default_rng(2)))
    _assert_same_passes(results[1], results[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params,shape", [
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 5)),
    ("num_output: 6 kernel_size: 3 stride: 2 group: 3", (3, 3, 7, 7)),
    ("num_output: 4 kernel_h: 1 kernel_w: 3 dilation: 2 pad: 2", (2, 2, 5, 9)),
])
def test_gemm_engine_with_cuda_im2col_equals_the_numpy_columns(params, shape, dtype):
    """The GPU's GEMM engine (CUDA im2col / col2im columns) against the same engine on numpy's columns."""
    from caffeish.layers.vision.conv_engines import GemmConvolution
    fillers = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'
    layer = make_layer(f'type: "Convolution" convolution_param {{ {params} {fillers} }}', dtype=dtype)
    x = blob(numpy.random.default_rng(23).standard_normal(shape), dtype=dtype)
    top = empty(1, dtype)
    layer.setup([x], top)
    results = []
    for columns in (im2col, cuda_im2col):
        layer.engine = GemmConvolution(layer, columns)
        results.append(_passes(layer, [x], top, layer.forward, layer.backward, numpy.random.default_rng(3)))
    _assert_same_passes(results[1], results[0], dtype)


# -- the fused solver updates --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regularization", REGULARIZATION)
@pytest.mark.parametrize("solver_type,hyper", SOLVERS)
def test_fused_solver_updates_equal_the_cpu_solvers_bitwise(solver_type, hyper, regularization, dtype):
    cpu = solver_steps(solver_type, hyper, regularization, dtype)
    kernel = solver_steps(solver_type, hyper, regularization, dtype, fused=True)
    for k, (got, want) in enumerate(zip(kernel, cpu)):
        numpy.testing.assert_array_equal(got, want, err_msg=f"{solver_type} array {k}")

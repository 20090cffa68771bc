"""caffeish.cuda.im2col against caffeish.im2col (the generic path on numpy), on odd geometries."""
import numpy
import pytest

from caffeish import im2col as generic
from caffeish.cuda import im2col as cuda_im2col
from cuda_helpers import assert_close, compiled, needs_gpu

# (input shape, kernel, stride, pad, dilation)
CASES = [
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 8, 5), (3, 2), (2, 3), (1, 0), (1, 1)),
    ((3, 1, 9, 11), (3, 3), (2, 1), (2, 1), (2, 3)),
    ((2, 4, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1)),      # windows tile the input
    ((1, 3, 5, 4), (5, 4), (3, 3), (2, 1), (1, 1)),      # one window larger than the input
    ((2, 3, 13), (4,), (3,), (2,), (2,)),                # 1-D
]


pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation", CASES)
def test_im2col_cm_matches_generic(shape, kernel, stride, pad, dilation, dtype):
    import cupy
    x = numpy.random.default_rng(1).standard_normal(shape).astype(dtype)
    expected = generic.im2col_cm(x, kernel, stride, pad, dilation)
    cols = cuda_im2col.im2col_cm(cupy.asarray(x), kernel, stride, pad, dilation, slot="test.cols")
    assert compiled("im2col")
    assert cols.shape == expected.shape
    # a copy: nothing else may change the values on the way
    assert_close(cupy.asnumpy(cols), expected, dtype, exact=True)


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation", CASES)
def test_col2im_cm_matches_generic(shape, kernel, stride, pad, dilation, dtype):
    import cupy
    out_shape = generic.conv_output_shape(shape[2:], kernel, stride, pad, dilation)
    rows = shape[1] * int(numpy.prod(kernel))
    cols = numpy.random.default_rng(2).standard_normal((rows, shape[0] * int(numpy.prod(out_shape)))).astype(dtype)
    expected = generic.col2im_cm(cols, numpy.empty(shape, dtype), kernel, stride, pad, dilation)
    out = cupy.full(shape, numpy.nan, dtype=dtype)   # every element must be overwritten
    result = cuda_im2col.col2im_cm(cupy.asarray(cols), out, kernel, stride, pad, dilation)
    assert result is out
    assert_close(cupy.asnumpy(out), expected, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_col2im_is_the_adjoint_of_im2col(dtype):
    """<im2col(x), c> == <x, col2im(c)> for random x and c."""
    import cupy
    shape, kernel, stride, pad, dilation = (2, 3, 9, 8), (3, 2), (2, 1), (1, 1), (2, 1)
    rng = numpy.random.default_rng(3)
    x = cupy.asarray(rng.standard_normal(shape).astype(dtype))
    cols = cuda_im2col.im2col_cm(x, kernel, stride, pad, dilation)
    c = cupy.asarray(rng.standard_normal(cols.shape).astype(dtype))
    back = cuda_im2col.col2im_cm(c, cupy.empty_like(x), kernel, stride, pad, dilation)
    lhs, rhs = float((cols * c).sum()), float((x * back).sum())
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation", [
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 8, 6), (2, 3), (2, 1), (1, 2), (2, 1)),
])
def test_col2im_cm_wide_matches_generic(shape, kernel, stride, pad, dilation, dtype):
    import cupy
    out_shape = generic.conv_output_shape(shape[2:], kernel, stride, pad, dilation)
    width = generic.wide_width(kernel, stride, pad, dilation, shape[2:])
    rows = shape[1] * int(numpy.prod(kernel))
    wide = numpy.zeros((rows, shape[0]) + tuple(out_shape[:-1]) + (width,), dtype=dtype)
    # the columns past the output width are 0, as the padded top gradient's GEMM gives them
    wide[..., :out_shape[-1]] = numpy.random.default_rng(4).standard_normal(wide[..., :out_shape[-1]].shape)
    wide = wide.reshape(rows, -1)
    expected = generic.col2im_cm_wide(wide, numpy.empty(shape, dtype), kernel, stride, pad, dilation)
    out = cupy.full(shape, numpy.nan, dtype=dtype)
    cuda_im2col.col2im_cm_wide(cupy.asarray(wide), out, kernel, stride, pad, dilation)
    assert_close(cupy.asnumpy(out), expected, dtype)


@needs_gpu
def test_col2im_is_deterministic():
    import cupy
    shape, kernel, stride, pad, dilation = (4, 8, 17, 15), (5, 5), (1, 1), (2, 2), (1, 1)
    out_shape = generic.conv_output_shape(shape[2:], kernel, stride, pad, dilation)
    cols = cupy.random.standard_normal((8 * 25, 4 * int(numpy.prod(out_shape))), dtype=numpy.float32)
    first = cuda_im2col.col2im_cm(cols, cupy.empty(shape, numpy.float32), kernel, stride, pad, dilation)
    again = cuda_im2col.col2im_cm(cols, cupy.empty(shape, numpy.float32), kernel, stride, pad, dilation)
    assert bool((first == again).all())


@needs_gpu
def test_other_ranks_and_numpy_take_the_generic_path():
    import cupy
    x = numpy.random.default_rng(5).standard_normal((1, 2, 4, 5, 6))
    args = ((2, 2, 2), (1, 1, 1), (0, 1, 0), (1, 1, 1))
    expected = generic.im2col_cm(x, *args)
    assert_close(cupy.asnumpy(cuda_im2col.im2col_cm(cupy.asarray(x), *args)), expected, x.dtype, exact=True)
    assert_close(cuda_im2col.im2col_cm(x, *args), expected, x.dtype, exact=True)


@needs_gpu
def test_wrong_column_shape_is_refused_like_the_generic_path():
    import cupy
    from caffeish.errors import CaffeishError
    with pytest.raises(CaffeishError, match="do not match"):
        cuda_im2col.col2im_cm(cupy.zeros((5, 7)), cupy.zeros((1, 1, 4, 4)), (2, 2), (1, 1), (0, 0), (1, 1))

import itertools

import numpy
import pytest

from caffeish.errors import CaffeishError
from gradient_check import check_gradient, checks_forward, checks_gradient
from helpers import blob, empty, make_layer


def im2col_layer(params):
    return make_layer(f'type: "Im2col" convolution_param {{ {params} }}')


def loop_im2col(x, kernel, stride, pad, dilation):
    """Caffe's column layout, one element at a time: channel c * prod(kernel) + offset index."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    top = numpy.zeros((n, c * len(offsets)) + tuple(out))
    for bi, ch in itertools.product(range(n), range(c)):
        for k, off in enumerate(offsets):
            for pos in itertools.product(*(range(o) for o in out)):
                src = [p * st - q + f * d for p, st, q, f, d in zip(pos, stride, pad, off, dilation)]
                if all(0 <= v < s for v, s in zip(src, spatial)):
                    top[(bi, ch * len(offsets) + k) + pos] = x[(bi, ch) + tuple(src)]
    return top


@checks_forward("Im2col")
@pytest.mark.parametrize("params,shape,kernel,stride,pad,dilation", [
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5), (3, 3), (2, 2), (0, 0), (1, 1)),  # Caffe's TestForward
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 5, 4), (3, 2), (2, 1), (1, 0), (1, 1)),
    ("kernel_size: 2 dilation: 2 pad: 1", (2, 1, 4, 4), (2, 2), (1, 1), (1, 1), (2, 2)),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 3, 4, 3), (2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1)),
    ("kernel_size: 3", (2, 2, 5), (3,), (1,), (0,), (1,)),
])
def test_im2col_forward(params, shape, kernel, stride, pad, dilation):
    layer = im2col_layer(params)
    x = blob(shape)
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    ref = loop_im2col(x.data, kernel, stride, pad, dilation)
    assert top[0].shape == ref.shape
    numpy.testing.assert_array_equal(top[0].data, ref)


def test_im2col_channel_axis():
    layer = im2col_layer("kernel_size: 2 axis: 2")
    x = blob((2, 3, 2, 4, 3))
    top = empty()
    layer.setup([x], top)
    layer.Forward([x], top)
    assert top[0].shape == (2, 3, 8, 3, 2)
    ref = loop_im2col(x.data.reshape(6, 2, 4, 3), (2, 2), (1, 1), (0, 0), (1, 1))
    numpy.testing.assert_array_equal(top[0].data.reshape(ref.shape), ref)


@checks_gradient("Im2col")
@pytest.mark.parametrize("params,shape", [
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 4, 3)),
    ("kernel_h: 2 kernel_w: 3 dilation: 2", (2, 1, 4, 5)),
])
def test_im2col_gradient(params, shape):
    check_gradient(im2col_layer(params), [blob(shape)], empty())


@pytest.mark.parametrize("params,shape,message", [
    ("stride: 2", (1, 1, 4, 4), "kernel"),
    ("kernel_size: 5", (1, 1, 4, 4), "not positive"),
    ("kernel_h: 2 kernel_w: 2", (1, 1, 4, 4, 4), "2-D"),
    ("kernel_size: 2 axis: 3", (1, 1, 4, 4), "at least one spatial axis"),
])
def test_im2col_errors(params, shape, message):
    with pytest.raises(CaffeishError, match=message):
        im2col_layer(params).setup([blob(shape)], empty())

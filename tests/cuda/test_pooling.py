"""The Pooling layer's CUDA kernels (caffeish.cuda.pooling) against its numpy path: one body, both backends."""
import numpy
import pytest

from caffeish import backend
from cuda_helpers import POOLING_CASES, assert_close, compiled, device_blob, needs_gpu, on_cpu_and_gpu
from helpers import empty, make_layer

CASES = POOLING_CASES


pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


def _run(method, params, shape, dtype, tops, values="ties"):
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {method} {params} }}', dtype=dtype)
    rng = numpy.random.default_rng(7)
    if values == "ties":  # rounded values: many windows have several maxima (the first must win)
        x = numpy.round(rng.standard_normal(shape), 1)
    else:  # nothing above -FLT_MAX: Caffe leaves the mask at -1
        x = numpy.full(shape, -1e300 if dtype == numpy.float64 else -numpy.inf)
    bottom, top = device_blob(x, dtype), empty(tops, dtype)
    layer.setup([bottom], top)
    layer.forward([bottom], top)
    top[0].diff[...] = backend.to_current(rng.standard_normal(top[0].shape), dtype)
    layer.backward(top, [True], [bottom])
    return [top[0].data, top[1].data if tops > 1 else None, bottom.diff]


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("tops", [1, 2])
@pytest.mark.parametrize("params,shape", CASES)
def test_max_pooling_matches_numpy(params, shape, tops, dtype):
    cpu, gpu = on_cpu_and_gpu(_run, "MAX", params, shape, dtype, tops)
    assert compiled("pooling")
    assert_close(gpu[0], cpu[0], dtype, exact=True, what="top")
    if tops > 1:
        assert_close(gpu[1], cpu[1], dtype, exact=True, what="mask")
    assert_close(gpu[2], cpu[2], dtype, what="bottom diff")


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("params,shape", CASES)
def test_ave_pooling_matches_numpy(params, shape, dtype):
    cpu, gpu = on_cpu_and_gpu(_run, "AVE", params, shape, dtype, 1)
    assert compiled("pooling")
    assert_close(gpu[0], cpu[0], dtype, what="top")
    assert_close(gpu[2], cpu[2], dtype, what="bottom diff")


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("params,shape", [CASES[1], CASES[7]])
def test_windows_without_a_maximum(params, shape, dtype):
    cpu, gpu = on_cpu_and_gpu(_run, "MAX", params, shape, dtype, 2, values="none")
    assert (cpu[1] == -1).all()
    for got, want, what in zip(gpu, cpu, ("top", "mask", "bottom diff")):
        assert_close(got, want, dtype, exact=True, what=what)


@needs_gpu
def test_gpu_backward_is_deterministic():
    def run():
        backend.set_mode_gpu()
        return _run("AVE", "kernel_size: 5 stride: 1 pad: 2", (4, 8, 31, 29), numpy.float32, 1)
    try:
        first, again = run(), run()
    finally:
        backend.set_mode_cpu()
    assert bool((first[2] == again[2]).all())

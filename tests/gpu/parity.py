"""One layer's forward and backward pass on numpy and on CuPy, from the same inputs and weights."""
import numpy

from caffeish import Blob, backend, caffe_pb2
from caffeish.layer import create_layer

#: Relative tolerance per dtype, applied as ``rtol * max(|reference|, 1)`` per array (sums run in other orders).
RTOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}


def random_in_train(param):
    """Layers whose TRAIN forward draws random numbers (numpy's and CuPy's generators differ)."""
    if param.phase != caffe_pb2.TRAIN:
        return False
    return param.type == "Dropout" or (param.type == "Pooling" and
                                       param.pooling_param.pool == caffe_pb2.PoolingParameter.STOCHASTIC)


def run(case, dtype, gpu, weights=None):
    """Forward and backward on the CPU or the GPU; every output as a host array.

    ``weights`` (host arrays) replace the layer's own after setup (the case's, or the CPU run's).
    Returns ``{"top": [...], "bottom_diff": [...], "param_diff": [...], "weights": [...]}``.
    """
    dtype = numpy.dtype(dtype)
    (backend.set_mode_gpu if gpu else backend.set_mode_cpu)()
    try:
        backend.set_random_seed(case.seed)
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(case.param)
        layer = create_layer(param, dtype=dtype)
        bottom = []
        for i, array in enumerate(case.bottoms):
            blob = Blob(array.shape, dtype=dtype, name=f"bottom{i}")
            blob.data[...] = backend.to_current(array, dtype)
            bottom.append(blob)
        top = [Blob(dtype=dtype, name=f"top{i}") for i in range(case.num_top)]
        layer.setup(bottom, top)
        weights = case.weights if weights is None and case.weights else weights
        for blob, array in zip(layer.blobs, weights or []):
            blob.data[...] = backend.to_current(numpy.asarray(array).reshape(blob.shape), dtype)
        given = [numpy.array(backend.to_cpu(b.data)) for b in layer.blobs]
        backend.set_random_seed(case.seed)
        layer.Forward(bottom, top)
        rng = numpy.random.default_rng(case.seed)
        for blob in top:
            blob.diff[...] = backend.to_current(rng.uniform(-1, 1, size=blob.shape), dtype)
        for blob in layer.blobs:
            blob.diff[...] = 0
        down = [i in case.check_bottom for i in range(len(bottom))]
        for blob, d in zip(bottom, down):
            if d:
                blob.diff[...] = 0
        layer.Backward(top, down, bottom)
        layer.close()
        return {"top": [numpy.array(backend.to_cpu(b.data)) for b in top],
                "top_diff": [numpy.array(backend.to_cpu(b.diff)) for b in top],
                "bottom": [numpy.array(backend.to_cpu(b.data)) for b in bottom],
                "bottom_diff": [numpy.array(backend.to_cpu(b.diff)) if d else None for b, d in zip(bottom, down)],
                "param_diff": [numpy.array(backend.to_cpu(b.diff)) for b in layer.blobs],
                "weights": given}
    finally:
        backend.set_mode_cpu()


def assert_same(got, expected, dtype, what):
    rtol = RTOL[numpy.dtype(dtype)]
    for kind in ("top", "bottom_diff", "param_diff"):
        assert len(got[kind]) == len(expected[kind]), f"{what}: {kind} counts differ"
        for i, (g, e) in enumerate(zip(got[kind], expected[kind])):
            if e is None:
                continue
            assert g.shape == e.shape, f"{what}: {kind}[{i}] shape {g.shape} on the GPU, {e.shape} on the CPU"
            scale = max(float(numpy.abs(e).max()) if e.size else 0.0, 1.0)
            numpy.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: {kind}[{i}]")


def assert_random_layer_consistent(case, got, dtype, what):
    """A random TRAIN layer on the GPU: its outputs and gradients are ones its own draws explain."""
    rtol = RTOL[numpy.dtype(dtype)]
    x, y, dy = got["bottom"][0], got["top"][0], got["top_diff"][0]
    if case.param.type == "Dropout":
        scale = 1.0 / (1.0 - float(numpy.float32(case.param.dropout_param.dropout_ratio)))
        kept = y != 0
        numpy.testing.assert_allclose(y[kept], x[kept] * scale, rtol=rtol, err_msg=f"{what}: kept values")
        if got["bottom_diff"][0] is not None:
            expected = numpy.where(kept, dy * scale, 0.0)
            numpy.testing.assert_allclose(got["bottom_diff"][0], expected, rtol=rtol, atol=rtol,
                                          err_msg=f"{what}: gradient through the mask")
        return
    # Stochastic pooling: each output is one of the inputs, and each output's gradient goes to one input.
    values = numpy.unique(x)
    nearest = values[numpy.clip(numpy.searchsorted(values, y.ravel()), 0, values.size - 1)]
    below = values[numpy.clip(numpy.searchsorted(values, y.ravel()) - 1, 0, values.size - 1)]
    gap = numpy.minimum(numpy.abs(nearest - y.ravel()), numpy.abs(below - y.ravel()))
    assert gap.max() <= rtol * max(float(numpy.abs(x).max()), 1.0), f"{what}: an output is none of the inputs"
    if got["bottom_diff"][0] is not None:
        numpy.testing.assert_allclose(got["bottom_diff"][0].sum(), dy.sum(), rtol=rtol * 10, atol=rtol * 10,
                                      err_msg=f"{what}: the gradients do not add up")

"""SoftmaxWithLoss's CUDA kernels (caffeish.cuda.softmax_loss) against its numpy path."""
import numpy
import pytest

from caffeish import backend
from caffeish.errors import CaffeishError
from cuda_helpers import assert_close, compiled, device_blob, needs_gpu, on_cpu_and_gpu
from helpers import empty, make_layer

LOSS_PARAMS = [
    "",
    "loss_param { ignore_label: 1 }",
    "loss_param { ignore_label: 2 normalization: FULL }",
    "loss_param { ignore_label: 0 normalization: BATCH_SIZE }",
    "loss_param { normalization: NONE }",
    "loss_param { normalize: false ignore_label: 3 }",
    "loss_param { ignore_label: -1 }",
]


pytestmark = pytest.mark.usefixtures("restore_cpu_mode")  # the tests switch to the GPU


def _run(params, scores_shape, axis, dtype, labels=None, tops=2):
    layer = make_layer(f'type: "SoftmaxWithLoss" {params} softmax_param {{ axis: {axis} }}', dtype=dtype)
    rng = numpy.random.default_rng(13)
    classes = scores_shape[axis]
    label_shape = scores_shape[:axis] + scores_shape[axis + 1:]
    if labels is None:
        labels = rng.integers(0, classes, size=label_shape).astype(float)
        labels.flat[::5] = -1     # ignored where ignore_label is -1, refused otherwise: kept only below
        labels[labels < 0] = 0 if "ignore_label: -1" not in params else -1
    x = device_blob(rng.standard_normal(scores_shape) * 3, dtype)
    label = device_blob(labels, dtype)
    top = empty(tops, dtype)
    layer.setup([x, label], top)
    layer.forward([x, label], top)
    top[0].diff[...] = 2.5   # the loss weight
    layer.backward(top, [True, False], [x, label])
    return [top[0].data, top[1].data if tops > 1 else None, x.diff]


@needs_gpu
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape,axis", [((6, 5), 1), ((3, 4, 2, 5), 1), ((2, 3, 7), 2), ((1, 1000), 1)])
@pytest.mark.parametrize("params", LOSS_PARAMS)
def test_softmax_loss_matches_numpy(params, shape, axis, dtype):
    cpu, gpu = on_cpu_and_gpu(_run, params, shape, axis, dtype)
    assert compiled("softmax_loss")
    for got, want, what in zip(gpu, cpu, ("loss", "prob", "bottom diff")):
        assert_close(got, want, dtype, what=what)


@needs_gpu
def test_all_labels_ignored_gives_zero_loss_and_gradient():
    labels = numpy.full((4, 3), 2.0)
    cpu, gpu = on_cpu_and_gpu(_run, "loss_param { ignore_label: 2 }", (4, 5, 3), 1, numpy.float64, labels, 1)
    assert float(gpu[0]) == 0.0 and not gpu[2].any()
    assert_close(gpu[2], cpu[2], numpy.float64)


@needs_gpu
@pytest.mark.parametrize("bad", [5.0, -2.0])
def test_out_of_range_label_is_the_same_error_on_the_gpu(bad):
    labels = numpy.zeros((3, 2))
    labels[1, 1] = bad
    messages = []
    for gpu in (False, True):
        if gpu:
            backend.set_mode_gpu()
        with pytest.raises(CaffeishError, match="out of range") as caught:
            _run("", (3, 5, 2), 1, numpy.float32, labels, 1)
        messages.append(str(caught.value))
        backend.set_mode_cpu()
    assert messages[0] == messages[1]

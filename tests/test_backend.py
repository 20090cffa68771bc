"""Mode switching, and the same layer code on numpy and CuPy (GPU cases skip without a GPU)."""
import numpy
import pytest

import caffeish
from caffeish import backend, CaffeishError

needs_gpu = pytest.mark.skipif(not backend.gpu_available(), reason="no CUDA device / CuPy")
pytestmark = pytest.mark.usefixtures("restore_cpu_mode")


def test_gpu_mode_without_gpu_is_a_clear_error():
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CaffeishError, match="GPU mode"):
        caffeish.set_mode_gpu()
    assert backend.mode() == backend.CPU


def test_get_array_module_on_numpy():
    assert backend.get_array_module(numpy.zeros(2)) is numpy
    assert backend.xp() is numpy


def test_seed_makes_fillers_repeat():
    backend.set_random_seed(7)
    a = backend.rng().random(3)
    backend.set_random_seed(7)
    assert (backend.rng().random(3) == a).all()


LENET = "models/lenet/lenet_deploy.prototxt"


def _run_lenet(root):
    caffeish.set_random_seed(11)
    net = caffeish.Net(str(root / LENET), caffeish.TEST)
    x = numpy.random.default_rng(0).random(net.blobs["data"].shape, dtype=numpy.float32)
    out = net.forward(data=x)
    return {k: backend.to_cpu(v) for k, v in out.items()}


@needs_gpu
def test_same_net_on_cpu_and_gpu(request):
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    cpu = _run_lenet(root)
    caffeish.set_mode_gpu()
    gpu = _run_lenet(root)
    for name in cpu:
        numpy.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-4, atol=1e-5)

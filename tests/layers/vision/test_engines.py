"""The engine factory (caffeish.layers.vision.engines): which engine runs a Convolution, Deconvolution or Pooling
layer, why, and when it is chosen again."""
import logging

import numpy
import pytest

from caffeish.cpu import native
from caffeish.cpu import threads as cpu_threads
from caffeish.layers.vision import engines
from helpers import blob, empty, make_layer

needs_native = pytest.mark.skipif(native.library() is None, reason="the native kernels are not built here")


def conv(params, shape, layer_type="Convolution"):
    layer = make_layer(f'type: "{layer_type}" convolution_param {{ {params} weight_filler {{ type: "gaussian" }} }}')
    x, top = blob(shape), empty()
    layer.setup([x], top)
    return layer, x, top


@needs_native
def test_a_2d_3x3_convolution_on_numpy_runs_the_native_engine():
    layer, _, _ = conv("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 16, 16))
    assert layer.engine.name == "native"
    assert "compiled direct convolution" in layer.engine.reason


@pytest.mark.parametrize("params,shape,why", [
    ("num_output: 4 kernel_size: 1", (2, 3, 16, 16), "1x1 kernel"),
    ("num_output: 4 kernel_size: 3", (2, 3, 5, 5, 5), "3-D"),
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 6), "fewer than MIN_OUTPUTS"),
])
def test_the_gemm_engines_say_why_the_native_one_does_not_run(params, shape, why):
    layer, _, _ = conv(params, shape)
    assert layer.engine.name in ("gemm", "image-threads")
    if native.library() is not None:
        assert why in layer.engine.reason


def test_switching_the_native_engine_off_gives_the_gemm_engines(monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", False)
    monkeypatch.setattr(cpu_threads, "ENABLED", False)
    layer, _, _ = conv("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 16, 16))
    assert layer.engine.name == "gemm"
    assert layer.engine.reason == ("numpy GEMMs on the BLAS's threads (native: switched off; image threads: "
                                   "switched off)")


def test_the_engine_is_kept_while_the_input_stays_and_chosen_again_when_it_changes():
    layer, x, top = conv("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 16, 16))
    first = layer.engine
    layer.Forward([x], top)
    assert layer.engine is first
    x.reshape((1, 3, 4, 4))
    layer.Forward([x], top)
    assert layer.engine is not first
    assert layer.engine.name != "native"  # 16 outputs: too few for the native kernels
    assert top[0].shape == (1, 4, 4, 4)


def test_each_choice_is_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="caffeish.engine"):
        layer, _, _ = conv("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 16, 16))
    assert f"convolution (Convolution): {layer.engine.name} engine, {layer.engine.reason}" in caplog.text


@pytest.mark.parametrize("pool,name", [("MAX", "windows"), ("AVE", "windows"), ("STOCHASTIC", "stochastic")])
def test_pooling_engines(pool, name):
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {pool} kernel_size: 2 stride: 2 }}')
    layer.setup([blob((1, 2, 4, 4))], empty())
    assert layer.engine.name == name


@needs_native
def test_deconvolution_takes_the_native_engine_where_its_data_gradient_covers_it():
    layer, _, _ = conv("num_output: 2 kernel_size: 3", (2, 3, 10, 10), "Deconvolution")
    assert layer.engine.name == "native"
    # pad 3 > dilation (k - 1) = 2: the transposed convolution's data gradient is not the kernels'
    layer, _, _ = conv("num_output: 2 kernel_size: 3 pad: 3", (2, 3, 14, 14), "Deconvolution")
    assert layer.engine.name == "gemm" and "pad past dilation" in layer.engine.reason


def test_every_engine_gives_the_same_convolution(monkeypatch):
    """native, image threads and plain GEMMs on one layer: the same tops and gradients."""
    layer, x, top = conv("num_output: 5 kernel_size: 3 pad: 1 group: 1", (4, 3, 12, 12))
    top[0].diff[...] = numpy.random.default_rng(0).standard_normal(top[0].shape)
    results = {}
    for native_on, threads_on in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(engines, "NATIVE", native_on)
        monkeypatch.setattr(cpu_threads, "ENABLED", threads_on)
        layer.engine = None
        layer.Forward([x], top)
        layer.blobs[0].diff[...] = 0
        layer.blobs[1].diff[...] = 0
        layer.Backward(top, [True], [x])
        results[layer.engine.name] = (top[0].data.copy(), x.diff.copy(), layer.blobs[0].diff.copy())
    names = list(results)
    for name in names[1:]:
        for got, want in zip(results[name], results[names[0]]):
            numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

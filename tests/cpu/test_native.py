"""The compiled direct convolution (caffeish/cpu/native): agreement with the numpy reference, the build
and its fallbacks (switched off, no working compiler), and argument checks."""
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from caffeish.cpu import native, set_num_threads
from caffeish.cpu import threads as cpu_threads
from caffeish.cpu.native import conv as native_conv
from caffeish.cpu.native import direct
from caffeish.layers.vision import engines
from helpers import blob, empty, make_layer
from test_fast_paths import ref_conv

ROOT = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.status()}")


@pytest.fixture(params=[1, 2, 8])
def threads(request, monkeypatch):
    """1 and 2 threads deal out whole images; 8 outnumber the images (1-5), which the threads then share.
    The threads split even the smallest work here, and the kernel takes every size, 1x1 included."""
    monkeypatch.setattr(cpu_threads, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(direct, "MIN_OUTPUTS", 1)
    monkeypatch.setattr(direct, "POINTWISE_TO_GEMM", False)
    set_num_threads(request.param)
    yield request.param
    set_num_threads(None)


def random_case(rng):
    """A 2-D unit-stride convolution: odd sizes, padding (sometimes past d (k - 1)), dilation, groups."""
    while True:
        group = int(rng.choice([1, 1, 2, 3]))
        channels = group * int(rng.integers(1, 5))
        num_output = group * int(rng.integers(1, 12))
        kernel = tuple(int(v) for v in rng.integers(1, 6, size=2))
        pad = tuple(int(v) for v in rng.integers(0, 4, size=2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
        spatial = tuple(int(v) for v in rng.integers(1, 20, size=2))
        out = [s + 2 * p - d * (k - 1) for s, p, d, k in zip(spatial, pad, dilation, kernel)]
        if min(out) > 0:
            shape = (int(rng.integers(1, 6)), channels) + spatial
            return shape, num_output, kernel, pad, dilation, group


def conv_layer(num_output, kernel, pad, dilation, group, dtype, stride=(1, 1)):
    fields = " ".join([f"num_output: {num_output}", f"group: {group}", f"kernel_h: {kernel[0]}",
                       f"kernel_w: {kernel[1]}", f"pad_h: {pad[0]}", f"pad_w: {pad[1]}", f"stride_h: {stride[0]}",
                       f"stride_w: {stride[1]}"] + [f"dilation: {d}" for d in dilation])
    return make_layer(f'type: "Convolution" convolution_param {{ {fields} weight_filler {{ type: "gaussian" '
                      f'std: 0.5 }} bias_filler {{ type: "uniform" min: -1 max: 1 }} }}', dtype=dtype)


def check_native_layer(shape, num_output, kernel, stride, pad, dilation, group, dtype, rng):
    """One Convolution layer on the native kernels: forward, and backward into parameter diffs of 0.5 (it adds)
    and a bottom diff of NaN (it overwrites), against the float64 reference."""
    layer = conv_layer(num_output, kernel, pad, dilation, group, dtype, stride)
    x = blob(shape, dtype=dtype, rng=rng)
    top = empty(dtype=dtype)
    layer.setup([x], top)
    assert layer.engine.name == "native"
    layer.Forward([x], top)
    dy = rng.standard_normal(top[0].shape).astype(dtype)
    top[0].diff[...] = dy
    for b in layer.blobs:
        b.diff[...] = 0.5
    x.diff[...] = numpy.nan
    layer.Backward(top, [True], [x])
    y, dw, db, dx = ref_conv(x.data, layer.blobs[0].data, layer.blobs[1].data, stride, pad, dilation, group, dy)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == numpy.float64 else dict(rtol=2e-4, atol=2e-4)
    numpy.testing.assert_allclose(top[0].data, y, **tol)
    numpy.testing.assert_allclose(layer.blobs[0].diff, dw + 0.5, **tol)
    numpy.testing.assert_allclose(layer.blobs[1].diff, db + 0.5, **tol)
    numpy.testing.assert_allclose(x.diff, dx, **tol)
    return layer


@needs_native
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("trial", range(30))
def test_random_convolutions_match_reference(trial, dtype, threads, monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", True)
    rng = numpy.random.default_rng(1000 + trial)
    shape, num_output, kernel, pad, dilation, group = random_case(rng)
    check_native_layer(shape, num_output, kernel, (1, 1), pad, dilation, group, dtype, rng)


STRIDED_CASES = [
    # input shape, num_output, kernel, stride, pad, group (no dilation)
    ((2, 3, 27, 27), 8, (11, 11), (4, 4), (0, 0), 1),     # CaffeNet's conv1, small
    ((3, 4, 15, 13), 6, (7, 7), (2, 2), (3, 3), 2),       # ResNet's conv1 shape, grouped
    ((2, 6, 9, 8), 5, (1, 1), (2, 2), (0, 0), 1),         # ResNet's 1x1 down-sampling: one phase
    ((4, 2, 10, 11), 3, (2, 2), (2, 2), (1, 0), 1),       # windows that do not overlap
    ((2, 3, 12, 9), 9, (5, 3), (2, 1), (2, 1), 3),        # a stride on one axis only
    ((1, 2, 8, 10), 4, (6, 6), (3, 3), (2, 0), 1),        # input columns no window reaches: cut
    ((2, 2, 6, 7), 3, (3, 3), (4, 4), (0, 1), 1),         # stride past the kernel: phases skipped
]


@needs_native
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("case", STRIDED_CASES)
def test_strided_convolutions_through_stride_phases_match_reference(case, dtype, threads, monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", True)
    shape, num_output, kernel, stride, pad, group = case
    layer = check_native_layer(shape, num_output, kernel, stride, pad, (1, 1), group, dtype,
                               numpy.random.default_rng(sum(shape)))
    assert layer.engine.direct.phases.waste <= direct.STRIDED_WASTE


@needs_native
def test_pointwise_and_small_outputs_stay_on_the_gemms(monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", True)
    for kernel, pad, shape, expected in [((1, 1), (0, 0), (2, 8, 9, 9), False),    # 1x1: its input is its columns
                                       ((3, 3), (1, 1), (2, 8, 7, 7), False),    # 49 outputs (ResNet's last stage)
                                       ((3, 3), (1, 1), (2, 8, 8, 8), True)]:    # 64 (CIFAR-10's conv3)
        layer = conv_layer(4, kernel, pad, (1, 1), 1, numpy.float32)
        layer.setup([blob(shape, dtype=numpy.float32)], empty(dtype=numpy.float32))
        assert (layer.engine.name == "native") == expected, (kernel, shape)


@needs_native
def test_strides_whose_phases_waste_too_much_stay_on_the_gemms(monkeypatch):
    monkeypatch.setattr(engines, "NATIVE", True)
    layer = conv_layer(4, (3, 3), (1, 1), (1, 1), 1, numpy.float32, (2, 2))  # 2x2 taps per phase for 3: 1.78
    layer.setup([blob((2, 3, 9, 9), dtype=numpy.float32)], empty(dtype=numpy.float32))
    assert layer.engine.name != "native"
    assert direct.StridePhases((3, 3), (2, 2), (1, 1), (4, 4)).waste == pytest.approx(16 / 9)
    dilated = conv_layer(4, (3, 3), (2, 2), (2, 2), 1, numpy.float32, (2, 2))  # strided and dilated
    dilated.setup([blob((2, 3, 9, 9), dtype=numpy.float32)], empty(dtype=numpy.float32))
    assert dilated.engine.name != "native"


@needs_native
def test_weight_gradient_does_not_depend_on_the_image_blocking():
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal((5, 6, 9, 11))
    w = numpy.zeros((4, 3, 3, 2))
    dy = rng.standard_normal((5, 4, 9, 12))
    sums = []
    for block in (1, 2, 3, 5, 50):
        dw = numpy.zeros_like(w)
        native_conv.backward_weights(x, dy, dw, 2, (3, 2), (1, 1), (1, 1), (9, 12), images_per_block=block)
        sums.append(dw)
    _, ref_dw, _, _ = ref_conv(x, w, None, (1, 1), (1, 1), (1, 1), 2, dy)
    for dw in sums:
        numpy.testing.assert_allclose(dw, ref_dw, rtol=1e-12, atol=1e-12)


@needs_native
def test_arrays_must_be_contiguous_and_of_one_dtype():
    x = numpy.zeros((2, 3, 8, 8), numpy.float32)
    w = numpy.zeros((4, 3, 3, 3), numpy.float32)
    y = numpy.zeros((2, 4, 6, 6), numpy.float32)
    with pytest.raises(ValueError, match="w must be C-contiguous float32"):
        native_conv.forward(x, w.astype(numpy.float64), None, y, 1, (3, 3), (0, 0), (1, 1), (6, 6))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        native_conv.forward(x[:, :, ::2, ::2].repeat(2, 2)[..., ::2], w, None, y, 1, (3, 3), (0, 0), (1, 1), (6, 6))


def run_python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("CAFFEISH_CACHE_DIR", "CAFFEISH_NATIVE", "CC")}
    full.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


NET_CHECK = """
import numpy, warnings
from caffeish.cpu import native
from caffeish.layers.vision import convolution
from helpers import blob, empty
from cpu.test_native import conv_layer
warnings.simplefilter("always")
layer = conv_layer(3, (3, 3), (1, 1), (1, 1), 1, numpy.float64)
x = blob((2, 2, 5, 5))
top = empty()
layer.setup([x], top)
layer.Forward([x], top)
print("native", layer.engine.name == "native", "|", native.status())
"""


def test_switched_off_runs_the_numpy_paths(tmp_path):
    result = run_python(f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}]\n" + NET_CHECK,
                        CAFFEISH_NATIVE="0", CAFFEISH_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "native False | off (CAFFEISH_NATIVE=0): numpy paths" in result.stdout
    assert not list(tmp_path.iterdir())  # nothing was built


def test_a_failing_compiler_warns_once_and_runs_the_numpy_paths(tmp_path):
    result = run_python(f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}]\n" + NET_CHECK,
                        CC="false", CAFFEISH_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "native False | could not build the native kernels (false failed: exit status 1): numpy paths" \
        in result.stdout
    assert result.stderr.count("RuntimeWarning: caffeish: could not build the native kernels") == 1
    assert not list(tmp_path.iterdir())  # no half-written library left behind


@needs_native
def test_the_build_is_cached_and_reused(tmp_path):
    code = "from caffeish.cpu import native; print(native.status())"
    first = run_python(code, CAFFEISH_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so" and built[0].name in first.stdout
    stamp = built[0].stat().st_mtime_ns
    second = run_python(code, CAFFEISH_CACHE_DIR=str(tmp_path))
    assert second.stdout == first.stdout
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


@needs_native
def test_an_unwritable_cache_falls_back_to_the_temp_directory(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = run_python("from caffeish.cpu import native; print(native.status())", XDG_CACHE_HOME=str(not_a_folder),
                        TMPDIR=str(temp))
    assert result.returncode == 0 and not result.stderr, result.stderr
    built = list(temp.glob("caffeish-*/caffeish_native_*.so"))
    assert len(built) == 1 and built[0].name in result.stdout

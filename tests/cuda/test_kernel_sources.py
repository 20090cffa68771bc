"""Every CUDA source compiles with NVRTC for float32 and float64 (no GPU needed: NVRTC runs on the host)."""
import re

import numpy
import pytest

from caffeish.cuda import SOURCES, kernels

try:
    from cupy_backends.cuda.libs import nvrtc
    nvrtc.getVersion()
except Exception as error:  # CuPy absent, or its NVRTC library not loadable
    nvrtc = None
    NVRTC_ERROR = f"NVRTC cannot be loaded: {error}"
else:
    NVRTC_ERROR = ""

EXPECTED = {"im2col", "pooling", "lrn", "softmax_loss", "solver_updates"}


def test_every_family_registers_its_source():
    assert EXPECTED <= set(SOURCES)


@pytest.mark.skipif(nvrtc is None, reason=NVRTC_ERROR or "NVRTC cannot be loaded")
@pytest.mark.parametrize("arch", ["compute_70", "compute_90"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_compiles(name, dtype, arch):
    source = kernels.full_source(name, numpy.dtype(dtype))
    program = nvrtc.createProgram(source, f"{name}.cu", (), ())
    options = (f"-arch={arch}",) + kernels.compile_options(name)
    try:
        nvrtc.compileProgram(program, options)
    except Exception:
        pytest.fail(f"{name} ({dtype}, {arch}) does not compile:\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program)
    assert len(ptx) > 0
    # every kernel the source declares is in the PTX under its own (unmangled) name
    text = ptx.decode() if isinstance(ptx, bytes) else str(ptx)
    declared = set(re.findall(r'extern "C" __global__ void (\w+)\(', source))
    declared |= set(re.findall(r"^SOLVER_KERNEL\((\w+),", source, re.M))
    declared.discard("name")  # the macro's parameter
    assert declared
    for kernel in declared:
        assert f".entry {kernel}(" in text, f"{kernel} missing from the PTX of {name}"


def test_double_sources_use_double():
    for name in SOURCES:
        assert "typedef double T;" in kernels.full_source(name, numpy.float64)
        assert "typedef float T;" in kernels.full_source(name, numpy.float32)


def test_unsupported_dtype_is_refused():
    with pytest.raises(Exception, match="float32 and float64"):
        kernels.full_source("pooling", numpy.float16)


def test_python_ints_become_int32_arguments():
    args = kernels.int_args((3, True, numpy.int64(5), numpy.float32(1.5)))
    assert [type(a) for a in args] == [numpy.int32, numpy.int32, numpy.int64, numpy.float32]


@pytest.mark.skipif(nvrtc is None, reason=NVRTC_ERROR or "NVRTC cannot be loaded")
def test_flt_max_is_float32s_largest_value_in_double_kernels_too():
    """MAX pooling starts from -FLT_MAX: in float64 it must be exactly the CPU's -float32 max."""
    import struct
    program = nvrtc.createProgram(kernels.full_source("pooling", numpy.float64), "pooling.cu", (), ())
    nvrtc.compileProgram(program, ("-arch=compute_70",) + kernels.compile_options("pooling"))
    ptx = nvrtc.getPTX(program)
    text = ptx.decode() if isinstance(ptx, bytes) else str(ptx)
    exact = "0d" + struct.pack(">d", -float(numpy.finfo(numpy.float32).max)).hex().upper()
    assert exact in text


def test_grid_stride_index_cannot_overflow():
    # the last index a thread tests is below n + BLOCK * MAX_BLOCKS
    assert kernels.MAX_ELEMENTS + kernels.BLOCK * kernels.MAX_BLOCKS <= kernels.INT32_MAX

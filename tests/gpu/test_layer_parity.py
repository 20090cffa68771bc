"""Every layer the gradient checks cover, on numpy and on CuPy from one test body: the same outputs and gradients.

The cases are those of tests/layers' gradient checks (tests/gpu/cases.py collects them), each run in float64
(rtol 1e-10) and float32 (rtol 1e-4), plus forward-only layers (``FORWARD_ONLY``).  Layers drawing random numbers
in TRAIN (Dropout, stochastic pooling) cannot match numpy's draws: on the GPU they are checked against their own
draws instead.  Without a GPU the parity tests skip; the coverage test and the CPU half still run.
"""
import numpy
import pytest

from caffeish import backend, caffe_pb2
from caffeish.layer import LAYERS

from gradient_check import GradientCase
from gpu import cases, parity
from helpers import layer_param

needs_gpu = pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA device (CuPy sees none)")
DTYPES = [numpy.float64, numpy.float32]
CASES, LEFT_OUT = cases.collect()

#: Layers no gradient check covers, with a forward case each: (parameter text, bottom arrays, number of tops).
_rng = numpy.random.default_rng(5)
FORWARD_ONLY = {
    "Accuracy": ('type: "Accuracy" accuracy_param { top_k: 2 }',
                 [_rng.uniform(-1, 1, (6, 5)), numpy.arange(6.0) % 5], 1),
    "ArgMax": ('type: "ArgMax" argmax_param { out_max_val: true top_k: 2 }', [_rng.permutation(30).reshape(5, 6) * 1.0],
               1),
    "Input": ('type: "Input" input_param { shape { dim: 2 dim: 3 } }', [], 1),
    "DummyData": ('type: "DummyData" dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" '
                  'value: 0.5 } }', [], 1),
    "Threshold": ('type: "Threshold" threshold_param { threshold: 0.2 }', [_rng.uniform(-1, 1, (3, 4))], 1),
    "Silence": ('type: "Silence"', [_rng.uniform(-1, 1, (2, 3))], 0),
}
#: Types with no case here, and why.
NOT_HERE = {
    "Python": "runs user code written for numpy arrays",
    "Data": "reads LMDB on a host thread; the copy to the GPU is the same as HDF5Data's (test_hdf5_data_on_gpu)",
    "ImageData": "decodes images on a host thread; the copy to the GPU is the same as HDF5Data's",
    "MemoryData": "copies host arrays handed to it; covered by test_hdf5_data_on_gpu's path",
    "HDF5Output": "writes host arrays to a file",
    "HDF5Data": "test_hdf5_data_on_gpu",
}


def forward_case(type_name):
    text, bottoms, num_top = FORWARD_ONLY[type_name]
    param = layer_param(text)
    param.name, param.phase = type_name.lower(), caffe_pb2.TRAIN
    return GradientCase(param=param, dtype=numpy.float64, bottoms=[numpy.asarray(b) for b in bottoms],
                        num_top=num_top, check_bottom=[], test=f"forward-only {type_name}")


ALL = CASES + [forward_case(t) for t in FORWARD_ONLY]


def test_cases_cover_every_layer_type():
    covered = {case.param.type for case in ALL}
    missing = sorted(set(LAYERS.names()) - covered - set(NOT_HERE))
    assert not missing, f"layer types without a CPU/GPU parity case: {missing}"
    broken = {test: why for test, why in LEFT_OUT.items() if why.startswith("raised")}
    assert not broken, f"gradient-check tests that failed while their cases were collected: {broken}"
    assert len(CASES) > 80


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
def test_cpu_half_runs_every_case(dtype):
    """The CPU half of the parity check runs every case and repeats itself exactly."""
    for case in ALL:
        first = parity.run(case, dtype, gpu=False)
        if not parity.random_in_train(case.param):
            parity.assert_same(parity.run(case, dtype, gpu=False, weights=first["weights"]), first, dtype, case.test)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: numpy.dtype(d).name)
@pytest.mark.parametrize("case", ALL, ids=[cases.case_id(c) for c in ALL])
def test_layer_on_gpu_matches_cpu(case, dtype):
    what = f"{case.param.type} ({case.test}, {numpy.dtype(dtype).name})"
    cpu = parity.run(case, dtype, gpu=False)
    gpu = parity.run(case, dtype, gpu=True, weights=cpu["weights"])
    if parity.random_in_train(case.param):
        parity.assert_random_layer_consistent(case, gpu, dtype, what)
    else:
        parity.assert_same(gpu, cpu, dtype, what)


@needs_gpu
def test_hdf5_data_on_gpu(hdf5_source, restore_cpu_mode):
    rows = numpy.arange(24, dtype=numpy.float32).reshape(6, 4)
    source = hdf5_source({"d.h5": {"data": rows, "label": numpy.arange(6, dtype=numpy.float32)}})
    text = f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{source}" batch_size: 4 }}'
    tops = {}
    for gpu in (False, True):
        case = GradientCase(param=layer_param(text), dtype=numpy.float32, bottoms=[], num_top=2, check_bottom=[])
        case.param.name = "d"
        result = parity.run(case, numpy.float32, gpu=gpu)
        tops[gpu] = result["top"]
    for cpu_top, gpu_top in zip(tops[False], tops[True]):
        numpy.testing.assert_array_equal(gpu_top, cpu_top)
    numpy.testing.assert_array_equal(tops[True][0], rows[:4])

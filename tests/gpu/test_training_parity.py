"""LeNet-sized training on the CPU and on the GPU from the same seed, weights and data: the same weights after 20
iterations of SGD with momentum (float32, so to a tolerance that allows for sums taken in other orders)."""
import numpy
import pytest

import caffeish
from caffeish import backend

pytestmark = pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA device (CuPy sees none)")

NET = """
name: "LeNetSmall"
layer {{ name: "mnist" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{source}" batch_size: 16 }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 20 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 50 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param {{ num_output: 100 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def write_solver(tmp_path, hdf5_source):
    rng = numpy.random.default_rng(0)
    source = hdf5_source({"train.h5": {"data": rng.uniform(0, 1, (96, 1, 28, 28)).astype(numpy.float32),
                                       "label": rng.integers(0, 10, 96).astype(numpy.float32)}})
    (tmp_path / "net.prototxt").write_text(NET.format(source=source))
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: "inv"\n'
                    'gamma: 0.0001\npower: 0.75\nmax_iter: 20\ndisplay: 0\nrandom_seed: 3\n')
    return str(path)


def train(path, gpu, initial=None):
    (caffeish.set_mode_gpu if gpu else caffeish.set_mode_cpu)()
    solver = caffeish.get_solver(path)
    if initial is not None:
        for blob, values in zip(solver.net.learnable_params, initial):
            blob.data[...] = backend.to_current(values, blob.dtype)
    start = [backend.to_cpu(b.data).copy() for b in solver.net.learnable_params]
    solver.step(20)
    loss = float(solver.smoothed_loss)
    end = [backend.to_cpu(b.data).copy() for b in solver.net.learnable_params]
    solver.net.close()
    return start, end, loss


def test_lenet_trains_the_same_on_cpu_and_gpu(tmp_path, hdf5_source, restore_cpu_mode):
    path = write_solver(tmp_path, hdf5_source)
    start, cpu, cpu_loss = train(path, gpu=False)
    _, gpu, gpu_loss = train(path, gpu=True, initial=start)
    moved = max(float(numpy.abs(e - s).max()) for s, e in zip(start, cpu))
    assert moved > 1e-3, "the weights hardly moved: the comparison would prove nothing"
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        scale = max(float(numpy.abs(c).max()), 1e-3)
        numpy.testing.assert_allclose(g, c, rtol=1e-3, atol=1e-3 * scale, err_msg=f"parameter {i}")
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-3)

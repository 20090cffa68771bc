"""Images per second delivered by the Data layer (LMDB, with prefetching and transforms).

    python bench/data_throughput.py [--batches N]

Two cases, as the nets use them: 28x28 gray (LeNet, batch 64, scale) and
256x256 colour cropped to 227 (CaffeNet, batch 32, crop + mirror + mean).
Each is printed next to the forward+backward time of its net at the same batch.
"""
import argparse
import pathlib
import tempfile
import time

import lmdb
import numpy

import caffeish
from caffeish import io as cio
from caffeish.prototxt import parse_text, read_net_param

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_db(path, n, shape):
    rng = numpy.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 32)
    with env.begin(write=True) as txn:
        for i in range(n):
            image = rng.integers(0, 256, size=shape, dtype=numpy.uint8)
            txn.put(f"{i:08d}".encode(), cio.array_to_datum(image, i % 10).SerializeToString())
    env.close()


def data_rate(db, batch, transform, batches):
    text = (f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB prefetch: 4 }} }}')
    net = caffeish.Net(parse_text(text, caffeish.caffe_pb2.NetParameter()), caffeish.TRAIN)
    try:
        net.forward_prefilled()
        t0 = time.perf_counter()
        for _ in range(batches):
            net.forward_prefilled()
        return batches * batch / (time.perf_counter() - t0)
    finally:
        net.close()


def net_ms(path, batch, iterations=3):
    param = read_net_param(str(ROOT / path))
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    net = caffeish.Net(param, caffeish.TRAIN)
    net.forward_backward()
    t0 = time.perf_counter()
    for _ in range(iterations):
        net.forward_backward()
    return (time.perf_counter() - t0) / iterations * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    cases = [("28x28 gray, LeNet", (1, 28, 28), 64, "scale: 0.00390625", "models/lenet/lenet_deploy.prototxt"),
             ("256x256 -> 227 crop, CaffeNet", (3, 256, 256), 32, "crop_size: 227 mirror: true mean_value: 104 "
              "mean_value: 117 mean_value: 123", "models/caffenet/deploy.prototxt")]
    print(f"{'case':<32} {'batch':>5} {'data img/s':>11} {'net fwd+bwd ms':>15} {'net img/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, batch, transform, model in cases:
            db = pathlib.Path(tmp) / name.split(",")[0].replace(" ", "_")
            make_db(db, batch * 8, shape)
            rate = data_rate(db, batch, transform, args.batches)
            ms = net_ms(model, batch)
            print(f"{name:<32} {batch:>5} {rate:>11.0f} {ms:>15.1f} {batch / ms * 1e3:>10.1f}")


if __name__ == "__main__":
    main()

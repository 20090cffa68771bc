"""Each layer type alone, forward and backward, against its PyTorch equivalent (float32, CPU).

    python bench/layers.py [--iterations N] [--threads T] [FILTER ...]

FILTER keeps the cases whose name contains any of the given words (``conv``, ``pool``, ``caffenet``...).
Runs alternate in blocks (3 of ours, 3 of torch, ...; the first of each block not counted, as in
``vs_torch.py``) and each number is a median.  Backward computes every
gradient both sides can: the input's, and the parameters' (ours accumulate into diffs zeroed first,
torch's grads are set to None first, as ``zero_grad()`` does).  The shapes are those of LeNet,
CIFAR-10 quick and CaffeNet (batch 32), plus odd ones (groups, dilation, overlapping pooling).
"""
import argparse
import pathlib
import statistics
import sys
import time

import numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from vs_torch import BLOCK, blas_threads  # noqa: E402


def conv(o, k, s=1, p=0, g=1, d=1):
    return (f'type: "Convolution" convolution_param {{ num_output: {o} kernel_size: {k} stride: {s} pad: {p} '
            f'group: {g} dilation: {d} weight_filler {{ type: "gaussian" std: 0.01 }} }}')


def pool(method, k, s, p=0):
    return f'type: "Pooling" pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} }}'


LRN = 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'

#: name, our layer (prototxt text), bottom shapes
CASES = [
    ("conv lenet1 20x5x5", conv(20, 5), [(64, 1, 28, 28)]),
    ("conv lenet2 50x5x5", conv(50, 5), [(64, 20, 12, 12)]),
    ("conv cifar1 32x5x5 p2", conv(32, 5, p=2), [(100, 3, 32, 32)]),
    ("conv cifar2 32x5x5 p2", conv(32, 5, p=2), [(100, 32, 16, 16)]),
    ("conv cifar3 64x5x5 p2", conv(64, 5, p=2), [(100, 32, 8, 8)]),
    ("conv caffenet1 96x11x11 s4", conv(96, 11, s=4), [(32, 3, 227, 227)]),
    ("conv caffenet2 256x5x5 p2 g2", conv(256, 5, p=2, g=2), [(32, 96, 27, 27)]),
    ("conv caffenet3 384x3x3 p1", conv(384, 3, p=1), [(32, 256, 13, 13)]),
    ("conv caffenet4 384x3x3 p1 g2", conv(384, 3, p=1, g=2), [(32, 384, 13, 13)]),
    ("conv caffenet5 256x3x3 p1 g2", conv(256, 3, p=1, g=2), [(32, 384, 13, 13)]),
    ("conv 1x1 64", conv(64, 1), [(32, 128, 28, 28)]),
    ("conv dilated 64x3x3 d2 p2", conv(64, 3, p=2, d=2), [(16, 32, 31, 29)]),
    ("conv grouped 64x3x3 s2 g4", conv(64, 3, s=2, p=1, g=4), [(16, 32, 31, 29)]),
    ("pool MAX 2/2 lenet", pool("MAX", 2, 2), [(64, 20, 24, 24)]),
    ("pool MAX 3/2 caffenet1", pool("MAX", 3, 2), [(32, 96, 55, 55)]),
    ("pool MAX 3/2 caffenet5", pool("MAX", 3, 2), [(32, 256, 13, 13)]),
    ("pool MAX 3/2 cifar1", pool("MAX", 3, 2), [(100, 32, 32, 32)]),
    ("pool AVE 3/2 cifar2", pool("AVE", 3, 2), [(100, 32, 16, 16)]),
    ("pool AVE 2/2 p1", pool("AVE", 2, 2, 1), [(32, 64, 31, 31)]),
    ("lrn caffenet1", LRN, [(32, 96, 27, 27)]),
    ("lrn caffenet2", LRN, [(32, 256, 13, 13)]),
    ("ip caffenet fc6", 'type: "InnerProduct" inner_product_param { num_output: 4096 }', [(32, 256, 6, 6)]),
    ("ip caffenet fc7", 'type: "InnerProduct" inner_product_param { num_output: 4096 }', [(32, 4096)]),
    ("ip lenet ip1", 'type: "InnerProduct" inner_product_param { num_output: 500 }', [(64, 50, 4, 4)]),
    ("relu caffenet conv1", 'type: "ReLU"', [(32, 96, 55, 55)]),
    ("dropout caffenet fc6", 'type: "Dropout" dropout_param { dropout_ratio: 0.5 }', [(32, 4096)]),
    ("softmax 1000", 'type: "Softmax"', [(32, 1000)]),
    ("softmaxloss 1000", 'type: "SoftmaxWithLoss"', [(32, 1000), (32,)]),
]


def build_ours(text, shapes, rng):
    from caffeish import Blob, caffe_pb2
    from caffeish.layer import create_layer
    from caffeish.prototxt import parse_text
    param = parse_text(text, caffe_pb2.LayerParameter())
    param.name, param.phase = "layer", caffe_pb2.TRAIN
    layer = create_layer(param, dtype=numpy.float32)
    bottom = []
    for i, shape in enumerate(shapes):
        b = Blob(shape, dtype=numpy.float32, name=f"b{i}")
        if layer.type == "SoftmaxWithLoss" and i == 1:
            b.data[...] = rng.integers(0, shapes[0][1], size=shape)
        else:
            b.data[...] = rng.standard_normal(shape, dtype=numpy.float32)
        bottom.append(b)
    top = [Blob(dtype=numpy.float32, name="t0")]
    layer.setup(bottom, top)
    layer.Forward(bottom, top)
    if layer.type != "SoftmaxWithLoss":
        top[0].diff[...] = rng.standard_normal(top[0].shape, dtype=numpy.float32)
    else:
        top[0].diff[...] = 1.0
    down = [True] + [False] * (len(bottom) - 1)
    return layer, bottom, top, down


def build_torch(layer, bottom):
    """The torch module equivalent to ``layer``, with its weights, and its inputs."""
    import torch
    from torch import nn
    from caffeish.proto import caffe_pb2
    PP = caffe_pb2.PoolingParameter
    kind = layer.type
    if kind == "Convolution":
        m = nn.Conv2d(layer.channels, layer.num_output, tuple(layer.kernel), tuple(layer.stride), tuple(layer.pad),
                      tuple(layer.dilation), layer.group, layer.bias_term)
    elif kind == "Pooling":
        k, s, p = (layer.kernel_h, layer.kernel_w), (layer.stride_h, layer.stride_w), (layer.pad_h, layer.pad_w)
        m = (nn.MaxPool2d(k, s, p, ceil_mode=True) if layer.method == PP.MAX
             else nn.AvgPool2d(k, s, p, ceil_mode=True, count_include_pad=True))
    elif kind == "LRN":
        m = nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    elif kind == "InnerProduct":
        m = nn.Sequential(nn.Flatten(1), nn.Linear(layer.K, layer.num_output, layer.bias_term))
    elif kind == "ReLU":
        m = nn.ReLU()
    elif kind == "Dropout":
        m = nn.Dropout(layer.ratio)
    elif kind == "Softmax":
        m = nn.Softmax(dim=1)
    elif kind == "SoftmaxWithLoss":
        m = nn.CrossEntropyLoss()
    else:
        raise SystemExit(f"layers.py: no torch equivalent for {kind}")
    params = list(m.parameters())
    with torch.no_grad():
        for p, b in zip(params, layer.blobs):
            p.copy_(torch.from_numpy(b.data.reshape(p.shape)))
    x = torch.from_numpy(bottom[0].data.copy()).requires_grad_(True)
    extra = [torch.from_numpy(bottom[1].data.astype(numpy.int64))] if kind == "SoftmaxWithLoss" else []
    return m.train(), params, x, extra


def time_case(text, shapes, iterations):
    import torch
    rng = numpy.random.default_rng(0)
    layer, bottom, top, down = build_ours(text, shapes, rng)
    m, params, x, extra = build_torch(layer, bottom)
    g = torch.from_numpy(top[0].diff.copy()).reshape(()) if layer.type == "SoftmaxWithLoss" else \
        torch.from_numpy(top[0].diff.copy())

    def ours():
        t0 = time.perf_counter()
        layer.Forward(bottom, top)
        t1 = time.perf_counter()
        for b in layer.blobs:
            b.diff[...] = 0
        layer.Backward(top, down, bottom)
        return t1 - t0, time.perf_counter() - t1

    def theirs():
        x.grad = None
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        y = m(x, *extra)
        t1 = time.perf_counter()
        y.backward(g)
        return t1 - t0, time.perf_counter() - t1

    a, b = [], []
    while len(a) < iterations:
        for runs, step in ((a, ours), (b, theirs)):
            step()  # after the other framework: its idle threads may still spin
            runs.extend(step() for _ in range(BLOCK - 1))
    med = lambda runs, k: statistics.median(r[k] for r in runs) * 1e3  # noqa: E731
    return med(a, 0), med(a, 1), med(b, 0), med(b, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch
    from caffeish.cpu import threads as cpu_threads
    cpu_threads.quiet_idle_blas_threads()  # what building a Net does; numpy was imported first here
    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    print(f"threads: {threads}; ms, median of {args.iterations} runs in alternating blocks")
    print(f"{'case':<30} {'shape':<20} {'fwd ours':>9} {'torch':>8} {'ratio':>6}   "
          f"{'bwd ours':>9} {'torch':>8} {'ratio':>6}")
    for name, text, shapes in CASES:
        if args.filters and not any(f in name for f in args.filters):
            continue
        f, b, tf, tb = time_case(text, shapes, args.iterations)
        shape = "x".join(map(str, shapes[0]))
        print(f"{name:<30} {shape:<20} {f:>9.2f} {tf:>8.2f} {f / tf:>6.2f}   {b:>9.2f} {tb:>8.2f} {b / tb:>6.2f}",
              flush=True)


if __name__ == "__main__":
    main()

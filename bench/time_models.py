"""Forward/backward ms per iteration of the example deploy nets on this machine.

    python bench/time_models.py [--iterations N] [--batch N]

Prints one row per net: median forward, backward and total ms, and images/s.
Side-by-side comparison with PyTorch comes with `bench/vs_torch.py`.
"""
import argparse
import pathlib
import statistics
import time

import caffeish
from caffeish.prototxt import read_net_param

ROOT = pathlib.Path(__file__).resolve().parents[1]
NETS = {
    "lenet": ("models/lenet/lenet_deploy.prototxt", 64),
    "caffenet": ("models/caffenet/deploy.prototxt", 10),
    "googlenet": ("models/googlenet/deploy.prototxt", 10),
    "resnet50": ("models/resnet50/deploy.prototxt", 4),
    "squeezenet": ("models/squeezenet/deploy.prototxt", 8),
    "vgg16": ("models/vgg16/deploy.prototxt", 2),
}


def time_net(path, batch, iterations):
    param = read_net_param(str(ROOT / path))
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    net = caffeish.Net(param, caffeish.TEST)
    net.forward_backward()  # warm-up
    fwd, bwd = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        net.forward_prefilled()
        t1 = time.perf_counter()
        net.backward_from_to()
        t2 = time.perf_counter()
        fwd.append((t1 - t0) * 1e3)
        bwd.append((t2 - t1) * 1e3)
    return statistics.median(fwd), statistics.median(bwd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="override every net's batch size")
    parser.add_argument("nets", nargs="*", default=list(NETS))
    args = parser.parse_args()
    print(f"{'net':<10} {'batch':>5} {'forward ms':>11} {'backward ms':>12} {'total ms':>9} {'img/s':>8}")
    for name in args.nets:
        path, batch = NETS[name]
        batch = args.batch or batch
        f, b = time_net(path, batch, args.iterations)
        print(f"{name:<10} {batch:>5} {f:>11.1f} {b:>12.1f} {f + b:>9.1f} {batch / (f + b) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()

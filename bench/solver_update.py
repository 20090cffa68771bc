"""Time of the solver update alone (no forward/backward) for CaffeNet's 61M parameters.

    python bench/solver_update.py [--type SGD] [--iterations 10]

Prints the median ms per update next to the parameter count.
"""
import argparse
import pathlib
import statistics
import time

import numpy

import caffeish
from caffeish.prototxt import parse_text, read_net_param

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="SGD")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    param = parse_text(f'type: "{args.type}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005',
                       caffeish.caffe_pb2.SolverParameter())
    if args.type in ("AdaGrad", "RMSProp"):
        param.momentum = 0
    param.net_param.CopyFrom(read_net_param(str(ROOT / "models/caffenet/deploy.prototxt")))
    solver = caffeish.get_solver(param)
    rng = numpy.random.default_rng(0)
    for blob in solver.net.learnable_params:
        blob.diff[...] = rng.standard_normal(blob.shape, dtype=numpy.float32) * 1e-3
    count = sum(b.count for b in solver.net.learnable_params)
    times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        solver.apply_update()
        times.append((time.perf_counter() - t0) * 1e3)
        solver.iter += 1
    print(f"{args.type} update of {count / 1e6:.1f}M parameters: median {statistics.median(times):.1f} ms "
          f"(min {min(times):.1f}, max {max(times):.1f}) over {args.iterations} updates")


if __name__ == "__main__":
    main()

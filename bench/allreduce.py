"""All-reduce between processes on this machine, and how much of it a LeNet training step hides.

    mpiexec -n 2 python bench/allreduce.py [--repeats 5] [--lenet-iterations 60]

Rank 0 prints, for float32 sums of 1 float (latency), LeNet's 431,080 and CaffeNet's 60,965,224
parameters: the median time of a blocking ``MPI_Allreduce`` and of caffeish's own path (non-blocking
``MPI_Iallreduce`` waited on by ``World.wait``'s poll loop), with the algorithm bandwidth (bytes / time)
and the bus bandwidth (2 (N-1)/N bytes / time, the figure a ring all-reduce is bounded by).  Then LeNet
(batch 64 per rank, SGD) steps, the configurations interleaved: without communication, with the
gradients in one bucket (all LeNet's 1.7 MB: the 25 MB default), and overlapped (smaller buckets started
from the per-layer backward hook, with and without the progress thread): ms per step (median and
inter-quartile range), ms per step waiting after the backward pass, and the share of the gradient bytes
already summed when the backward pass ended -- the overlap achieved.  docs/scaling.md uses these figures.
"""
import argparse
import logging
import os
import statistics
import time

import numpy

import caffeish
from caffeish import caffe_pb2
from caffeish.parallel import DataParallel, World
from caffeish.parallel.reducers import PROGRESS_ENV
from caffeish.prototxt import parse_text, read_net_param

LENET = "models/lenet/lenet_train_test.prototxt"
CAFFENET_PARAMS = 60_965_224  # models/caffenet/deploy.prototxt (bench/solver_update.py prints 61.0M)


def lenet_solver(batch):
    """LeNet's TRAIN net with DummyData in place of the MNIST LMDB (no data files needed)."""
    net = read_net_param(LENET)
    layers = [lp for lp in net.layer if lp.type != "Data"]
    del net.layer[:]
    dummy = net.layer.add()
    parse_text(f'name: "mnist" type: "DummyData" top: "data" top: "label" dummy_data_param {{ '
               f'shape {{ dim: {batch} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {batch} }} '
               'data_filler { type: "uniform" min: 0 max: 1 } data_filler { type: "constant" value: 3 } }', dummy)
    net.layer.extend(layers)
    param = parse_text('base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" display: 0 '
                       'random_seed: 1 snapshot_after_train: false', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(net)
    param.train_state.stage.append("bench")
    return caffeish.get_solver(param)


def time_allreduce(world, count, repeats):
    MPI = world.MPI
    buf = numpy.ones(count, dtype=numpy.float32)
    blocking, polled = [], []
    for i in range(repeats + 1):
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        t1 = time.perf_counter()
        world.comm.Barrier()
        t2 = time.perf_counter()
        world.wait_requests([world.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)], "the bench all-reduce")
        t3 = time.perf_counter()
        if i:  # the first is a warm-up
            blocking.append(t1 - t0)
            polled.append(t3 - t2)
    return statistics.median(blocking), statistics.median(polled)


class _Measured(DataParallel):
    """DataParallel that notes, when the backward pass ends, how many gradient bytes are already summed."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.done_bytes = self.total_bytes = 0

    def wait_for_sums(self, handles):
        for bucket, handle in self.started():
            self.total_bytes += bucket.nbytes
            if self.reducer.done([handle]):
                self.done_bytes += bucket.nbytes
        return super().wait_for_sums(handles)


class LeNetRun:
    """One LeNet solver (batch per rank), alone or as a DataParallel replica with ``bucket_bytes`` buckets."""

    def __init__(self, world, batch, bucket_bytes):
        self.world = world
        self.solver = lenet_solver(batch)
        self.dp = None
        if bucket_bytes is not None:
            self.dp = _Measured(self.solver, world, bucket_bytes=bucket_bytes)
            self.dp.broadcast_from_root()
        self.solver.step(3)  # warm-up
        self.times, self.wait_s, self.steps = [], 0.0, 0
        if self.dp:
            self.dp.done_bytes = self.dp.total_bytes = 0
            self.dp.stats["wait_s"] = 0.0

    def run(self, steps):
        self.world.comm.Barrier()
        t0 = time.perf_counter()
        self.solver.step(steps)
        self.times.append((time.perf_counter() - t0) / steps)
        self.steps += steps

    def summary(self):
        step = 1e3 * statistics.median(self.times)
        if not self.dp:
            return step, 0.0, 0, float("nan")
        hidden = self.dp.done_bytes / self.dp.total_bytes if self.dp.total_bytes else float("nan")
        return step, 1e3 * self.dp.stats["wait_s"] / self.steps, len(self.dp.buckets), hidden


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="all-reduces timed per size (61M: this many)")
    parser.add_argument("--lenet-iterations", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger("caffeish").setLevel(logging.ERROR)  # (DummyData is not sharded: the bench means it)
    world = World()
    n = world.size
    out = print if world.root else (lambda *a, **k: None)
    lenet = lenet_solver(args.batch)
    lenet_params = sum(b.count for b in lenet.net.learnable_params)
    lenet.net.close()
    out(f"# {n} ranks, {world.MPI.Get_library_version().splitlines()[0].strip()}, float32 sums")
    out(f"{'floats':>12} {'MB':>8} {'Allreduce ms':>13} {'Iallreduce+poll ms':>19} {'algbw GB/s':>11} "
        f"{'busbw GB/s':>11}")
    results = {}
    for label, count, repeats in (("1 float", 1, 200), ("LeNet", lenet_params, 50),
                                  ("CaffeNet", CAFFENET_PARAMS, args.repeats)):
        blocking, polled = time_allreduce(world, count, repeats)
        nbytes = 4 * count
        results[label] = blocking
        out(f"{count:>12,} {nbytes / 1e6:>8.3f} {1e3 * blocking:>13.3f} {1e3 * polled:>19.3f} "
            f"{nbytes / blocking / 1e9:>11.3f} {2 * (n - 1) / n * nbytes / blocking / 1e9:>11.3f}   ({label})")
    out(f"\n# LeNet training step, batch {args.batch} per rank (effective {n * args.batch}), SGD; "
        f"all-reduce of {lenet_params:,} floats alone: {1e3 * results['LeNet']:.2f} ms")
    rows = [("no communication", None, True),
            ("one bucket after backward (25 MB default)", 25 * 2 ** 20, True),
            ("overlapped, 256 kB buckets", 2 ** 18, True), ("overlapped, one bucket per parameter", 1, True),
            ("256 kB buckets, no progress thread", 2 ** 18, False)]
    runs = {}
    for label, bucket_bytes, pump in rows:
        os.environ[PROGRESS_ENV] = "1" if pump else "0"
        runs[label] = LeNetRun(world, args.batch, bucket_bytes)
    for _ in range(max(args.lenet_iterations // 5, 1)):  # rounds over the configurations: drift hits all alike
        for run in runs.values():
            run.run(5)
    out(f"{'':>42}  {'ms/step':>8} {'IQR':>6} {'buckets':>7} {'wait ms':>8} {'summed before backward ended':>29}")
    for label, run in runs.items():
        step, wait, buckets, hidden = run.summary()
        q = statistics.quantiles([1e3 * t for t in run.times], n=4) if len(run.times) > 1 else [step, step, step]
        out(f"{label:>42}: {step:8.2f} {q[2] - q[0]:6.2f} {buckets:7d} {wait:8.2f} {100 * hidden:28.1f}%")
        run.solver.net.close()
    out("(wait: ms per step between the end of the backward pass and the end of the all-reduce, including "
        "waiting for the slower rank)")


if __name__ == "__main__":
    main()

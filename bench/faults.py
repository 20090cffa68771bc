"""Faults lose nothing: kill -9 trials of `caffeish train` and `caffeish convert`, and fuzz throughput.

    python bench/faults.py [--trials 30] [--convert-trials 10] [--fuzz-seconds 20] [--seed 0]

Train trials: LeNet on DummyData (batch 16) trains with a snapshot every 2 iterations and is killed
with SIGKILL at a random moment; then every .caffemodel left must load into the net, and training must
resume from the newest .solverstate for a few iterations.  Convert trials: `caffeish convert npz
--overwrite` over an existing database is killed at a random moment; the database must then be complete
(the old one or the new one) when read.  Fuzz: the random nets, solvers and byte mutations of
tests/fuzz_cases.py for a while, counting cases and escapes (exceptions other than CaffeishError).
"""
import argparse
import collections
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from caffeish import caffe_pb2  # noqa: E402
from caffeish.errors import CaffeishError  # noqa: E402
from caffeish.net import Net  # noqa: E402
from caffeish.prototxt import read_net_param  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("CAFFEISH_MEMORY_LIMIT", None)


def lenet_on_dummy_data(path, batch=16):
    """LeNet's train net with a DummyData layer in place of its LMDB Data layers."""
    param = read_net_param(str(ROOT / "models" / "lenet" / "lenet_train_test.prototxt"))
    keep = [lp for lp in param.layer if lp.type not in ("Data", "Accuracy")]
    del param.layer[:]
    dummy = param.layer.add(name="data", type="DummyData", top=["data", "label"])
    dummy.dummy_data_param.shape.add().dim.extend([batch, 1, 28, 28])
    dummy.dummy_data_param.shape.add().dim.extend([batch])
    dummy.dummy_data_param.data_filler.add(type="uniform", min=0, max=1)
    dummy.dummy_data_param.data_filler.add(type="constant", value=3)
    param.layer.extend(keep)
    from google.protobuf import text_format
    path.write_text(text_format.MessageToString(param))


def write_solver(directory, max_iter):
    path = directory / f"solver_{max_iter}.prototxt"
    path.write_text(f'net: "net.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: {max_iter}\n'
                    f'snapshot: 2\nsnapshot_prefix: "{directory / "lenet"}"\nrandom_seed: 1\n'
                    'snapshot_after_train: false\nsolver_mode: CPU\ndisplay: 0\n')
    return str(path)


def iterations(directory, ext):
    return sorted(int(f.split("_iter_")[1].split(".")[0]) for f in os.listdir(directory)
                  if f.endswith(ext) and "_iter_" in f)


def train_trial(directory, delay):
    """Kill a training run after ``delay`` seconds; check what it left.  Returns a dict of findings."""
    solver = write_solver(directory, 1000000)
    proc = subprocess.Popen([sys.executable, "-m", "caffeish", "train", "-solver", solver], cwd=directory, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = {"litter": len([f for f in os.listdir(directory) if f.startswith(".tmp-")])}
    states, models = iterations(directory, ".solverstate"), iterations(directory, ".caffemodel")
    out["snapshots"] = len(states)
    out["between"] = bool(models and (not states or models[-1] > states[-1]))
    loadable = True
    with Net(str(directory / "net.prototxt"), phase=caffe_pb2.TRAIN) as net:
        for it in models:
            try:
                net.copy_from(str(directory / f"lenet_iter_{it}.caffemodel"))
            except CaffeishError as e:
                loadable = False
                out["load_error"] = str(e)
    out["loadable"] = loadable
    if not states:
        return out
    latest = states[-1]
    resume = write_solver(directory, latest + 4)
    proc = subprocess.run([sys.executable, "-m", "caffeish", "train", "-solver", resume, "-snapshot",
                           str(directory / f"lenet_iter_{latest}.solverstate")], cwd=directory, env=ENV,
                          capture_output=True, text=True, timeout=300)
    out["resumed"] = proc.returncode == 0 and "Optimization Done." in proc.stderr
    if not out["resumed"]:
        out["resume_error"] = proc.stderr[-1000:]
    out["litter_after_resume"] = len([f for f in os.listdir(directory) if f.startswith(".tmp-")])
    return out


def run_train_trials(n, rng):
    results = []
    for trial in range(n):
        directory = pathlib.Path(tempfile.mkdtemp(prefix="caffeish-fault-"))
        try:
            lenet_on_dummy_data(directory / "net.prototxt")
            delay = rng.uniform(0.5, 4.0)
            r = train_trial(directory, delay)
            r["delay"] = delay
            results.append(r)
            print(f"  trial {trial + 1:2d}: killed at {delay:4.2f} s: {r['snapshots']:3d} snapshot(s), "
                  f"loadable {r['loadable']}, resumed {r.get('resumed', '-')}"
                  f"{', between .caffemodel and .solverstate' if r['between'] else ''}"
                  f"{', temporary file left: %d' % r['litter'] if r['litter'] else ''}", flush=True)
            for key in ("load_error", "resume_error"):
                if key in r:
                    print("    " + r[key].replace("\n", "\n    "))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    with_snapshot = [r for r in results if r["snapshots"]]
    print(f"kill -9 train trials: {n}; killed before the first snapshot: {n - len(with_snapshot)}; "
          f"every .caffemodel loadable: {sum(r['loadable'] for r in results)}/{n}; resumed from the newest "
          f".solverstate: {sum(r['resumed'] for r in with_snapshot)}/{len(with_snapshot)}; killed between a "
          f".caffemodel and its .solverstate: {sum(r['between'] for r in results)}; kills that left a temporary "
          f"file: {sum(bool(r['litter']) for r in results)} (left after the resumed run: "
          f"{sum(r.get('litter_after_resume', 0) for r in with_snapshot)})")
    return results


def run_convert_trials(n, rng):
    directory = pathlib.Path(tempfile.mkdtemp(prefix="caffeish-fault-convert-"))
    try:
        sizes = {}
        for value, rows in ((1, 100000), (2, 120000)):
            numpy.savez(directory / f"v{value}.npz", data=numpy.full((rows, 1, 32, 32), value, numpy.uint8),
                        label=numpy.arange(rows) % 10)
            sizes[value] = rows
        db = directory / "db"
        started = time.perf_counter()
        first = subprocess.run([sys.executable, "-m", "caffeish", "convert", "npz", str(directory / "v2.npz"),
                                str(db)], env=ENV, capture_output=True, text=True)
        duration = time.perf_counter() - started  # kills land anywhere in a run as long as this one
        assert first.returncode == 0, first.stderr
        shutil.rmtree(db)
        assert subprocess.run([sys.executable, "-m", "caffeish", "convert", "npz", str(directory / "v1.npz"),
                               str(db)], env=ENV, capture_output=True).returncode == 0
        outcome = collections.Counter()
        for trial in range(n):
            value = 2 if trial % 2 == 0 else 1
            proc = subprocess.Popen([sys.executable, "-m", "caffeish", "convert", "npz", "--overwrite",
                                     str(directory / f"v{value}.npz"), str(db)], env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, 1.1 * duration))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            from caffeish.data.db import open_db
            try:
                with open_db(str(db), "lmdb", "r") as opened:  # reading restores an old copy left aside
                    count = len(opened)
                    first_value = numpy.frombuffer(caffe_pb2.Datum.FromString(opened.get(b"00000000")).data,
                                                   numpy.uint8)[0]
                complete = count == sizes[int(first_value)]
                outcome["old" if first_value != value else "new"] += complete
                outcome["incomplete"] += not complete
            except CaffeishError as e:
                outcome["unreadable"] += 1
                print("    " + str(e))
        left = len([f for f in os.listdir(directory) if f.endswith((".tmp", ".old"))])
        again = subprocess.run([sys.executable, "-m", "caffeish", "convert", "npz", "--overwrite",
                                str(directory / "v1.npz"), str(db)], env=ENV, capture_output=True)
        print(f"kill -9 convert trials: {n} (a full conversion takes {duration:.1f} s); database complete after the "
              f"kill: {outcome['old'] + outcome['new']}/{n} (the old one: {outcome['old']}, the new one: "
              f"{outcome['new']}); incomplete: {outcome['incomplete']}; unreadable: {outcome['unreadable']}; "
              f"temporary builds left by the last kill: {left}, after one more conversion: "
              f"{len([f for f in os.listdir(directory) if f.endswith(('.tmp', '.old'))])} (exit {again.returncode})")
        return outcome
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_fuzz(seconds, seed):
    import logging
    import warnings
    import fuzz_cases as fc
    logging.getLogger("caffeish").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    numpy.seterr(all="ignore")
    os.environ["CAFFEISH_MEMORY_LIMIT"] = str(256 << 20)
    workdir = tempfile.mkdtemp(prefix="caffeish-fuzz-")
    try:
        (pathlib.Path(workdir) / "junk.txt").write_text("garbage 1\n")
        os.makedirs(os.path.join(workdir, "state"))
        seeds = {"model": fc.seed_caffemodel(), "blob": fc.seed_binaryproto(), "datums": fc.seed_datums(),
                 "state": fc.seed_solverstate(os.path.join(workdir, "state"))}
        kinds = {
            "net": lambda d: fc.run_net(fc.random_net(d, workdir)),
            "solver": lambda d: fc.run_solver(fc.random_solver(d, workdir)),
            "prototxt": lambda d: fc.run_prototxt(fc.mutate(d, d.choice(fc.SEED_NETS).encode()), workdir),
            "caffemodel": lambda d: fc.run_caffemodel(fc.mutate(d, seeds["model"]), fc.seed_net_param(), workdir),
            "binaryproto": lambda d: fc.run_binaryproto(fc.mutate(d, seeds["blob"]), workdir),
            "datum": lambda d: fc.run_datum(fc.mutate(d, d.choice(seeds["datums"]))),
            "solverstate": lambda d: fc.run_solverstate(fc.mutate(d, seeds["state"]), os.path.join(workdir, "state")),
        }
        counts, escapes = collections.Counter(), collections.Counter()
        examples = {}
        start = time.perf_counter()
        case = 0
        names = sorted(kinds)
        while time.perf_counter() - start < seconds:
            kind = names[case % len(names)]
            draw = fc.RandomDraw(seed * 1000003 + case)
            case += 1
            try:
                with fc.time_budget():
                    counts[(kind, kinds[kind](draw))] += 1
            except Exception as e:
                frame = traceback.extract_tb(e.__traceback__)[-1]
                key = (kind, type(e).__name__, f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}")
                escapes[key] += 1
                examples.setdefault(key, seed * 1000003 + case - 1)
        elapsed = time.perf_counter() - start
        total = sum(counts.values()) + sum(escapes.values())
        print(f"fuzz: {total} cases in {elapsed:.1f} s ({total / elapsed:.0f} cases/s); by kind: "
              + ", ".join(f"{k} {sum(v for (kk, _), v in counts.items() if kk == k)}" for k in names)
              + f"; escapes (not CaffeishError): {sum(escapes.values())}")
        for key, n in escapes.most_common():
            print(f"  escape {key[1]} at {key[2]} ({key[0]} cases, {n}x; RandomDraw seed {examples[key]})")
        return total, escapes
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="kill -9 trials of caffeish train")
    parser.add_argument("--convert-trials", type=int, default=10, help="kill -9 trials of caffeish convert")
    parser.add_argument("--fuzz-seconds", type=float, default=20.0, help="how long the fuzz throughput run lasts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.trials:
        run_train_trials(args.trials, rng)
    if args.convert_trials:
        run_convert_trials(args.convert_trials, rng)
    if args.fuzz_seconds > 0:
        run_fuzz(args.fuzz_seconds, args.seed)


if __name__ == "__main__":
    main()

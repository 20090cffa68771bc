"""`caffeish train` and `caffeish test` as users run them: real subprocesses, real files."""
import functools
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import caffeish_run
from solvers.nets import TEACHER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
PLAIN = TEACHER.replace('bottom: "yd"', 'bottom: "y"')
PLAIN = PLAIN.replace(PLAIN[PLAIN.index('layer { name: "drop"'):PLAIN.index('layer { name: "loss"')], "")


run = functools.partial(caffeish_run, check=True)


def write_solver(tmp_path, net_text=PLAIN, name="solver.prototxt", **fields):
    (tmp_path / "net.prototxt").write_text(net_text)
    base = dict(net='"net.prototxt"', base_lr=0.05, lr_policy='"fixed"', max_iter=200, display=50,
                random_seed=7, solver_mode="CPU", snapshot_prefix=f'"{tmp_path / "snap"}"')
    base.update(fields)
    path = tmp_path / name
    path.write_text("\n".join(f"{k}: {v}" for k, v in base.items()) + "\n")
    return str(path)


def losses(stderr):
    return [float(v) for v in re.findall(r"Train net output #0: loss = ([-+.\deE]+)", stderr)]


SOLVERS = {
    "SGD": dict(momentum=0.9),
    "Nesterov": dict(momentum=0.9),
    "AdaGrad": dict(base_lr=0.5),
    "RMSProp": dict(base_lr=0.02, rms_decay=0.98),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6, max_iter=1500),
    "Adam": dict(base_lr=0.05, momentum=0.9, momentum2=0.999),
}


@pytest.mark.parametrize("solver_type", list(SOLVERS))
def test_every_solver_trains_to_low_loss(tmp_path, solver_type):
    solver = write_solver(tmp_path, type=f'"{solver_type}"', **SOLVERS[solver_type])
    out = run("train", "-solver", solver).stderr
    found = losses(out)
    assert len(found) >= 4 and found[-1] < 0.02 * found[0], found
    assert "Optimization Done." in out
    assert os.path.exists(tmp_path / f"snap_iter_{SOLVERS[solver_type].get('max_iter', 200)}.caffemodel")


def test_log_lines_keep_caffe_shapes(tmp_path):
    solver = write_solver(tmp_path, max_iter=100, test_iter=2, test_interval=50, lr_policy='"inv"',
                          gamma=0.0001, power=0.75, momentum=0.9)
    out = run("train", "--solver", solver).stderr
    assert re.search(r"\] Iteration 50 \([\d.e+-]+ iter/s, [\d.e+-]+s/50 iters\), loss = [\d.e+-]+$", out, re.M)
    assert re.search(r"\]     Train net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", out, re.M)
    assert re.search(r"\]     Test net output #0: loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", out, re.M)
    assert re.search(r"\] Iteration 50, lr = 0.0498\d*$", out, re.M)
    assert "Iteration 100, Testing net (#0)" in out and "Snapshotting to binary proto file" in out
    assert "Data wait" not in out  # no prefetching data layer in this net: nothing to report


def test_the_log_starts_with_caffes_set_up_lines_unless_quiet(tmp_path):
    solver = write_solver(tmp_path, max_iter=2, display=1)
    out = run("train", "--solver", solver).stderr
    assert re.search(r"\] Initializing solver from parameters: \nbase_lr: 0.05\ndisplay: 1\n", out)
    assert re.search(r"\] Initializing net from parameters: \nname: \"teacher\"\nstate \{\n  phase: TRAIN", out)
    # Caffe's per-layer lines, with shapes, counts and the running total of top bytes (x, its split, target, y,
    # loss: 4 * (40 + 80 + 24 + 24 + 1))
    for line in ("Creating Layer x", "x -> x", "Setting up x", "Top shape: 8 5 (40)", "Memory required for data: 160",
                 "student <- x_x_0_split_1", "Top shape: 8 3 (24)", "Top shape: (1)", "    with loss weight 1",
                 "Memory required for data: 676", "student needs backward computation.",
                 "teacher does not need backward computation.", "This network produces output loss",
                 "Network initialization done."):
        assert re.search(r"\] " + re.escape(line) + "$", out, re.M), line
    quiet = run("train", "--solver", solver, "--quiet").stderr
    assert "Top shape" not in quiet and "Initializing solver" not in quiet
    assert "Train net output #0: loss" in quiet and "Optimization Done." in quiet
    assert "Top shape" not in run("train", "--solver", solver, "-q").stderr


def test_the_solver_file_is_read_once_per_run(tmp_path):
    solver = write_solver(tmp_path, max_iter=2)
    script = tmp_path / "count.py"
    script.write_text(f"""
import sys
import caffeish.prototxt as p
from caffeish.cli import main
reads, real = [], p.read_text_proto
def counting(path, message_type):
    reads.append(str(path))
    return real(path, message_type)
p.read_text_proto = counting
try:
    main(["train", "--solver", {solver!r}, "--quiet"])
except SystemExit:
    pass
print("solver reads:", reads.count({solver!r}))
""")
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=120)
    assert "solver reads: 1" in out.stdout, out.stdout + out.stderr


def test_resume_from_snapshot_through_cli(tmp_path):
    solver = write_solver(tmp_path, max_iter=60, snapshot=30, momentum=0.9)
    run("train", "-solver", solver)
    out = run("train", "-solver", solver, "-snapshot", str(tmp_path / "snap_iter_30.solverstate")).stderr
    assert "Resuming from" in out and "Iteration 30, Testing" not in out
    assert re.search(r"Snapshotting to binary proto file \S+snap_iter_60.caffemodel", out)


def test_finetune_and_test_command(tmp_path):
    solver = write_solver(tmp_path, max_iter=50, momentum=0.9)
    run("train", "-solver", solver)
    weights = str(tmp_path / "snap_iter_50.caffemodel")
    out = run("train", "-solver", solver, "-weights", weights).stderr
    assert f"Finetuning from {weights}" in out
    scored = run("test", "-model", str(tmp_path / "net.prototxt"), "-weights", weights, "-iterations", "3").stderr
    assert re.search(r"\] Batch 0, loss = [\d.e+-]+$", scored, re.M)
    assert re.search(r"\] Batch 2, loss = [\d.e+-]+$", scored, re.M)
    assert re.search(r"\] Loss: [\d.e+-]+$", scored, re.M)
    assert re.search(r"\] loss = [\d.e+-]+ \(\* 1 = [\d.e+-]+ loss\)$", scored, re.M)


@pytest.mark.parametrize("effect", ["stop", "snapshot"])
def test_sigint(tmp_path, effect):
    solver = write_solver(tmp_path, max_iter=2000000, display=1000, snapshot_after_train="false")
    proc = subprocess.Popen([sys.executable, "-m", "caffeish", "train", "-solver", solver, "-sigint_effect", effect],
                            cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in proc.stderr:
        if "Iteration 1000 (" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    if effect == "stop":
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, rest
        assert "Optimization stopped early." in rest and "Traceback" not in rest
    else:
        for line in proc.stderr:
            if "Snapshotting solver state" in line:
                break
        else:
            pytest.fail("no snapshot after SIGINT")
        proc.stderr.readline()  # a line after the snapshot's: it has been written
        assert proc.poll() is None  # it goes on training
        proc.terminate()
        proc.wait(timeout=60)
        assert any(f.endswith(".solverstate") for f in os.listdir(tmp_path))


def test_bad_invocations_are_one_clear_line(tmp_path):
    solver = write_solver(tmp_path, max_iter=5)
    both = run("train", "-solver", solver, "-weights", "a.caffemodel", "-snapshot", "b.solverstate", check=False)
    assert both.returncode == 1 and "not both" in both.stderr and "Traceback" not in both.stderr
    missing = run("train", "-solver", solver, "-weights", str(tmp_path / "nope.caffemodel"), check=False)
    assert missing.returncode == 1 and "nope.caffemodel does not exist" in missing.stderr
    (tmp_path / "broken.prototxt").write_text("base_lr: 0.1\nmax_iter: ten\n")
    broken = run("train", "-solver", str(tmp_path / "broken.prototxt"), check=False)
    assert broken.returncode == 1 and "broken.prototxt:2:" in broken.stderr and "Traceback" not in broken.stderr
    nonet = write_solver(tmp_path, name="nonet.prototxt", net='"missing_net.prototxt"')
    gone = run("train", "-solver", nonet, check=False)
    assert gone.returncode == 1 and "missing_net.prototxt" in gone.stderr and "does not exist" in gone.stderr


def test_solverstate_of_another_net_is_refused(tmp_path):
    solver = write_solver(tmp_path, max_iter=5, snapshot=5)
    run("train", "-solver", solver)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = write_solver(other_dir, net_text=PLAIN.replace("num_output: 3 weight_filler { type: \"gaussian\" std: 0.1 }",
                                                      "num_output: 3 bias_term: false "
                                                      "weight_filler { type: \"gaussian\" std: 0.1 }"))
    proc = run("train", "-solver", other, "-snapshot", str(tmp_path / "snap_iter_5.solverstate"), check=False)
    assert proc.returncode == 1 and "different net" in proc.stderr and "Traceback" not in proc.stderr


def test_progress_bar_with_rate_and_eta(tmp_path):
    solver = write_solver(tmp_path, max_iter=300, display=100)
    out = run("train", "-solver", solver, "--progress").stderr
    # (text mode turns the bar's carriage returns into newlines)
    assert re.search(r"^\[#+\.*\] \d+/300 [\d.]+ it/s ETA \d+:\d\d", out, re.M)
    plain = run("train", "-solver", solver).stderr  # not a terminal: no bar
    assert "it/s ETA" not in plain

"""`caffeish parse-log`: Caffe's and our own training logs -> CSV tables (Caffe's tools/extra/parse_log.py)."""
import functools
import csv
import datetime
import math
import os

import pytest

from caffeish import CaffeishError
from caffeish.tools.log_parser import parse_log
from solvers.nets import solver_text
from helpers import caffeish_run

run = functools.partial(caffeish_run, check=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}

# A Caffe log across New Year: newer and older display lines, two test nets, a diverged value.
CAFFE_LOG = """\
Log file created at: 2015/12/31 23:58:01
Running on machine: host
I1231 23:58:01.000000 25210 caffe.cpp:185] Using GPUs 0
I1231 23:58:02.500000 25210 solver.cpp:280] Solving LeNet
I1231 23:58:02.500100 25210 solver.cpp:281] Learning Rate Policy: inv
I1231 23:58:02.600000 25210 solver.cpp:338] Iteration 0, Testing net (#0)
I1231 23:58:03.000000 25210 solver.cpp:406]     Test net output #0: accuracy = 0.0877
I1231 23:58:03.000000 25210 solver.cpp:406]     Test net output #1: loss = 2.3946 (* 1 = 2.3946 loss)
I1231 23:58:03.100000 25210 solver.cpp:229] Iteration 0, loss = 2.37781
I1231 23:58:03.100000 25210 solver.cpp:245]     Train net output #0: loss = 2.37781 (* 1 = 2.37781 loss)
I1231 23:58:03.100000 25210 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I1231 23:59:59.900000 25210 solver.cpp:218] Iteration 100 (1.2 iter/s, 83s/100 iters), loss = 0.21
I1231 23:59:59.900000 25210 solver.cpp:237]     Train net output #0: loss = 0.21 (* 1 = 0.21 loss)
I1231 23:59:59.900000 25210 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0101 00:00:10.000000 25210 solver.cpp:330] Iteration 200, Testing net (#0)
I0101 00:00:11.000000 25210 solver.cpp:397]     Test net output #0: accuracy = 0.97
I0101 00:00:11.000000 25210 solver.cpp:397]     Test net output #1: loss = 0.08 (* 1 = 0.08 loss)
I0101 00:00:11.200000 25210 solver.cpp:330] Iteration 200, Testing net (#1)
I0101 00:00:11.400000 25210 solver.cpp:397]     Test net output #0: accuracy = 0.95
I0101 00:00:11.500000 25210 solver.cpp:218] Iteration 200, loss = 0.1
I0101 00:00:11.500000 25210 solver.cpp:237]     Train net output #0: loss = -nan (* 1 = -nan loss)
I0101 00:00:11.500000 25210 sgd_solver.cpp:105] Iteration 200, lr = 0.00985258
I0101 00:00:12.000000 25210 solver.cpp:464] Snapshotting to binary proto file lenet_iter_200.caffemodel
"""



def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_caffe_log_to_csv(tmp_path):
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    out = run("parse-log", str(log), str(tmp_path / "out")).stdout
    assert "lenet.log.train: 3 rows" in out and "lenet.log.test: 2 rows" in out
    # Seconds since the "Solving" line (23:58:02.5), as Caffe's extract_seconds counts them
    assert read_csv(tmp_path / "out" / "lenet.log.train") == [
        ["NumIters", "Seconds", "LearningRate", "loss"],
        ["0", "0.6", "0.01", "2.37781"],
        ["100", "117.4", "0.00992565", "0.21"],
        ["200", "129.0", "0.00985258", "nan"],    # past midnight on New Year's Eve
    ]
    assert read_csv(tmp_path / "out" / "lenet.log.test") == [
        ["NumIters", "Seconds", "LearningRate", "accuracy", "loss", "accuracy#1"],
        ["0", "0.5", "0.01", "0.0877", "2.3946", ""],
        ["200", "128.5", "0.00985258", "0.97", "0.08", "0.95"],
    ]


def _stamp(line, year):
    """The datetime of a glog line, computed here independently of the parser."""
    month, day = int(line[1:3]), int(line[3:5])
    clock = datetime.datetime.strptime(line[6:21], "%H:%M:%S.%f")
    return clock.replace(year=year, month=month, day=day)


def test_seconds_are_the_timestamp_differences_since_solving(tmp_path):
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    lines = CAFFE_LOG.splitlines()
    year = lambda line: 2016 if line.startswith("I01") else 2015  # the log runs past New Year's Eve
    solving = next(_stamp(line, year(line)) for line in lines if "] Solving " in line)
    train, test = parse_log(log)
    # a row's time is that of its first output line (the second test net's output joins the row at 200)
    train_stamps = [(_stamp(line, year(line)) - solving).total_seconds()
                    for line in lines if "Train net output #0" in line]
    test_stamps = [(_stamp(line, year(line)) - solving).total_seconds()
                   for line in lines if "Test net output #0" in line][:2]
    assert train.column("Seconds") == pytest.approx(train_stamps, abs=1e-9)
    assert train_stamps == pytest.approx([0.6, 117.4, 129.0])
    assert test.column("Seconds") == pytest.approx(test_stamps, abs=1e-9)
    assert test_stamps == pytest.approx([0.5, 128.5])


def test_seconds_without_solving_line_count_from_the_first_timestamp(tmp_path):
    log = tmp_path / "nosolve.log"
    log.write_text("I0210 13:39:20.250000 1 caffe.cpp:185] Using GPUs 0\n"
                   "I0210 13:39:22.500000 1 solver.cpp:218] Iteration 0, loss = 1\n"
                   "I0210 13:39:22.500000 1 solver.cpp:237]     Train net output #0: loss = 1\n"
                   "I0210 14:00:00.000000 1 solver.cpp:218] Iteration 10, loss = 0.5\n"
                   "I0210 14:00:00.000000 1 solver.cpp:237]     Train net output #0: loss = 0.5\n")
    train, _ = parse_log(log)
    assert train.column("Seconds") == [2.25, (20 * 60 + 40) - 0.25]


@pytest.mark.parametrize("year, gap", [(2016, 86400 + 2.0), (2015, 2.0)])
def test_seconds_across_february_follow_the_logs_year(tmp_path, year, gap):
    log = tmp_path / "leap.log"
    log.write_text("I0228 23:59:59.000000 1 solver.cpp:280] Solving net\n"
                   "I0228 23:59:59.000000 1 solver.cpp:218] Iteration 0, loss = 1\n"
                   "I0228 23:59:59.000000 1 solver.cpp:237]     Train net output #0: loss = 1\n"
                   "I0301 00:00:01.000000 1 solver.cpp:218] Iteration 10, loss = 0.5\n"
                   "I0301 00:00:01.000000 1 solver.cpp:237]     Train net output #0: loss = 0.5\n")
    when = datetime.datetime(year, 3, 2).timestamp()
    os.utime(log, (when, when))  # the year of the last stamp comes from the file, as Caffe's script takes it
    train, _ = parse_log(log)
    assert train.column("Seconds") == [0.0, gap]


def test_caffeish_train_log(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver_text(max_iter=40, display=10, test_iter=2, test_interval=20, lr_policy='"step"',
                                  gamma=0.5, stepsize=10))
    proc = run("train", "-solver", str(solver))
    log = tmp_path / "train.log"
    log.write_text(proc.stderr)
    train, test = parse_log(log)
    assert train.column("NumIters") == [0, 10, 20, 30]
    assert train.column("LearningRate") == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    assert test.column("NumIters") == [0, 20, 40]
    assert test.column("LearningRate")[:2] == pytest.approx([0.05, 0.0125])
    assert train.columns == test.columns == ["NumIters", "Seconds", "LearningRate", "loss"]
    seconds = train.column("Seconds")
    assert seconds[0] >= 0 and seconds == sorted(seconds)
    # our own log's glog stamps: each row's time is its first output line's, counted from "Solving"
    lines = proc.stderr.splitlines()
    year = datetime.date.today().year
    solving = next(_stamp(line, year) for line in lines if "] Solving " in line)
    assert seconds == pytest.approx([(_stamp(line, year) - solving).total_seconds()
                                     for line in lines if "Train net output #0" in line], abs=1e-9)
    assert all(math.isfinite(v) for v in train.column("loss") + test.column("loss"))


def test_resumed_run_appends_rows_and_plain_lines_are_read(tmp_path):
    log = tmp_path / "resumed.log"
    log.write_text("Iteration 0, loss = 1\n    Train net output #0: loss = 1\nIteration 0, lr = 0.1\n"
                   "[####......] 5/10 3.0 it/s ETA 0:01\r\x1b[KIteration 10, loss = 0.5\n"
                   "    Train net output #0: loss = 0.5\n"
                   "Restoring previous solver status from x_iter_0.solverstate\n"
                   "Iteration 0, loss = 0.9\n    Train net output #0: loss = 0.9\n")
    train, test = parse_log(log)
    assert train.column("NumIters") == [0, 10, 0] and train.column("loss") == [1, 0.5, 0.9]
    assert all(math.isnan(s) for s in train.column("Seconds")) and len(test) == 0


def test_missing_file_and_no_iterations_are_clear(tmp_path):
    proc = run("parse-log", str(tmp_path / "nope.log"), str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"cannot read {tmp_path / 'nope.log'}" in proc.stderr
    empty = tmp_path / "empty.log"
    empty.write_text("I0210 13:39:22.381027 25210 caffe.cpp:185] Using GPUs 0\n")
    proc = run("parse-log", str(empty), str(tmp_path), check=False)
    assert proc.returncode == 1 and "no 'Iteration N' lines" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(CaffeishError, match="is a directory"):
        parse_log(tmp_path)

"""Training logs -> tables, as Caffe's ``tools/extra/parse_log.py`` makes them: ``parse_log`` reads the
glog-shaped log of ``caffeish train`` or of Caffe itself into a train and a test ``Table``, ``save_csv_files``
writes them as CSV.
"""
import csv
import datetime
import math
import os
import re

from ..errors import CaffeishError

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)(?:inity)?)"
_GLOG = re.compile(r"^[IWEFD](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\s+\S+\s+[^\]]*\] ?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ITERATION = re.compile(r"\bIteration (\d+)")
_SOLVING = re.compile(r"^Solving\b")
_TESTING = re.compile(r"\bIteration (\d+), Testing net \(#(\d+)\)")
_DISPLAY = re.compile(r"\bIteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_LEARNING_RATE = re.compile(r"\blr = " + _NUM, re.I)
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUM, re.I)
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUM, re.I)

FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")


class Table:
    """Rows (dicts) with ``columns``: the fixed three, then the outputs in order of first appearance."""

    def __init__(self):
        self.rows = []
        self.columns = list(FIXED_COLUMNS)

    def new_row(self, iteration, stamp, learning_rate):
        row = {"NumIters": iteration, "Seconds": stamp, "LearningRate": learning_rate}
        self.rows.append(row)
        return row

    def set(self, row, name, value):
        if name not in self.columns:
            self.columns.append(name)
        row[name] = value

    def column(self, name):
        """The values of one column (``nan`` where a row lacks it)."""
        return [row.get(name, math.nan) for row in self.rows]

    def __len__(self):
        return len(self.rows)


def _value(text):
    return float(text.lower().replace("infinity", "inf"))


class _Clock:
    """glog stamps (month, day, time; no year) -> seconds since the first, across day and year ends."""

    def __init__(self):
        self.stamps = []          # (rollovers, month, day, hour, minute, second, microsecond)
        self.rollovers = 0

    def stamp(self, groups):
        month, day, hour, minute, second = (int(g) for g in groups[:5])
        micro = int((groups[5] or "0").ljust(6, "0"))
        if self.stamps and month < self.stamps[-1][1]:
            self.rollovers += 1  # December -> January
        self.stamps.append((self.rollovers, month, day, hour, minute, second, micro))
        return len(self.stamps) - 1

    def seconds(self, last_year, origin=0):
        """Seconds since stamp ``origin``, for each stamp; the last stamp falls in ``last_year``."""
        if not self.stamps:
            return []
        for shift in range(8):  # a Feb 29 must land in a leap year
            first_year = last_year - self.rollovers - shift
            try:
                times = [datetime.datetime(first_year + r, mo, d, h, mi, s, us) for r, mo, d, h, mi, s, us in
                         self.stamps]
            except ValueError:
                continue
            return [(t - times[origin]).total_seconds() for t in times]
        raise CaffeishError("the log's timestamps are not valid dates")


def _lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f
    except IsADirectoryError:
        raise CaffeishError(f"{path} is a directory, not a training log") from None
    except OSError as e:
        raise CaffeishError(f"cannot read {path}: {e.strerror or e}") from None


def parse_log(path):
    """``(train, test)`` Tables from a training log; ``Seconds`` since its first "Solving" line (as Caffe's
    script), or since its first timestamped line when it has none.

    Reads the glog-shaped log of ``caffeish train`` or of Caffe itself::

        I0210 13:39:22.381027 25210 solver.cpp:218] Iteration 100 (1.2 iter/s, 83s/100 iters), loss = 0.21
        I0210 13:39:22.381070 25210 solver.cpp:237]     Train net output #0: loss = 0.21 (* 1 = 0.21 loss)
        I0210 13:39:22.381100 25210 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
        I0210 13:40:01.000000 25210 solver.cpp:330] Iteration 500, Testing net (#0)
        I0210 13:40:02.000000 25210 solver.cpp:397]     Test net output #0: accuracy = 0.97

    (older Caffe's ``Iteration 100, loss = 0.21`` as well) into two tables, train and test, one row per
    display or test pass, with the columns ``NumIters``, ``Seconds``, ``LearningRate`` and one per net output.

    ``Seconds`` comes from the glog timestamps, as Caffe's ``extract_seconds.py`` computes it: the seconds
    since the first ``Solving <net>`` line (since the log's first timestamp when there is none), across
    midnight and New Year (glog stamps carry no year: a month smaller than the previous one starts the next
    year; the last stamp is taken to fall in the year of the file's modification time, which matters only
    for February 29).

    Unlike Caffe's script, a row gets the learning rate logged for its own iteration (Caffe logs it after the
    outputs, so Caffe's script shows the previous one), outputs of test net ``#k`` for k > 0 get their own
    columns (``accuracy#1``), and a resumed run appends rows rather than merging them. Lines without a glog
    prefix are read too (taking the last timestamp seen).
    """
    path = os.fspath(path)
    train, test = Table(), Table()
    clock = _Clock()
    stamp = None                  # index of the latest timestamp
    start = None                  # index of the timestamp of the first "Solving <net>" line
    iteration = None              # the latest "Iteration N" seen
    learning_rate = math.nan      # the latest "lr = x" seen
    first_lr = None
    awaiting_lr = []              # rows opened since the last lr line; the next one, if for their iteration, is theirs
    train_row = test_row = None
    new_display = False
    testing = None                # (iteration, net id) of the latest "Testing net" line
    new_test = False
    for raw in _lines(path):
        line = _ANSI.sub("", raw.rstrip("\r\n").rsplit("\r", 1)[-1])  # a progress bar's \r, colours
        m = _GLOG.match(line)
        if m:
            stamp = clock.stamp(m.groups())
            message = m.group(7)
            if start is None and _SOLVING.search(message):
                start = stamp
        else:
            message = line
        found = _ITERATION.search(message)
        if found:
            iteration = int(found.group(1))
        if iteration is None:
            continue
        if _DISPLAY.search(message):
            new_display = True
        found = _TESTING.search(message)
        if found:
            testing, new_test = (int(found.group(1)), int(found.group(2))), True
        found = _LEARNING_RATE.search(message)
        if found:
            learning_rate = _value(found.group(1))
            first_lr = learning_rate if first_lr is None else first_lr
            for row in awaiting_lr:
                if row["NumIters"] == iteration:
                    row["LearningRate"] = learning_rate
            awaiting_lr = []
        found = _TRAIN_OUTPUT.search(message)
        if found:
            if new_display or train_row is None or train_row["NumIters"] != iteration:
                train_row = train.new_row(iteration, stamp, learning_rate)
                awaiting_lr.append(train_row)
                new_display = False
            train.set(train_row, found.group(2), _value(found.group(3)))
        found = _TEST_OUTPUT.search(message)
        if found:
            at, net_id = testing if testing is not None else (iteration, 0)
            joins = test_row is not None and test_row["NumIters"] == at and (net_id > 0 or not new_test)
            if not joins:
                test_row = test.new_row(at, stamp, learning_rate)
                awaiting_lr.append(test_row)
            new_test = False
            name = found.group(2) if net_id == 0 else f"{found.group(2)}#{net_id}"
            test.set(test_row, name, _value(found.group(3)))
    if iteration is None:
        raise CaffeishError(f"{path} has no 'Iteration N' lines: it is not a training log (the output of "
                            "`caffeish train` or `caffe train`, e.g. `caffeish train -solver s.prototxt 2> train.log`)")
    year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    seconds = clock.seconds(year, start or 0)
    for table in (train, test):
        for row in table.rows:
            row["Seconds"] = seconds[row["Seconds"]] if row["Seconds"] is not None else math.nan
            if math.isnan(row["LearningRate"]) and first_lr is not None:
                row["LearningRate"] = first_lr  # rows before the first lr line (Caffe's script does the same)
    return train, test


def _format(column, value):
    if isinstance(value, float) and math.isfinite(value):
        return repr(round(value, 6) if column == "Seconds" else value)  # microseconds; values as logged
    return str(value)


def write_csv(table, path, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_format(c, row[c]) if c in row else "" for c in table.columns])


def save_csv_files(log_path, out_dir, train, test, delimiter=","):
    """Write ``out_dir/<log name>.train`` and ``.test`` (as Caffe's script names them); return both paths."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise CaffeishError(f"cannot create the output directory {out_dir}: {e.strerror or e}") from None
    base = os.path.join(out_dir, os.path.basename(os.fspath(log_path)))
    paths = []
    for table, suffix in ((train, ".train"), (test, ".test")):
        try:
            write_csv(table, base + suffix, delimiter)
        except OSError as e:
            raise CaffeishError(f"cannot write {base + suffix}: {e.strerror or e}") from None
        paths.append(base + suffix)
    return paths

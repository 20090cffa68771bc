"""`caffeish plot`: a training log's losses and accuracy as an image (matplotlib, an optional extra), and
Caffe's plot_training_log.py chart types 0-7 over several logs."""
import os

import pytest

from test_parse_log import CAFFE_LOG
from helpers import caffeish_run as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def test_plot_writes_a_png_with_loss_and_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    out = tmp_path / "curves.png"
    proc = run("plot", str(log), str(out), "--title", "LeNet")
    assert proc.returncode == 0, proc.stderr
    assert "train loss, test loss, test accuracy, test accuracy#1" in proc.stdout
    from PIL import Image
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] >= 400 and img.size[1] > img.size[0] * 0.6  # two panels


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    log = tmp_path / "lenet.log"
    log.write_text(CAFFE_LOG)
    proc = run("plot", str(log), str(tmp_path / "x.png"), pythonpath=f"{fake}{os.pathsep}{ROOT}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pip install 'caffeish[plot]'" in proc.stderr
    assert not (tmp_path / "x.png").exists()


# A second, shorter run of the same net: its own timestamps, no second test net.
OTHER_LOG = """\
I0105 09:00:00.000000 31000 solver.cpp:280] Solving LeNet
I0105 09:00:00.100000 31000 solver.cpp:338] Iteration 0, Testing net (#0)
I0105 09:00:00.400000 31000 solver.cpp:406]     Test net output #0: accuracy = 0.1
I0105 09:00:00.400000 31000 solver.cpp:406]     Test net output #1: loss = 2.31 (* 1 = 2.31 loss)
I0105 09:00:00.500000 31000 solver.cpp:229] Iteration 0, loss = 2.3
I0105 09:00:00.500000 31000 solver.cpp:245]     Train net output #0: loss = 2.3 (* 1 = 2.3 loss)
I0105 09:00:00.500000 31000 sgd_solver.cpp:106] Iteration 0, lr = 0.02
I0105 09:00:30.000000 31000 solver.cpp:218] Iteration 100 (3.3 iter/s, 30s/100 iters), loss = 0.4
I0105 09:00:30.000000 31000 solver.cpp:237]     Train net output #0: loss = 0.4 (* 1 = 0.4 loss)
I0105 09:00:30.000000 31000 sgd_solver.cpp:105] Iteration 100, lr = 0.0198
I0105 09:00:31.000000 31000 solver.cpp:338] Iteration 200, Testing net (#0)
I0105 09:00:31.500000 31000 solver.cpp:406]     Test net output #0: accuracy = 0.9
I0105 09:00:31.500000 31000 solver.cpp:406]     Test net output #1: loss = 0.3 (* 1 = 0.3 loss)
"""

DESCRIPTIONS = ["Test accuracy vs. Iters", "Test accuracy vs. Seconds", "Test loss vs. Iters",
                "Test loss vs. Seconds", "Train learning rate vs. Iters", "Train learning rate vs. Seconds",
                "Train loss vs. Iters", "Train loss vs. Seconds"]


def _two_logs(tmp_path):
    (tmp_path / "lenet.log").write_text(CAFFE_LOG)
    (tmp_path / "rerun.log").write_text(OTHER_LOG)
    return str(tmp_path / "lenet.log"), str(tmp_path / "rerun.log")



def test_caffe_chart_types_with_two_logs(tmp_path, cli):
    pytest.importorskip("matplotlib")
    from PIL import Image
    logs = _two_logs(tmp_path)
    proc = run("plot", "0", str(tmp_path / "chart0.png"), *logs)  # as a user runs it
    assert proc.returncode == 0, proc.stderr
    for chart, description in enumerate(DESCRIPTIONS):
        out = tmp_path / f"chart{chart}.png"
        code, stdout, stderr = cli("plot", chart, out, *logs)
        assert code == 0, stderr
        # one line per log, labelled by the log's name (the first log has two accuracy outputs: two lines)
        labels = "lenet accuracy, lenet accuracy#1, rerun" if chart < 2 else "lenet, rerun"
        assert stdout.strip() == f"{out}: {description}: {labels}"
        with Image.open(out) as img:
            assert img.format == "PNG" and img.size == (800, 500)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == [f"chart{c}.png" for c in range(8)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_caffe_charts_draw_the_logs_numbers(tmp_path):
    """The lines drawn hold the logs' values; Seconds counted by hand from the "Solving" lines."""
    pytest.importorskip("matplotlib")
    from caffeish.cli.plot import chart_figure
    logs = _two_logs(tmp_path)

    def drawn(chart):
        fig, labels = chart_figure(chart, logs)
        ax = fig.axes[0]
        assert ax.get_title() == DESCRIPTIONS[chart]
        assert ax.get_xlabel() == DESCRIPTIONS[chart].split(" vs. ")[1]
        assert ax.get_ylabel() == DESCRIPTIONS[chart].split(" vs. ")[0]
        return {label: (list(line.get_xdata()), list(line.get_ydata())) for label, line in zip(labels, ax.lines)}

    # lenet.log: "Solving" at 23:58:02.5 on Dec 31; rerun.log: at 09:00:00.0
    assert drawn(0) == {"lenet accuracy": ([0, 200], [0.0877, 0.97]), "lenet accuracy#1": ([200], [0.95]),
                        "rerun": ([0, 200], [0.1, 0.9])}
    assert drawn(1)["rerun"] == ([0.4, 31.5], [0.1, 0.9])
    lenet_loss = drawn(3)["lenet"]
    assert lenet_loss[0] == pytest.approx([0.5, 117.5 + 11.0])  # 23:58:02.5 -> 00:00:11.0 and lenet_loss[1] == [2.3946, 0.08]
    assert drawn(4) == {"lenet": ([0, 100, 200], [0.01, 0.00992565, 0.00985258]), "rerun": ([0, 100], [0.02, 0.0198])}
    assert drawn(5)["rerun"] == ([0.5, 30.0], [0.02, 0.0198])
    # the diverged (nan) loss at iteration 200 is left out
    assert drawn(6) == {"lenet": ([0, 100], [2.37781, 0.21]), "rerun": ([0, 100], [2.3, 0.4])}
    seconds, loss = drawn(7)["lenet"]
    assert seconds == pytest.approx([0.6, 117.4]) and loss == [2.37781, 0.21]


def test_unknown_chart_type_lists_the_eight(tmp_path, cli):
    logs = _two_logs(tmp_path)
    proc = run("plot", "8", str(tmp_path / "x.png"), *logs)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "unknown chart type '8'" in proc.stderr
    for k, description in enumerate(DESCRIPTIONS):
        assert f"{k}: {description}" in proc.stderr
    code, _, err = cli("plot", "-1", tmp_path / "x.png", *logs)
    assert code == 1 and "unknown chart type '-1'" in err and "7: Train loss vs. Seconds" in err
    code, _, err = cli("plot", "2", tmp_path / "x.png")
    assert code == 1 and "give the training log(s)" in err
    code, _, err = cli("plot", "a", "b", "c")
    assert code == 1 and "plot takes LOG OUT, or CHART_TYPE OUT LOG" in err
    assert not (tmp_path / "x.png").exists()


def test_caffe_chart_without_its_values_names_the_log(tmp_path, cli):
    pytest.importorskip("matplotlib")
    lenet, _ = _two_logs(tmp_path)
    plain = tmp_path / "plain.log"  # no timestamps, no test pass
    plain.write_text("Iteration 0, loss = 1\n    Train net output #0: loss = 1\nIteration 0, lr = 0.1\n")
    proc = run("plot", "7", str(tmp_path / "x.png"), lenet, str(plain))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "chart 7 (Train loss vs. Seconds)" in proc.stderr and f"{plain} has none" in proc.stderr
    assert "glog timestamps" in proc.stderr
    code, _, err = cli("plot", "0", tmp_path / "x.png", plain)
    assert code == 1 and "accuracy values ('Test net output' lines" in err
    code, _, err = cli("plot", "6", tmp_path / "x.png", tmp_path / "missing.log")
    assert code == 1 and f"cannot read {tmp_path / 'missing.log'}" in err
    code, _, err = cli("plot", "6", tmp_path / "no_dir" / "x.png", plain)
    assert code == 1 and f"cannot write the plot {tmp_path / 'no_dir' / 'x.png'}" in err
    assert not (tmp_path / "x.png").exists()
    assert cli("plot", "6", tmp_path / "x.png", plain)[0] == 0  # Iters charts need no timestamps

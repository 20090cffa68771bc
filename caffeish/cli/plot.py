"""``caffeish plot``: training curves from training logs, as an image.

Two forms:

* ``caffeish plot LOG OUT`` -- one log's train and test losses and its other test outputs (accuracy)
  against iterations, in one or two panels;
* ``caffeish plot CHART_TYPE OUT LOG [LOG ...]`` -- Caffe's ``tools/extra/plot_training_log.py``: one of
  its eight charts (below), one line per log, labelled by the log's file name (less ``.log``).

The image is written atomically (its extension picks the format: .png, .pdf, .svg).
"""
import math
import os

import click

from ..atomic import atomic_path
from ..errors import CaffeishError
from ..tools.log_parser import FIXED_COLUMNS, parse_log
from . import register_command

#: Caffe's chart types: (description, table, what is plotted, x column).
CHART_TYPES = {
    0: ("Test accuracy vs. Iters", "test", "accuracy", "NumIters"),
    1: ("Test accuracy vs. Seconds", "test", "accuracy", "Seconds"),
    2: ("Test loss vs. Iters", "test", "loss", "NumIters"),
    3: ("Test loss vs. Seconds", "test", "loss", "Seconds"),
    4: ("Train learning rate vs. Iters", "train", "learning rate", "NumIters"),
    5: ("Train learning rate vs. Seconds", "train", "learning rate", "Seconds"),
    6: ("Train loss vs. Iters", "train", "loss", "NumIters"),
    7: ("Train loss vs. Seconds", "train", "loss", "Seconds"),
}


def chart_types_text():
    return "; ".join(f"{k}: {v[0]}" for k, v in CHART_TYPES.items())


def _matplotlib():
    """matplotlib's Figure and its Agg canvas (no pyplot, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CaffeishError("plotting needs matplotlib, an optional extra: pip install 'caffeish[plot]'") from None
    return Figure, FigureCanvasAgg


def _points(table, x_name, y_name):
    """(xs, ys) of the rows where both columns have a value."""
    points = [(x, y) for x, y in zip(table.column(x_name), table.column(y_name))
              if not (math.isnan(x) or math.isnan(y))]
    return [p[0] for p in points], [p[1] for p in points]


def _series(table, kind, is_loss):
    """(label, iterations, values) for each output column of ``table`` that is (or is not) a loss."""
    out = []
    for name in table.columns:
        if name in FIXED_COLUMNS or ("loss" in name.lower()) != is_loss:
            continue
        x, y = _points(table, "NumIters", name)
        if x:
            out.append((f"{kind} {name}", x, y))
    return out


def _save(fig, out):
    """Write the figure atomically: ``out`` is the old file or the complete new one."""
    ext = os.path.splitext(out)[1]
    try:
        with atomic_path(out, suffix=ext) as tmp:
            fig.savefig(tmp, dpi=100)
    except (OSError, ValueError) as e:
        raise CaffeishError(f"cannot write the plot {out}: {e}") from None


def plot_log(log, out, title=None, log_scale=False):
    """The default chart: LOG's losses and its other outputs against iterations; returns the series labels."""
    Figure, FigureCanvasAgg = _matplotlib()
    train, test = parse_log(log)
    losses = _series(train, "train", True) + _series(test, "test", True)
    scores = _series(train, "train", False) + _series(test, "test", False)
    if not losses and not scores:
        raise CaffeishError(f"{log} has iterations but no 'Train net output' or 'Test net output' values to plot")
    panels = [(series, ylabel) for series, ylabel in ((losses, "loss"), (scores, "accuracy")) if series]
    fig = Figure(figsize=(8, 3.2 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (series, ylabel) in zip(axes, panels):
        for label, x, y in series:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
        ax.set_ylabel(ylabel)
        if ylabel == "loss" and log_scale:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("iterations")
    fig.suptitle(title or os.path.basename(log))
    _save(fig, out)
    return [label for s, _ in panels for label, _, _ in s]


def parse_chart_type(text):
    try:
        chart = int(text)
    except ValueError:
        chart = None
    if chart not in CHART_TYPES:
        raise CaffeishError(f"unknown chart type '{text}'; the chart types are {chart_types_text()}")
    return chart


def _label(log):
    """Caffe's label for a log: its file name without ``.log``."""
    name = os.path.basename(os.fspath(log))
    return name[:-len(".log")] if name.endswith(".log") and len(name) > len(".log") else name


#: The net outputs a chart plots: those whose names hold this (any case).
OUTPUT_NAMES = {"accuracy": "acc", "loss": "loss"}


def _chart_columns(table, what):
    if what == "learning rate":
        return ["LearningRate"]
    return [c for c in table.columns if c not in FIXED_COLUMNS and OUTPUT_NAMES[what] in c.lower()]


def chart_figure(chart, logs, title=None, log_scale=False):
    """(matplotlib Figure, line labels) of Caffe's chart ``chart`` (0-7): one line per log (per output)."""
    description, which, what, x_name = CHART_TYPES[chart]
    Figure, FigureCanvasAgg = _matplotlib()
    lines, missing = [], []
    for log in logs:
        train, test = parse_log(log)
        table = train if which == "train" else test
        columns = _chart_columns(table, what)
        found = False
        for column in columns:
            x, y = _points(table, x_name, column)
            if x:
                label = _label(log) if len(columns) == 1 else f"{_label(log)} {column}"
                lines.append((label, x, y))
                found = True
        if not found:
            missing.append(log)
    if missing:
        if what == "learning rate":
            need = "learning rates ('lr = ' lines)"
        else:
            need = f"{what} values ('{which.capitalize()} net output' lines of an output named *{OUTPUT_NAMES[what]}*)"
        if x_name == "Seconds":
            need += " and glog timestamps"
        raise CaffeishError(f"chart {chart} ({description}) needs {need}; {', '.join(map(str, missing))} "
                            f"{'has' if len(missing) == 1 else 'have'} none")
    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, x, y in lines:
        ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("Iters" if x_name == "NumIters" else "Seconds")
    ax.set_ylabel(f"{which.capitalize()} {what}")
    if log_scale and what != "accuracy":
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or description)
    return fig, [label for label, _, _ in lines]


def plot_chart(chart, out, logs, title=None, log_scale=False):
    """Caffe's chart ``chart`` (0-7) of each of ``logs`` into ``out``; returns the line labels."""
    fig, labels = chart_figure(chart, logs, title, log_scale)
    _save(fig, out)
    return labels


def _is_chart_type(text):
    return text.lstrip("+-").isdigit() and not os.path.exists(text)


@register_command("plot")
@click.command(context_settings={"ignore_unknown_options": True})  # a chart type "-1" gets its own message
@click.argument("args", nargs=-1, required=True, metavar="LOG OUT | CHART_TYPE OUT LOG [LOG]...")
@click.option("--title", default=None, help="The figure title (default: the log's file name, or the chart's name).")
@click.option("--log-scale/--linear", default=False, help="A logarithmic loss (or learning rate) axis.")
def plot(args, title, log_scale):
    """Plot training curves from logs of `caffeish train` or `caffe train`.

    \b
    caffeish plot LOG OUT
        LOG's train and test losses and its other test outputs (accuracy) against iterations.
    caffeish plot CHART_TYPE OUT LOG [LOG]...
        Caffe's plot_training_log.py: one line per LOG, labelled by its file name. CHART_TYPE:
        0: Test accuracy vs. Iters         1: Test accuracy vs. Seconds
        2: Test loss vs. Iters             3: Test loss vs. Seconds
        4: Train learning rate vs. Iters   5: Train learning rate vs. Seconds
        6: Train loss vs. Iters            7: Train loss vs. Seconds

    OUT's extension picks the format (.png, .pdf, .svg). Needs matplotlib: pip install 'caffeish[plot]'.
    """
    if len(args) >= 2 and _is_chart_type(args[0]):
        chart = parse_chart_type(args[0])
        if len(args) < 3:
            raise CaffeishError(f"plot {args[0]} {args[1]}: give the training log(s) to plot after the output "
                                "file (plot CHART_TYPE OUT LOG [LOG ...])")
        out, logs = args[1], args[2:]
        labels = plot_chart(chart, out, logs, title, log_scale)
        click.echo(f"{out}: {CHART_TYPES[chart][0]}: {', '.join(labels)}")
        return
    if len(args) != 2:
        raise CaffeishError(f"plot takes LOG OUT, or CHART_TYPE OUT LOG [LOG ...] (CHART_TYPE one of "
                            f"{chart_types_text()}), not {len(args)} argument(s): {' '.join(args)}")
    log, out = args
    labels = plot_log(log, out, title, log_scale)
    click.echo(f"{out}: {', '.join(labels)}")

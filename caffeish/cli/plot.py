"""``caffeish plot``: train and test loss, and test accuracy, against iterations, from a training log."""
import math
import os

import click

from ..errors import CaffeishError
from ..tools.log_parser import FIXED_COLUMNS, parse_log
from . import register_command


def _matplotlib():
    """matplotlib's Figure and its Agg canvas (no pyplot, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CaffeishError("plotting needs matplotlib, an optional extra: pip install 'caffeish[plot]'") from None
    return Figure, FigureCanvasAgg


def _series(table, kind, is_loss):
    """(label, iterations, values) for each output column of ``table`` that is (or is not) a loss."""
    out = []
    for name in table.columns:
        if name in FIXED_COLUMNS or ("loss" in name.lower()) != is_loss:
            continue
        points = [(it, v) for it, v in zip(table.column("NumIters"), table.column(name)) if not math.isnan(v)]
        if points:
            out.append((f"{kind} {name}", [p[0] for p in points], [p[1] for p in points]))
    return out


@register_command("plot")
@click.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--title", default=None, help="The figure title (default: the log's file name).")
@click.option("--log-scale/--linear", default=False, help="A logarithmic loss axis.")
def plot(log, out, title, log_scale):
    """Plot LOG's train and test losses and its other test outputs (accuracy) against iterations into OUT.

    OUT's extension picks the format (.png, .pdf, .svg). Needs matplotlib: pip install 'caffeish[plot]'.
    """
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
    try:
        fig.savefig(out, dpi=100)
    except (OSError, ValueError) as e:
        raise CaffeishError(f"cannot write the plot {out}: {e}") from None
    click.echo(f"{out}: {', '.join(label for s, _ in panels for label, _, _ in s)}")

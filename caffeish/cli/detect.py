"""``caffeish detect``: score windows of images with a deploy net (pycaffe's detect.py, list mode): the windows
listed in INPUT (``read_windows``), each warped and preprocessed as pycaffe's Detector does, one row of scores
per window written to OUTPUT (``_write``).
"""
import csv
import logging
import os
import time

import click
import numpy

from ..atomic import atomic_path
from ..detector import Detector
from ..errors import CaffeishError
from . import register_command
from .classify import _ints, read_mean_array
from .common import gpu_option, select_device

log = logging.getLogger("caffeish")
COORD_COLS = ("ymin", "xmin", "ymax", "xmax")


def _coords(values, where):
    try:
        return numpy.array([int(v) for v in values], dtype=numpy.int64)
    except ValueError:
        raise CaffeishError(f"{where}: window coordinates are integers (ymin xmin ymax xmax), not "
                            f"{' '.join(values)}") from None


def read_windows(path):
    """[(filename, window)] from a pycaffe CSV (with header) or ``filename ymin xmin ymax xmax`` lines.

    INPUT lists the windows: a ``.csv`` with a header naming ``filename,ymin,xmin,ymax,xmax`` (pycaffe's
    format; other columns are ignored), or text lines ``filename ymin xmin ymax xmax`` (blank lines and
    ``#`` comments skipped).  Each window (rows ``ymin..ymax-1``, columns ``xmin..xmax-1``, as pycaffe
    slices it), grown by ``--context-pad`` pixels of context as R-CNN does, is warped to the net's input
    and preprocessed as pycaffe's Detector does.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise CaffeishError("the list of windows does not exist", path=path) from None
    except OSError as e:
        raise CaffeishError(f"cannot read the list of windows: {e.strerror or e}", path=path) from None
    except UnicodeDecodeError:
        raise CaffeishError("the list of windows is not UTF-8 text", path=path) from None
    windows = []
    if path.lower().endswith(".csv"):
        rows = csv.reader(text.splitlines())
        header = [h.strip() for h in next(rows, [])]
        missing = [c for c in ("filename",) + COORD_COLS if c not in header]
        if missing:
            raise CaffeishError(f"the CSV header must name filename,ymin,xmin,ymax,xmax; it lacks {', '.join(missing)}",
                                path=path)
        cols = [header.index(c) for c in ("filename",) + COORD_COLS]
        for number, row in enumerate(rows, 2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise CaffeishError(f"{path}:{number}: {len(row)} fields, the header has {len(header)}")
            cells = [row[c].strip() for c in cols]
            windows.append((cells[0], _coords(cells[1:], f"{path}:{number}")))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rstrip().rsplit(None, 4)
            if len(parts) != 5:
                raise CaffeishError(f"{path}:{number}: expected 'filename ymin xmin ymax xmax', got {line!r}")
            windows.append((parts[0].strip(), _coords(parts[1:], f"{path}:{number}")))
    if not windows:
        raise CaffeishError("the list of windows holds no windows", path=path)
    return windows


def _write(path, windows, predictions):
    """OUTPUT gets one row per window, in INPUT's order: a ``.csv`` of
    ``filename,ymin,xmin,ymax,xmax,class0,...`` or a ``.npy`` of the scores (windows x classes), written
    atomically once every window has been scored.
    """
    try:
        if path.lower().endswith(".npy"):
            with atomic_path(path, suffix=".npy") as tmp:
                with open(tmp, "wb") as f:
                    numpy.save(f, predictions)
        else:
            with atomic_path(path, suffix=".csv") as tmp:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    out = csv.writer(f, lineterminator="\n")
                    out.writerow(("filename",) + COORD_COLS + tuple(f"class{k}" for k in range(predictions.shape[1])))
                    for (name, window), row in zip(windows, predictions):
                        out.writerow([name] + [int(v) for v in window] + [f"{float(v):.9g}" for v in row])
    except OSError as e:
        raise CaffeishError(f"cannot write {path}: {e.strerror or e}") from None


@register_command("detect")
@click.command()
@click.argument("input_file", metavar="INPUT", type=click.Path())
@click.argument("output_file", metavar="OUTPUT", type=click.Path())
@click.option("--model", "--model-def", "model", required=True, type=click.Path(),
              help="The deploy net (an Input layer giving the window size).")
@click.option("--weights", "--pretrained-model", "weights", required=True,
              help="The trained weights (.caffemodel or .caffemodel.h5).")
@click.option("--crop-mode", type=click.Choice(["list", "selective_search"]), default="list", show_default=True,
              help="Windows from INPUT (list), or Selective Search proposals for INPUT's images.")
@click.option("--root", default="", help="The folder INPUT's filenames start from (default: as written).")
@click.option("--mean-file", default=None,
              help="A mean (.npy or .binaryproto); its per-channel average is subtracted, as pycaffe's detect.py does.")
@click.option("--mean-value", default=None, help="Per-channel mean(s) to subtract, BGR: 104,117,123.")
@click.option("--input-scale", default=None, type=float, help="Multiplies the input after the mean.")
@click.option("--raw-scale", default=255.0, type=float, show_default=True,
              help="Images load in [0, 1] and are multiplied by this first.")
@click.option("--channel-swap", default="2,1,0", show_default=True,
              help="The channel order after loading (RGB -> BGR); empty for none.")
@click.option("--context-pad", default=16, type=click.IntRange(min=0), show_default=True,
              help="Pixels of the warped input that are context around the window.")
@gpu_option
def detect(input_file, output_file, model, weights, crop_mode, root, mean_file, mean_value, input_scale, raw_scale,
           channel_swap, context_pad, gpu):
    """Score the windows listed in INPUT with a deploy net; write the scores to OUTPUT (.csv or .npy)."""
    if not output_file.lower().endswith((".csv", ".npy")):
        raise CaffeishError(f"OUTPUT must be a .csv or .npy file, not '{output_file}'")
    if mean_file and mean_value:
        raise CaffeishError("give --mean-file or --mean-value, not both")
    mean = None
    if mean_file:
        mean = read_mean_array(mean_file)
        if mean.ndim == 4 and mean.shape[0] == 1:
            mean = mean[0]
        if mean.ndim == 3:
            mean = mean.mean(axis=(1, 2))
        if mean.ndim != 1:
            raise CaffeishError(f"the mean in {mean_file} has shape {mean.shape}: give C x H x W, or C values")
    elif mean_value:
        try:
            mean = numpy.array([float(v) for v in mean_value.split(",") if v.strip()])
        except ValueError:
            raise CaffeishError(f"--mean-value takes numbers separated by commas, not '{mean_value}'") from None
    swap = _ints(channel_swap, "--channel-swap") or None
    if crop_mode == "list":
        windows = read_windows(input_file)
    else:  # one image filename a line
        try:
            with open(input_file, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CaffeishError(f"cannot read the list of images: {getattr(e, 'strerror', None) or e}",
                                path=input_file) from None
    if not os.path.exists(weights):
        raise CaffeishError(f"the weights file {weights} does not exist")
    select_device(gpu)
    started = time.time()
    detector = Detector(model, weights, mean=None, input_scale=input_scale, raw_scale=raw_scale, channel_swap=swap,
                        context_pad=context_pad or None)
    try:
        if mean is not None:
            in_ = detector.inputs[0]
            if mean.size == 1:
                mean = numpy.repeat(mean, detector.blobs[in_].shape[1])
            detector.transformer.set_mean(in_, mean)
            detector.configure_crop(context_pad or None)  # the context is padded with the mean
        if crop_mode == "selective_search":
            detections = detector.detect_selective_search([os.path.join(root, n) if root else n for n in names])
            windows = [(d["filename"], numpy.asarray(d["window"])) for d in detections]
            rows = [d["prediction"] for d in detections]
        else:
            groups = {}
            for index, (name, window) in enumerate(windows):  # each image is loaded once, as pycaffe groups them
                groups.setdefault(name, []).append((index, window))
            images_windows = [(os.path.join(root, name) if root else name, [w for _, w in items])
                              for name, items in groups.items()]
            detections = detector.detect_windows(images_windows)
            order = [index for items in groups.values() for index, _ in items]
            rows = [None] * len(windows)
            for index, d in zip(order, detections):
                rows[index] = d["prediction"]
        predictions = numpy.array([numpy.asarray(r, dtype=numpy.float32).ravel() for r in rows])
    finally:
        detector.close()
    log.info("Processed %d windows in %.3f s.", len(predictions), time.time() - started)
    _write(output_file, windows, predictions)
    log.info("Saved to %s.", output_file)

"""``caffeish classify``: the top classes of images under a deploy net (pycaffe's classify.py).

Each image goes through pycaffe's Transformer order: load as floats in [0, 1] (grey for a
1-channel net, colour for 3), resize to the Input blob's H x W, channels first (BGR, as Caffe
nets expect), times ``--raw-scale``, minus the mean, times ``--scale``.
"""
import logging
import os

import click
import numpy

from .. import backend
from ..errors import CaffeishError
from ..net import TEST, Net
from . import register_command
from .common import gpu_option, select_device

log = logging.getLogger("caffeish")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".webp")


def _image_paths(items):
    """The images: files as given, directories as their image files (sorted)."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise CaffeishError(f"the directory {item} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        else:
            paths.append(item)
    return paths


def _input_blob(net):
    if not net.inputs:
        raise CaffeishError(f"net '{net.name}' has no Input layer: classify needs a deploy net "
                            "(an Input layer giving the image shape, e.g. models/lenet/lenet_deploy.prototxt)")
    name = net.inputs[0]
    shape = net.blobs[name].shape
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise CaffeishError(f"the net's input '{name}' has shape {shape}; classify needs images, N x C x H x W "
                            "with C = 1 (grey) or 3 (colour)")
    return name, shape


def _output_blob(net, wanted):
    if wanted:
        if wanted not in net.blobs:
            raise CaffeishError(f"--output '{wanted}' is not a blob of net '{net.name}' "
                                f"(its outputs: {', '.join(net.outputs)})")
        return wanted
    if not net.outputs:
        raise CaffeishError(f"net '{net.name}' has no output blob")
    return "prob" if "prob" in net.outputs else net.outputs[-1]


def _mean(mean_file, mean_value, channels, height, width):
    """The mean to subtract: C x H x W, or C x 1 x 1 for per-channel values (BGR order)."""
    if mean_file and mean_value:
        raise CaffeishError("give --mean-file or --mean-value, not both")
    if mean_value:
        try:
            values = [float(v) for v in mean_value.split(",") if v.strip()]
        except ValueError:
            raise CaffeishError(f"--mean-value takes numbers separated by commas, not '{mean_value}'") from None
        if len(values) == 1:
            values *= channels
        if len(values) != channels:
            raise CaffeishError(f"--mean-value gives {len(values)} values; the net's input has {channels} channels "
                                "(give one value, or one per channel in BGR order)")
        return numpy.asarray(values, dtype=numpy.float32).reshape(channels, 1, 1)
    if not mean_file:
        return None
    if mean_file.endswith(".npy"):
        try:
            mean = numpy.load(mean_file)
        except (OSError, ValueError) as e:
            raise CaffeishError(f"cannot read the mean file {mean_file}: {e}") from None
    else:
        from ..io import read_mean_binaryproto
        mean = read_mean_binaryproto(mean_file)
    try:
        mean = numpy.asarray(mean, dtype=numpy.float32)
    except (TypeError, ValueError):
        raise CaffeishError(f"the mean file {mean_file} holds {getattr(mean, 'dtype', type(mean))} values, not "
                            "numbers") from None
    if mean.ndim == 1:
        mean = mean.reshape(-1, 1, 1)
    if mean.ndim != 3 or mean.shape[0] != channels:
        raise CaffeishError(f"the mean in {mean_file} has shape {mean.shape}; the net's input needs {channels} "
                            f"channels (C x H x W, or C values)")
    if mean.shape[1:] not in ((height, width), (1, 1)):
        log.info("The mean in %s is %dx%d, the input %dx%d: subtracting its per-channel average",
                 mean_file, mean.shape[1], mean.shape[2], height, width)
        mean = mean.mean(axis=(1, 2), keepdims=True)
    return mean


def _labels(path, classes):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\n").strip() for line in f]
    except OSError as e:
        raise CaffeishError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CaffeishError(f"{path} is not a text file of class names (UTF-8, one a line)") from None
    while names and not names[-1]:
        names.pop()
    if len(names) != classes:
        raise CaffeishError(f"{path} has {len(names)} labels but the net gives {classes} classes (one label a line)")
    return names


def preprocess(path, shape, raw_scale, mean, scale):
    """One image as the net's C x H x W input (pycaffe's Transformer.preprocess)."""
    from ..io import load_image, resize_image
    channels, height, width = shape
    image = load_image(path, color=channels == 3)                  # H x W x C, RGB, [0, 1]
    if image.shape[:2] != (height, width):
        image = resize_image(image, (height, width))
    chw = image.transpose(2, 0, 1)
    if channels == 3:
        chw = chw[::-1]                                             # RGB -> BGR
    chw = chw * raw_scale
    if mean is not None:
        chw = chw - mean
    return (chw * scale).astype(numpy.float32)


@register_command("classify")
@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", required=True, type=click.Path(), help="The deploy net (prototxt with an Input layer).")
@click.option("--weights", required=True, help="The trained weights (.caffemodel or .caffemodel.h5).")
@click.option("--mean-file", default=None, help="A mean to subtract: .binaryproto (Caffe's) or .npy, C x H x W.")
@click.option("--mean-value", default=None, help="Per-channel mean(s) to subtract, BGR order: 104,117,123.")
@click.option("--raw-scale", default=255.0, type=float, show_default=True,
              help="Images load in [0, 1] and are multiplied by this before the mean is subtracted.")
@click.option("--scale", default=1.0, type=float, show_default=True, help="Multiplies the input after the mean.")
@click.option("--labels", default=None, type=click.Path(), help="Class names, one a line, in class order.")
@click.option("--top-k", default=5, type=click.IntRange(min=1), show_default=True, help="Classes shown per image.")
@click.option("--output", default=None, help="The blob holding class scores (default: prob, else the last output).")
@gpu_option
def classify(images, model, weights, mean_file, mean_value, raw_scale, scale, labels, top_k, output, gpu):
    """Print the top classes, with their probabilities, of each IMAGE (files or directories)."""
    paths = _image_paths(images)
    select_device(gpu)
    net = Net(model, TEST)
    try:
        from ..weights import load_weights
        name, (batch, channels, height, width) = _input_blob(net)
        out_name = _output_blob(net, output)
        mean = _mean(mean_file, mean_value, channels, height, width)
        load_weights(net, weights)
        names = _labels(labels, int(numpy.prod(net.blobs[out_name].shape[1:])))
        checked = False
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            data = numpy.stack([preprocess(p, (channels, height, width), raw_scale, mean, scale) for p in chunk])
            net.forward(**{name: data})
            scores = backend.to_cpu(net.blobs[out_name].data).reshape(len(chunk), -1).astype(numpy.float64)
            if not checked:
                checked = True
                if (scores < -1e-6).any() or (abs(scores.sum(axis=1) - 1) > 1e-3).any():
                    log.warning("Output '%s' does not look like probabilities (does the net end in Softmax?); "
                                "showing its values as they are", out_name)
            for path, row in zip(chunk, scores):
                order = numpy.argsort(-row, kind="stable")[:top_k]
                click.echo(path)
                for k in order:
                    label = f"  {names[k]}" if names else ""
                    click.echo(f"  {row[k]:.6f}  {k}{label}")
    finally:
        net.close()

"""``caffeish classify``: the top classes of images under a trained net (pycaffe's classify.py), the images
preprocessed as pycaffe's Classifier does for a deploy net (``_run_pycaffe``), or as its TEST-phase data layer
does for a train/test net (``_run_caffe_transform``).

``--output FILE.npy`` writes the scores (N images x classes) atomically once every image has been
classified; with ``--list`` (``path label`` lines, as convert imageset reads) the accuracy is logged.
"""
import logging
import os

import click
import numpy

from .. import io as cio
from ..atomic import atomic_path
from ..classifier import Classifier
from ..data.converters import read_image_list
from ..data.transform import DataTransformer, effective_transform_param
from ..errors import CaffeishError
from ..io import IMAGE_EXTENSIONS
from ..net import TEST, Net
from ..net_graph import filter_net
from ..proto import caffe_pb2
from ..prototxt import read_net_param
from ..weights import load_weights
from . import register_command
from .common import gpu_option, select_device

log = logging.getLogger("caffeish")
#: Data layers whose images classify can reproduce, with the field holding their deprecated transform fields.
IMAGE_DATA_LAYERS = {"Data": "data_param", "ImageData": "image_data_param"}
#: Layers that make blobs from outside the net (left out of the deploy version of a train/test net).
SOURCE_LAYERS = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input", "Python")


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
            raise CaffeishError(f"--blob '{wanted}' is not a blob of net '{net.name}' "
                                f"(its outputs: {', '.join(net.outputs)})")
        return wanted
    if not net.outputs:
        raise CaffeishError(f"net '{net.name}' has no output blob")
    return "prob" if "prob" in net.outputs else net.outputs[-1]


def read_mean_array(mean_file):
    """A mean from a .npy file or a Caffe .binaryproto, as a float32 array (C x H x W, or C values)."""
    if str(mean_file).endswith(".npy"):
        try:
            mean = numpy.load(mean_file)
        except FileNotFoundError:
            raise CaffeishError("the mean file does not exist", path=mean_file) from None
        except (OSError, ValueError) as e:
            raise CaffeishError(f"cannot read the mean file {mean_file}: {e}") from None
    else:
        mean = cio.read_mean_binaryproto(mean_file)
    try:
        return numpy.asarray(mean, dtype=numpy.float32)
    except (TypeError, ValueError):
        raise CaffeishError(f"the mean file {mean_file} holds {getattr(mean, 'dtype', type(mean))} values, not "
                            "numbers") from None


def _mean(mean_file, mean_value, channels, height, width):
    """The mean to subtract: C x H x W, or C values (BGR order)."""
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
        return numpy.asarray(values, dtype=numpy.float32)
    if not mean_file:
        return None
    mean = read_mean_array(mean_file)
    if mean.ndim == 1:
        mean = mean.reshape(-1, 1, 1)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.shape[0] != channels:
        raise CaffeishError(f"the mean in {mean_file} has shape {mean.shape}; the net's input needs {channels} "
                            f"channels (C x H x W, or C values)")
    if mean.shape[1:] != (height, width):
        if mean.shape[1:] != (1, 1):
            log.info("The mean in %s is %dx%d, the input %dx%d: subtracting its per-channel average",
                     mean_file, mean.shape[1], mean.shape[2], height, width)
        mean = mean.mean(axis=(1, 2))
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


def _ints(text, option):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CaffeishError(f"{option} takes integers separated by commas, not '{text}'") from None


# -- a train/test net's TEST-phase data layer ------------------------------------------------------------------
def _test_phase(param):
    return filter_net(param, caffe_pb2.NetState(phase=TEST))


def _is_deploy(param):
    return bool(len(param.input)) or any(lp.type == "Input" for lp in param.layer)


def find_image_data_layer(param, path, for_transform=False):
    """The TEST-phase Data or ImageData layer of a NetParameter; a clear error when there is none."""
    test = _test_phase(param)
    for lp in test.layer:
        if lp.type in IMAGE_DATA_LAYERS:
            return lp
    kinds = sorted({lp.type for lp in test.layer if lp.type in SOURCE_LAYERS})
    found = f" (its TEST-phase data comes from {', '.join(kinds)})" if kinds else ""
    if for_transform or _is_deploy(param):
        raise CaffeishError(f"{path} has no Data or ImageData layer in the TEST phase{found}: --transform-from takes "
                            "the image transform from a train/test net's data layer")
    raise CaffeishError(f"net '{param.name}' has no Input layer: classify needs a deploy net (an Input layer giving "
                        "the image shape, e.g. models/lenet/lenet_deploy.prototxt) or a train/test net whose TEST "
                        f"phase reads images with a Data or ImageData layer{found}")


class CaffeTransform:
    """Images as a Data/ImageData layer's TEST phase makes them: decoded BGR uint8 (as convert imageset
    stores them), then its transform_param through caffeish's DataTransformer (mean, centre crop, scale)."""

    def __init__(self, layer, gray=None, resize_height=None, resize_width=None):
        legacy_name = IMAGE_DATA_LAYERS[layer.type]
        param = effective_transform_param(layer, getattr(layer, legacy_name), legacy_name)
        color, height, width = True, 0, 0
        if layer.type == "ImageData":
            p = layer.image_data_param
            color, height, width = p.is_color, p.new_height, p.new_width
        if gray is not None:
            color = not gray
        if param.force_color or param.force_gray:
            color = bool(param.force_color)
        if resize_height is not None or resize_width is not None:
            height, width = resize_height or 0, resize_width or 0
        if height < 0 or width < 0 or (height > 0) != (width > 0):
            raise CaffeishError("give both --resize-height and --resize-width (positive), or neither")
        if param.mirror:
            log.warning("layer '%s' mirrors its TEST images at random (transform_param mirror); classify uses them "
                        "unmirrored", layer.name)
            param.mirror = False
        self.layer, self.color, self.height, self.width = layer, color, height, width
        self.transformer = DataTransformer(param, TEST)
        self.crop = self.transformer.crop
        self.batch_size = int(getattr(layer, legacy_name).batch_size) or 1

    def load(self, path):
        """One image as the data layer gets it (uint8 C x H x W, BGR), checked against the transform."""
        image = cio.read_image_chw_bgr(path, self.color, self.height, self.width)
        try:
            self.transformer.output_shape(image.shape)
        except CaffeishError as e:
            resized = f"resized to {self.height} x {self.width}" if self.height else "not resized"
            raise CaffeishError(f"{e.reason} (the image is {resized}: give --resize-height and --resize-width "
                                "as given to convert imageset)", path=path) from None
        return image

    def shape(self, image):
        return self.transformer.output_shape(image.shape)

    def inputs(self, paths, oversample):
        """The net inputs for ``paths``: one each (the centre crop), or 10 each with ``oversample``."""
        images = [self.load(p) for p in paths]
        if not oversample:
            return self.transformer.transform_list(images, numpy.random.default_rng(0))
        out = []
        for im in images:
            c, h, w = im.shape
            _, ch, cw = self.transformer.output_shape(im.shape)
            tops = [0, 0, h - ch, h - ch, (h - ch) // 2] * 2  # pycaffe's oversample: corners, centre; mirrored
            lefts = [0, w - cw, 0, w - cw, (w - cw) // 2] * 2
            mirror = numpy.array([False] * 5 + [True] * 5)
            out.append(self.transformer.apply(numpy.broadcast_to(im, (10, c, h, w)), mirror, tops, lefts))
        return numpy.concatenate(out)


def deploy_from_train_test(param, data_layer, input_shape, wanted=None):
    """The deploy version of a train/test net's TEST phase: ``data_layer`` becomes an Input layer of
    ``input_shape``, the last SoftmaxWithLoss a Softmax (top ``prob``), and the layers that need the labels
    or other data layers are left out, as is whatever the scores do not need.  Returns (NetParameter, output)."""
    test = _test_phase(param)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(test)
    del out.layer[:]
    gone, kept, softmax, scores = set(), [], None, None
    names = {b for lp in test.layer for b in list(lp.top) + list(lp.bottom)}
    for lp in test.layer:
        if lp.name == data_layer.name and lp.type == data_layer.type:
            layer = caffe_pb2.LayerParameter(name=lp.name, type="Input", top=[lp.top[0]])
            layer.input_param.shape.add().dim.extend(int(d) for d in input_shape)
            kept.append(layer)
            gone.update(lp.top[1:])
        elif lp.type in SOURCE_LAYERS:
            gone.update(lp.top)
        elif any(b in gone for b in lp.bottom):
            if lp.type == "SoftmaxWithLoss" and lp.bottom[0] not in gone:
                softmax = lp
            elif lp.type == "Accuracy" and lp.bottom[0] not in gone:
                scores = lp.bottom[0]
            gone.update(t for t in lp.top if t not in lp.bottom)
        else:
            kept.append(lp)
    output = wanted
    if softmax is not None:
        top = "prob" if "prob" not in names else f"{softmax.name}_prob"
        layer = caffe_pb2.LayerParameter(name=top, type="Softmax", bottom=[softmax.bottom[0]], top=[top])
        if softmax.HasField("softmax_param"):
            layer.softmax_param.CopyFrom(softmax.softmax_param)
        kept.append(layer)
        output = output or top
    output = output or scores
    if output:  # keep only what the output needs
        needed, pruned = {output}, []
        for lp in reversed(kept):
            if any(t in needed for t in lp.top):
                pruned.append(lp)
                needed.update(lp.bottom)
        kept = pruned[::-1]
        if not any(output in lp.top for lp in kept):
            raise CaffeishError(f"--blob '{output}' is not a blob the TEST-phase net makes from its images")
    for lp in kept:
        out.layer.add().CopyFrom(lp)
    return out, output


# -- the command -----------------------------------------------------------------------------------------------
def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _averaged(scores, oversample):
    """One row of scores per image: with ``oversample`` the mean over its 10 crops (as Classifier.predict)."""
    scores = numpy.asarray(scores)
    scores = scores.reshape(len(scores), -1)
    return scores.reshape(len(scores) // 10, 10, -1).mean(1) if oversample else scores


def _run_caffe_transform(model, weights, paths, transform_from, gray, resize_height, resize_width, oversample, blob):
    """Scores of a **train/test net** (or a deploy net with ``--transform-from TRAIN_TEST``), fed exactly
    as its TEST-phase data layer feeds it.

    The image decoded as ``caffeish convert imageset`` stores it (BGR uint8, ``--gray``,
    ``--resize-height``/``--resize-width`` as given to convert imageset, or an ImageData layer's own), then the
    layer's ``transform_param``: mean (file or values), centre crop to ``crop_size``, ``scale``.  A train/test net
    runs with its data layer replaced by an Input layer and its SoftmaxWithLoss by a Softmax (the layers that need
    labels are left out), so the top-1 class is the one ``caffeish test`` counts for the same image.
    """
    param = read_net_param(model)
    deploy = _is_deploy(param)
    source = read_net_param(transform_from) if transform_from else param
    transform = CaffeTransform(find_image_data_layer(source, transform_from or model, bool(transform_from)), gray,
                               resize_height, resize_width)
    first = transform.load(paths[0])
    shape = transform.shape(first)
    if deploy:
        net = Net(param, TEST)
        name, net_shape = _input_blob(net)
        if tuple(net_shape[1:]) != tuple(shape):
            net.close()
            raise CaffeishError(f"the transform of {transform_from} makes {shape[0]} x {shape[1]} x {shape[2]} "
                                f"(C x H x W) inputs but the net's input '{name}' is {tuple(net_shape[1:])}; "
                                "check crop_size, --resize-height/--resize-width and --gray")
    else:
        batch = min(transform.batch_size, len(paths) * (10 if oversample else 1))
        data_layer = transform.layer if source is param else find_image_data_layer(param, model)
        net_param, _ = deploy_from_train_test(param, data_layer, (batch,) + tuple(shape), blob)
        net = Net(net_param, TEST)
        name = net.inputs[0]
    try:
        load_weights(net, weights)
        out_name = _output_blob(net, blob)
        per_batch = max(1, net.blobs[name].shape[0] // (10 if oversample else 1))
        rows = []
        for chunk in _chunks(paths, per_batch):
            data = transform.inputs(chunk, oversample)
            rows.append(_averaged(net.forward_all(blobs=[out_name], **{name: data})[out_name], oversample))
        return out_name, numpy.concatenate(rows).astype(numpy.float64)
    finally:
        net.close()


def _run_pycaffe(model, weights, paths, mean_file, mean_value, raw_scale, scale, channel_swap, images_dim,
                 oversample, blob):
    """Scores of a **deploy net** (an Input layer), fed as pycaffe's Classifier feeds it.

    ``load_image`` (floats in [0, 1], grey for a 1-channel net), resized to ``--images-dim`` (default: the
    input's H x W), the centre crop (or with ``--oversample`` the 10 crops) of the input's size, channels first,
    RGB -> BGR (``--channel-swap``), times ``--raw-scale``, minus the mean, times ``--input-scale``.
    """
    probe = Net(model, TEST)  # the input's shape and the checks on the flags, before the weights are read
    try:
        name, (_, channels, height, width) = _input_blob(probe)
        mean = _mean(mean_file, mean_value, channels, height, width)
    finally:
        probe.close()
    if not os.path.exists(weights):
        raise CaffeishError(f"the weights file {weights} does not exist")
    swap = _ints(channel_swap, "--channel-swap") if channel_swap is not None else (2, 1, 0) if channels == 3 else None
    dims = _ints(images_dim, "--images-dim") if images_dim else None
    if dims is not None and len(dims) != 2:
        raise CaffeishError(f"--images-dim takes the height and width to resize to, H,W, not '{images_dim}'")
    clf = Classifier(model, weights, image_dims=dims, mean=mean, input_scale=scale, raw_scale=raw_scale,
                     channel_swap=swap or None)
    try:
        out_name = _output_blob(clf, blob)
        per_batch = max(1, clf.blobs[name].shape[0] // (10 if oversample else 1))
        rows = []
        for chunk in _chunks(paths, per_batch):
            images = [cio.load_image(p, color=channels == 3) for p in chunk]
            data = clf._crops(images, oversample)
            rows.append(_averaged(clf.forward_all(blobs=[out_name], **{name: data})[out_name], oversample))
        return out_name, numpy.concatenate(rows).astype(numpy.float64)
    finally:
        clf.close()


def _save_npy(path, array):
    try:
        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                numpy.save(f, array)
    except OSError as e:
        raise CaffeishError(f"cannot write {path}: {e.strerror or e}") from None


@register_command("classify")
@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--model", "--model-def", "model", required=True, type=click.Path(),
              help="A deploy net (Input layer), or a train/test net whose TEST-phase data layer says the transform.")
@click.option("--weights", "--pretrained-model", "weights", required=True,
              help="The trained weights (.caffemodel or .caffemodel.h5).")
@click.option("--list", "list_file", default=None, type=click.Path(),
              help="Images as 'path label' lines (as convert imageset reads); the accuracy is logged.")
@click.option("--root", default="", help="The folder the --list paths start from.")
@click.option("--transform-from", default=None, type=click.Path(),
              help="A train/test net whose TEST-phase transform_param preprocesses the images for the deploy net.")
@click.option("--gray", is_flag=True, default=None,
              help="Train/test nets: load images grey, as convert imageset --gray.")
@click.option("--resize-height", default=None, type=int, help="Train/test nets: resize as convert imageset did.")
@click.option("--resize-width", default=None, type=int, help="Train/test nets: resize as convert imageset did.")
@click.option("--mean-file", default=None, help="Deploy nets: a mean to subtract, .binaryproto (Caffe's) or .npy.")
@click.option("--mean-value", default=None, help="Deploy nets: per-channel mean(s) to subtract, BGR: 104,117,123.")
@click.option("--raw-scale", default=None, type=float,
              help="Deploy nets: images load in [0, 1] and are multiplied by this first.  [default: 255]")
@click.option("--scale", "--input-scale", "scale", default=None, type=float,
              help="Deploy nets: multiplies the input after the mean.")
@click.option("--channel-swap", default=None,
              help="Deploy nets: the channel order after loading, e.g. 2,1,0 (RGB -> BGR, the default for colour).")
@click.option("--images-dim", default=None, help="Deploy nets: resize to H,W before cropping (default: the input's).")
@click.option("--oversample", is_flag=True, help="Average over 10 crops: 4 corners, the centre and their mirrors.")
@click.option("--center-only", is_flag=True, help="Only the centre crop (the default).")
@click.option("--labels", default=None, type=click.Path(), help="Class names, one a line, in class order.")
@click.option("--top-k", default=5, type=click.IntRange(min=1), show_default=True, help="Classes shown per image.")
@click.option("--blob", default=None, help="The blob holding class scores (default: prob, else the last output).")
@click.option("--output", default=None, help="Write the scores, N images x classes, to this .npy file.")
@gpu_option
def classify(images, model, weights, list_file, root, transform_from, gray, resize_height, resize_width, mean_file,
             mean_value, raw_scale, scale, channel_swap, images_dim, oversample, center_only, labels, top_k, blob,
             output, gpu):
    """Print the top classes, with their probabilities, of each IMAGE (files or directories)."""
    if output and not output.endswith(".npy"):
        if blob:
            raise CaffeishError(f"--output writes a .npy file, not '{output}'")
        log.warning("--output '%s' is taken as the blob to read; name blobs with --blob, and give --output a .npy "
                    "file to write the scores to", output)
        blob, output = output, None
    if oversample and center_only:
        raise CaffeishError("give --oversample or --center-only, not both")
    paths = _image_paths(images)
    truth = None
    if list_file:
        entries = read_image_list(list_file)
        truth = [None] * len(paths) + [label for _, label in entries]
        paths += [os.path.join(root, p) if root else p for p, _ in entries]
    if not paths:
        raise CaffeishError("no images given: name image files or folders, or give --list")
    select_device(gpu)
    param = read_net_param(model)
    caffe_way = bool(transform_from) or not _is_deploy(param)
    if caffe_way:
        given = [flag for flag, value in (("--mean-file", mean_file), ("--mean-value", mean_value),
                                          ("--raw-scale", raw_scale), ("--scale", scale),
                                          ("--channel-swap", channel_swap), ("--images-dim", images_dim))
                 if value is not None]
        if given:
            raise CaffeishError(f"{given[0]} applies to deploy nets preprocessed as pycaffe does; with a train/test "
                                "net (or --transform-from) the data layer's transform_param decides the preprocessing")
        out_name, scores = _run_caffe_transform(model, weights, paths, transform_from, gray, resize_height,
                                                resize_width, oversample, blob)
    else:
        given = [flag for flag, value in (("--gray", gray), ("--resize-height", resize_height),
                                          ("--resize-width", resize_width)) if value is not None]
        if given:
            raise CaffeishError(f"{given[0]} applies to train/test nets (or --transform-from), which preprocess as "
                                "their data layer does; a deploy net's images are resized with --images-dim")
        out_name, scores = _run_pycaffe(model, weights, paths, mean_file, mean_value,
                                        255.0 if raw_scale is None else raw_scale, scale, channel_swap, images_dim,
                                        oversample, blob)
    names = _labels(labels, scores.shape[1])
    if (scores < -1e-6).any() or (abs(scores.sum(axis=1) - 1) > 1e-3).any():
        log.warning("Output '%s' does not look like probabilities (does the net end in Softmax?); "
                    "showing its values as they are", out_name)
    if output:
        _save_npy(output, scores.astype(numpy.float32))
    for path, row in zip(paths, scores):
        order = numpy.argsort(-row, kind="stable")[:top_k]
        click.echo(path)
        for k in order:
            label = f"  {names[k]}" if names else ""
            click.echo(f"  {row[k]:.6f}  {k}{label}")
    if truth is not None:
        known = [(row, t) for row, t in zip(scores, truth) if t is not None]
        top1 = sum(int(numpy.argmax(row) == t) for row, t in known)
        topk = sum(int(t in numpy.argsort(-row, kind="stable")[:top_k]) for row, t in known)
        log.info("Accuracy: top-1 %.6g (%d of %d), top-%d %.6g", top1 / len(known), top1, len(known), top_k,
                 topk / len(known))
    if output:
        log.info("Wrote the scores of %d images (%d x %d) to %s", len(paths), scores.shape[0], scores.shape[1],
                 output)

"""DataTransformer: Caffe's TransformationParameter (mirror, crop, mean, scale), applied to whole batches at once
with random numbers from a generator passed in.
"""
import logging

import numpy
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import CaffeishError
from ..proto import caffe_pb2

log = logging.getLogger("caffeish")

TRAIN = caffe_pb2.TRAIN

#: Deprecated per-layer transformation fields (data_param, image_data_param) and where they went.
LEGACY_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def effective_transform_param(layer_param, legacy, legacy_name):
    """The TransformationParameter to use: ``transform_param``, or the deprecated fields of ``legacy``.

    Caffe moved ``scale``, ``mean_file``, ``crop_size`` and ``mirror`` (and ``force_encoded_color``)
    from ``data_param``/``image_data_param`` into ``transform_param``.  They are honoured only when
    ``transform_param`` is empty; given together with it they are a mistake worth a clear error.
    """
    fields = [f for f in LEGACY_FIELDS if legacy.HasField(f)]
    force_color = "force_encoded_color" in legacy.DESCRIPTOR.fields_by_name and legacy.force_encoded_color
    out = caffe_pb2.TransformationParameter()
    out.CopyFrom(layer_param.transform_param)
    if not fields and not force_color:
        return out
    given = fields + (["force_encoded_color"] if force_color else [])
    if out.ListFields():
        raise CaffeishError(f"{legacy_name}.{given[0]} is deprecated and this layer also has a transform_param; "
                            f"move {', '.join(legacy_name + '.' + f for f in given)} into transform_param")
    for f in fields:
        setattr(out, f, getattr(legacy, f))
    if force_color:
        out.force_color = True
    log.warning("layer '%s': %s is deprecated; use transform_param instead",
                layer_param.name, ", ".join(f"{legacy_name}.{f}" for f in given))
    return out


def load_mean_file(path):
    """The (C, H, W) float32 mean image stored in a BlobProto file."""
    from .. import io as cio
    mean = numpy.asarray(cio.read_mean_binaryproto(path), dtype=numpy.float32)
    while mean.ndim > 3 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise CaffeishError(f"the mean file holds a blob of shape {mean.shape}; a mean image needs the shape "
                            "(1, C, H, W) or (C, H, W)", path=path)
    return mean


def crop_batch(x, mirror, h_off, w_off, height, width):
    """``x[i, :, h_off[i]:h_off[i] + height, w_off[i]:w_off[i] + width]`` for every i, flipped left-right where
    ``mirror[i]``: one gather through a sliding-window view (``x`` itself when nothing is cut or flipped)."""
    n, c, h, w = x.shape
    if (height, width) == (h, w) and not mirror.any():
        return x
    out = numpy.empty((n, c, height, width), dtype=x.dtype)
    for flip, source in ((False, x), (True, x[..., ::-1])):
        idx = numpy.flatnonzero(mirror == flip)
        if idx.size:
            windows = sliding_window_view(source, (height, width), axis=(2, 3))  # (N, C, H', W', height, width)
            cols = w - width - w_off[idx] if flip else w_off[idx]  # the mirrored window, counted from the right
            out[idx] = windows[idx, :, h_off[idx], cols]
    return out


class DataTransformer:
    """Caffe's TransformationParameter for one phase; ``transform_batch(x, rng)`` does the work.

    For each image (C, H, W), exactly as Caffe's ``DataTransformer::Transform``:

    - ``mirror``: the image is flipped left-right with probability 1/2, in TRAIN and TEST alike;
    - ``crop_size``: a ``crop x crop`` window at a random offset in TRAIN (``h_off`` uniform in
      ``[0, H - crop]``, ``w_off`` likewise), at the centre in TEST (``h_off = (H - crop) // 2``);
    - the mean is subtracted before cropping: pixel (c, h, w) of the output is
      ``(x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale`` with ``mean_file``
      (a BlobProto of the full image size), ``(x - mean_value[c]) * scale`` with ``mean_value`` (one
      value for all channels or one per channel), or ``x * scale``;
    - ``force_color`` / ``force_gray`` decode encoded Datums as 3-channel BGR / 1-channel images.

    Random numbers come from a ``numpy.random.Generator`` passed in (no global state).  For a batch of
    ``n`` images ``draw`` takes, in this order: ``n`` mirror flags (only if ``mirror``), then ``n`` row
    offsets and ``n`` column offsets (only in TRAIN with ``crop_size``).  A loop that draws the same
    way reproduces a batch exactly.
    """

    def __init__(self, param=None, phase=TRAIN, dtype=numpy.float32):
        self.param = caffe_pb2.TransformationParameter()
        if param is not None:
            self.param.CopyFrom(param)
        p = self.param
        self.phase = phase
        self.dtype = numpy.dtype(dtype)
        self.crop = int(p.crop_size)
        self.scale = float(p.scale)
        self.mirror = bool(p.mirror)
        if p.HasField("mean_file") and len(p.mean_value):
            raise CaffeishError("transform_param gives both mean_file and mean_value; give only one")
        if p.force_color and p.force_gray:
            raise CaffeishError("transform_param sets both force_color and force_gray; set at most one")
        self.mean = load_mean_file(p.mean_file) if p.HasField("mean_file") else None
        self.mean_values = numpy.asarray(p.mean_value, dtype=numpy.float32) if len(p.mean_value) else None
        self._warned_force = False

    @property
    def needs_rand(self):
        """Whether transforming draws random numbers (Caffe's ``InitRand`` condition)."""
        return self.mirror or (self.phase == TRAIN and self.crop > 0)

    # -- shapes ------------------------------------------------------------------------------------------------
    def output_shape(self, shape):
        """(C, H', W') of a transformed (C, H, W) image, with Caffe's checks on crop and mean."""
        c, h, w = (int(s) for s in shape)
        if c <= 0:
            raise CaffeishError(f"an image of shape {(c, h, w)} has no channels")
        if self.crop and (h < self.crop or w < self.crop):
            raise CaffeishError(f"crop_size {self.crop} is larger than the image ({h} x {w} pixels)")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise CaffeishError(f"the mean file's image has shape {self.mean.shape} (C, H, W), but the data is "
                                f"{(c, h, w)}; the mean must have the size of the uncropped images")
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise CaffeishError(f"give either 1 mean_value or as many as channels ({c}); "
                                f"{self.mean_values.size} given")
        return (c, self.crop or h, self.crop or w)

    # -- random draws ------------------------------------------------------------------------------------------
    def draw(self, n, heights, widths, rng):
        """(mirror flags, row offsets, column offsets) for ``n`` images of the given sizes."""
        heights = numpy.broadcast_to(numpy.asarray(heights, dtype=numpy.int64), (n,))
        widths = numpy.broadcast_to(numpy.asarray(widths, dtype=numpy.int64), (n,))
        if self.mirror:
            mirror = rng.integers(0, 2, size=n).astype(bool)
        else:
            mirror = numpy.zeros(n, dtype=bool)
        if not self.crop:
            zeros = numpy.zeros(n, dtype=numpy.int64)
            return mirror, zeros, zeros.copy()
        small = (heights < self.crop) | (widths < self.crop)
        if small.any():
            i = int(numpy.argmax(small))
            raise CaffeishError(f"crop_size {self.crop} is larger than the image "
                                f"({heights[i]} x {widths[i]} pixels)")
        if self.phase == TRAIN:
            h_off = rng.integers(0, heights - self.crop + 1, size=n)
            w_off = rng.integers(0, widths - self.crop + 1, size=n)
        else:
            h_off = (heights - self.crop) // 2
            w_off = (widths - self.crop) // 2
        return mirror, numpy.asarray(h_off, numpy.int64), numpy.asarray(w_off, numpy.int64)

    # -- the transform -----------------------------------------------------------------------------------------
    def apply(self, x, mirror, h_off, w_off):
        """Transform ``x`` (N, C, H, W) with the given per-image mirror flags and crop offsets."""
        x = numpy.asarray(x)
        if x.ndim != 4:
            raise CaffeishError(f"the transformer takes a batch of shape (N, C, H, W), not {x.shape}")
        n, c, h, w = x.shape
        _, oh, ow = self.output_shape((c, h, w))
        mirror = numpy.asarray(mirror, bool)
        h_off, w_off = numpy.asarray(h_off, numpy.int64), numpy.asarray(w_off, numpy.int64)
        out = crop_batch(x, mirror, h_off, w_off, oh, ow)
        out = out.astype(self.dtype, copy=out is x)  # a fresh array of the output type
        if self.mean is not None:
            mean = numpy.broadcast_to(self.mean.astype(self.dtype, copy=False)[None], (n, c, h, w))
            out -= crop_batch(mean, mirror, h_off, w_off, oh, ow)
        elif self.mean_values is not None:
            values = numpy.broadcast_to(self.mean_values.astype(self.dtype), (c,))
            out -= values.reshape(1, c, 1, 1)
        if self.scale != 1.0:
            out *= self.dtype.type(self.scale)
        return out

    def transform_batch(self, x, rng):
        """(N, C, H, W) uint8 or float -> transformed (N, C, H', W') array of ``dtype``."""
        x = numpy.asarray(x)
        if x.ndim != 4:
            raise CaffeishError(f"the transformer takes a batch of shape (N, C, H, W), not {x.shape}")
        n, _, h, w = x.shape
        mirror, h_off, w_off = self.draw(n, h, w, rng)
        return self.apply(x, mirror, h_off, w_off)

    def transform_list(self, images, rng):
        """A list of (C, H, W) images -> one transformed batch.

        Images of one size are stacked and transformed at once.  Images of different sizes are allowed
        only with ``crop_size`` (each is cropped from its own size, as Caffe does).
        """
        shapes = [tuple(numpy.shape(im)) for im in images]
        if not shapes:
            raise CaffeishError("there are no images to transform")
        if all(s == shapes[0] for s in shapes):
            return self.transform_batch(numpy.stack(images), rng)
        bad = next(i for i, s in enumerate(shapes) if s != shapes[0])
        if not self.crop or any(s[0] != shapes[0][0] for s in shapes):
            raise CaffeishError(f"image {bad} of the batch has shape {shapes[bad]}, but image 0 has {shapes[0]}; "
                                "the images of a batch must have one size (or a crop_size)")
        n = len(images)
        mirror, h_off, w_off = self.draw(n, [s[1] for s in shapes], [s[2] for s in shapes], rng)
        return numpy.concatenate([self.apply(numpy.asarray(im)[None], mirror[i:i + 1], h_off[i:i + 1],
                                             w_off[i:i + 1]) for i, im in enumerate(images)])

    # -- Datums ------------------------------------------------------------------------------------------------
    def decode(self, datum):
        """A Datum's image as (C, H, W): encoded ones decoded (BGR), honouring force_color / force_gray."""
        from .. import io as cio
        p = self.param
        if datum.encoded:
            is_color = True if p.force_color else False if p.force_gray else None
            return cio.decode_datum_image(datum, is_color)
        if (p.force_color or p.force_gray) and not self._warned_force:
            log.error("force_color and force_gray apply only to encoded Datums")
            self._warned_force = True
        return cio.datum_to_array(datum)

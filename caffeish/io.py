"""pycaffe's ``caffe.io``: Datum and BlobProto conversions, image loading, mean files.

Conventions, as in Caffe: a Datum holds one image as uint8 bytes (or ``float_data``)
in channel-major C x H x W order with colour channels in **BGR** order (OpenCV's);
an encoded Datum holds a compressed image file (PNG/JPEG) instead.
``load_image`` follows pycaffe and returns float H x W x C **RGB** in [0, 1].
"""
import io as _io

import numpy
from PIL import Image, UnidentifiedImageError

from . import imgproc
from .errors import CaffeishError
from .prototxt import read_binary_proto, write_binary_proto
from .proto import caffe_pb2

#: The image files the tools pick out of a folder (classify, resize-and-crop).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".webp")
_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}


# -- BlobProto ---------------------------------------------------------------------------------------------
def blobproto_to_array(blob, return_diff=False):
    """The data (or diff) of a BlobProto as a float array of its shape (legacy 4-D fields understood)."""
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if return_diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
    dtype = numpy.float64 if (len(blob.double_diff) if return_diff else len(blob.double_data)) else numpy.float32
    arr = numpy.asarray(values, dtype=dtype)
    expected = int(numpy.prod(shape, dtype=numpy.int64))
    if arr.size != expected:
        what = "diff" if return_diff else "data"
        raise CaffeishError(f"BlobProto of shape {shape} holds {arr.size} {what} values, not {expected}")
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """A BlobProto (``shape`` and float ``data``, optional ``diff``) from an array."""
    arr = numpy.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(numpy.float32).ravel().tolist())
    if diff is not None:
        diff = numpy.asarray(diff)
        if diff.shape != arr.shape:
            raise CaffeishError(f"diff shape {diff.shape} does not match data shape {arr.shape}")
        blob.diff.extend(diff.astype(numpy.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text):
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(text)
    except Exception as e:  # DecodeError, or RuntimeError/ValueError from the C++ backend (as parse_datum)
        raise CaffeishError(f"not a serialized BlobProtoVector ({e})") from None
    return [blobproto_to_array(b) for b in vec.blobs]


def read_mean_binaryproto(path):
    """A mean file (BlobProto) as an array: (C, H, W) when it is (1, C, H, W), else its own shape."""
    arr = blobproto_to_array(read_binary_proto(path, caffe_pb2.BlobProto))
    if arr.size == 0:
        raise CaffeishError(f"{path} holds an empty BlobProto, not a mean image")
    return arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr


def write_mean_binaryproto(path, arr):
    """Write a (C, H, W) or (1, C, H, W) mean atomically, with Caffe's legacy 4-D fields as well."""
    arr = numpy.asarray(arr, dtype=numpy.float32)
    if arr.ndim == 3:
        arr = arr[numpy.newaxis]
    if arr.ndim != 4:
        raise CaffeishError(f"a mean image is (C, H, W) or (1, C, H, W), not {arr.shape}")
    blob = array_to_blobproto(arr)
    blob.num, blob.channels, blob.height, blob.width = arr.shape
    write_binary_proto(path, blob)
    return blob


# -- images ------------------------------------------------------------------------------------------------
def _open_image(source, name, gray_jpeg=False):
    """A fully decoded PIL image from a path or bytes; undecodable input -> CaffeishError naming it.

    ``gray_jpeg``: a colour JPEG is decoded straight to grey by libjpeg, as ``cv::imread(...,
    IMREAD_GRAYSCALE)`` does (it hands over the luma plane, which no formula on the RGB pixels gives).
    """
    try:
        img = Image.open(_io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
        if gray_jpeg and img.format in ("JPEG", "MPO") and img.mode == "RGB":
            img.draft("L", img.size)
        img.load()
        return img
    except FileNotFoundError:
        raise CaffeishError("no such file", path=name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).replace(f" '{name}'", "").replace(str(name), "the file")
        raise CaffeishError(f"cannot decode the image ({reason})", path=name) from None


def _imread_pixels(img, color):
    """A decoded PIL image as ``cv::imread`` gives it: uint8 H x W (grey) or H x W x 3 RGB.

    ``color`` True: 3 channels; False: grey; None: as stored (grey stays grey, alpha dropped).
    16-bit images keep their high byte; an RGBA TIFF comes premultiplied by its alpha, as libtiff's
    RGBA reader gives it; colour turns grey as the format's reader does it (``caffeish.imgproc``):
    libpng's conversion for PNG (gamma included), cvtColor's for WebP and images not from a file,
    OpenCV's decoders' for the rest (JPEG: see ``_open_image``).
    """
    if img.mode.startswith("I;16"):
        img = Image.fromarray((numpy.asarray(img) >> 8).astype(numpy.uint8))
    elif img.mode in ("I", "F"):  # 32-bit grey: scaled to 8 bits when it goes past them
        arr = numpy.asarray(img, dtype=numpy.float64)
        img = Image.fromarray((arr / (256.0 if arr.max() > 255 else 1.0)).clip(0, 255).astype(numpy.uint8))
    stored_gray = img.mode in ("L", "1", "LA", "La")
    if color is None:
        color = not stored_gray
    if stored_gray or (img.mode == "RGB" and color):
        return numpy.asarray(img.convert("RGB" if color else "L"), dtype=numpy.uint8)
    if img.format == "TIFF" and img.mode == "RGBA":
        rgba = numpy.asarray(img, dtype=numpy.uint32)
        rgb = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(numpy.uint8)
    else:
        rgb = numpy.asarray(img.convert("RGB"), dtype=numpy.uint8)
    if color:
        return rgb
    if img.format == "PNG":
        gamma = 0.45455 if "srgb" in img.info else img.info.get("gamma")  # an sRGB chunk means 1/2.2
        return imgproc.libpng_gray(rgb, None if gamma is None else int(round(gamma * 100000)))
    if img.format in (None, "WEBP"):
        return imgproc.rgb_to_gray(rgb)
    return imgproc.codec_gray(rgb)


def _chw_bgr(arr):
    """uint8 H x W (grey) or H x W x 3 RGB -> C x H x W, BGR for colour."""
    if arr.ndim == 2:
        return arr[numpy.newaxis].copy()
    return numpy.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))


def image_to_chw_bgr(img, color=None):
    """A PIL image as uint8 C x H x W with ``cv::imread``'s pixels: BGR for colour, 1 channel for grey."""
    return _chw_bgr(_imread_pixels(img, color))


def read_image_chw_bgr(path, color=True, height=0, width=0):
    """Caffe's ReadImageToCVMat: uint8 C x H x W BGR (1 channel when not ``color``), resized if asked.

    The pixels are OpenCV's: ``cv::imread`` (see ``_imread_pixels``), then, when ``height`` and
    ``width`` are both positive, ``cv::resize`` with INTER_LINEAR (``imgproc.resize_linear``).
    """
    arr = _imread_pixels(_open_image(path, path, gray_jpeg=color is False), color)
    if height > 0 and width > 0:
        arr = imgproc.resize_linear(arr, height, width)
    return _chw_bgr(arr)


def decode_image(data, is_color=None, name="encoded image"):
    """Bytes of an image file -> uint8 C x H x W BGR as ``cv::imdecode`` gives it (``is_color`` None keeps the
    stored channels)."""
    data = bytes(data)
    return image_to_chw_bgr(_open_image(data, name, gray_jpeg=is_color is False), is_color)


def decode_datum_image(datum, is_color=None):
    """An encoded Datum's image as uint8 C x H x W BGR; ``is_color`` forces 3 (True) or 1 (False) channels."""
    return decode_image(datum.data, is_color, name="encoded Datum")


def encode_image(array_chw_bgr, fmt="png"):
    """uint8 C x H x W BGR (or 1-channel gray) -> bytes of a PNG/JPEG file (what an encoded Datum holds)."""
    key = str(fmt).lower().lstrip(".")
    if key not in _FORMATS:
        raise CaffeishError(f"unknown image encoding '{fmt}' (known: {', '.join(sorted(_FORMATS))})")
    arr = numpy.asarray(array_chw_bgr)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise CaffeishError(f"encode_image needs a C x H x W array with 1 or 3 channels, not {arr.shape}")
    arr = arr.clip(0, 255).astype(numpy.uint8) if arr.dtype != numpy.uint8 else arr
    img = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr[::-1].transpose(1, 2, 0))
    out = _io.BytesIO()
    img.save(out, format=_FORMATS[key], **({"quality": 95} if _FORMATS[key] == "JPEG" else {}))
    return out.getvalue()


def _pil_to_float(img, color):
    """A decoded PIL image as pycaffe's ``skimage.img_as_float(skimage.io.imread(f, as_gray=not color))``.

    Colour: float64 H x W x 3 (or x 4 with alpha), integers scaled to [0, 1] (``x * (1 / 255)``, 16-bit
    ``x * (1 / 65535)``); grey files stay H x W.  Grey asked of a colour file: skimage's ``rgb2gray``
    (``0.2125 R + 0.7154 G + 0.0721 B``), alpha first composed onto white as skimage's ``rgba2rgb`` does.
    CMYK is converted to RGB and grey+alpha loses its alpha (skimage would keep the raw planes).
    """
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if img.palette is not None and img.palette.mode == "RGBA" else "RGB")
    elif mode in ("LA", "La", "PA"):
        img = img.convert("L")
    elif mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in mode else "RGB")
    arr = numpy.asarray(img)
    if arr.dtype == numpy.bool_:
        arr = arr.astype(numpy.float64)
    elif arr.dtype.kind in "ui":
        arr = numpy.multiply(arr, 1.0 / numpy.iinfo(arr.dtype).max, dtype=numpy.float64)
    else:
        arr = arr.astype(numpy.float64)
    if not color and arr.ndim == 3:
        if arr.shape[2] == 4:
            alpha = arr[:, :, 3:4]
            arr = numpy.clip((1 - alpha) * 1.0 + alpha * arr[:, :, :3], 0, 1)
        arr = arr @ numpy.array([0.2125, 0.7154, 0.0721], dtype=arr.dtype)
    return arr


def load_image(filename, color=True):
    """pycaffe's load_image: float32 H x W x 3 RGB (``color``) or H x W x 1 grey, in [0, 1].

    A grey file asked in colour is repeated over 3 channels; RGBA loses its alpha; colour asked as grey
    is skimage's ``rgb2gray`` of it (weights 0.2125, 0.7154, 0.0721), as pycaffe gets it.
    """
    img = _pil_to_float(_open_image(filename, filename), bool(color)).astype(numpy.float32)
    if img.ndim == 2:
        img = img[:, :, numpy.newaxis]
        if color:
            img = numpy.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _axis_taps(n_in, n_out, order, grid):
    """Source indices and weights along one axis, as ``scipy.ndimage.zoom`` computes them.

    ``grid`` (what skimage's resize uses): pixel centres map as ``(i + 0.5) * n_in / n_out - 0.5`` and
    taps outside the image read 0 (mode ``grid-constant``).  Otherwise corners map onto corners,
    ``i * (n_in - 1) / (n_out - 1)``, and a coordinate rounded past the last pixel reads 0 (mode
    ``constant``).  Returns ``(index, weight, inside)`` arrays of shape (order + 1, n_out); order 0 has
    weight 1, order 1 the weights ``1 - f`` and ``1 - (1 - f)`` of ndimage.
    """
    if grid:
        zoom = n_in / n_out
        cc = (numpy.arange(n_out, dtype=numpy.float64) + 0.5) * zoom - 0.5
    else:
        zoom = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
        cc = numpy.arange(n_out, dtype=numpy.float64) * zoom
    if order == 0:
        start = numpy.floor(cc + 0.5).astype(numpy.int64)
        index, weight = start[None], numpy.ones((1, n_out))
    else:
        start = numpy.floor(cc).astype(numpy.int64)
        w0 = 1.0 - (cc - numpy.floor(cc))
        index, weight = numpy.stack([start, start + 1]), numpy.stack([w0, 1.0 - w0])
    inside = (index >= 0) & (index < n_in)
    if not grid:  # mode 'constant': a point past the edge is all cval; the tap past the last pixel weighs 0
        outside = (cc < 0) | (cc > n_in - 1)
        inside &= ~outside[None]
    return numpy.clip(index, 0, n_in - 1), weight, inside


def _zoom2d(im, new_h, new_w, order, grid):
    """``scipy.ndimage.zoom`` of H x W x K ``im`` to ``new_h x new_w`` (channels untouched), float64 sums in
    ndimage's order, returned in ``im``'s dtype (integers rounded as ndimage does)."""
    iy, wy, vy = _axis_taps(im.shape[0], new_h, order, grid)
    ix, wx, vx = _axis_taps(im.shape[1], new_w, order, grid)
    src = im.astype(numpy.float64, copy=False)
    t = numpy.zeros((new_h, new_w, im.shape[2]), dtype=numpy.float64)
    for a in range(order + 1):
        rows = src[iy[a]]
        for b in range(order + 1):
            v = rows[:, ix[b]]
            coeff = v * wy[a][:, None, None] * wx[b][None, :, None]
            t += numpy.where((vy[a][:, None] & vx[b][None, :])[:, :, None], coeff, 0.0)
    if im.dtype.kind in "ui":
        info = numpy.iinfo(im.dtype)
        t = numpy.where(t > 0, t + 0.5, t - 0.5 if im.dtype.kind == "i" else 0.0)
        t = numpy.trunc(numpy.clip(t, info.min, info.max))
    return t.astype(im.dtype if im.dtype.kind in "uif" else numpy.float64)


def resize_image(im, new_dims, interp_order=1):
    """pycaffe's resize_image: an H x W x K image to ``new_dims`` (height, width), float32.

    1 or 3 channels: scaled to [0, 1], resized as ``skimage.transform.resize(x, new_dims,
    order=interp_order, mode='constant', anti_aliasing=False)`` and scaled back (a constant image
    comes back filled with its value); other channel counts as ``scipy.ndimage.zoom(im, (h/H, w/W, 1),
    order=interp_order)``.  ``interp_order`` 0 is nearest, 1 (the default) bilinear; both are computed
    here with numpy.  A 2-D (H x W) image is resized as one channel and comes back 2-D.
    """
    im = numpy.asarray(im)
    squeeze = im.ndim == 2
    if squeeze:
        im = im[:, :, numpy.newaxis]
    if im.ndim != 3 or 0 in im.shape:
        raise CaffeishError(f"resize_image takes an H x W x K image, not an array of shape {im.shape}")
    try:
        h, w = (int(d) for d in new_dims)
    except (TypeError, ValueError):
        raise CaffeishError(f"resize_image takes new_dims (height, width), not {new_dims!r}") from None
    if h <= 0 or w <= 0:
        raise CaffeishError(f"resize_image needs positive dimensions, not {(h, w)}")
    if interp_order not in (0, 1):
        raise CaffeishError(f"resize_image supports interp_order 0 (nearest) and 1 (bilinear), not "
                            f"{interp_order!r}")
    if im.dtype == numpy.bool_ or im.dtype.kind not in "uif":
        im = im.astype(numpy.float64)
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if not im_max > im_min:  # a constant image
            out = numpy.full((h, w, im.shape[-1]), im_min, dtype=numpy.float32)
            return out[:, :, 0] if squeeze else out
        im_std = (im - im_min) / (im_max - im_min)
        resized = _zoom2d(im_std, h, w, interp_order, grid=True)
        numpy.clip(resized, im_std.min(), im_std.max(), out=resized)
        out = resized * (im_max - im_min) + im_min
    else:
        out = _zoom2d(im, h, w, interp_order, grid=False)
    out = out.astype(numpy.float32)
    return out[:, :, 0] if squeeze else out


def oversample(images, crop_dims):
    """pycaffe's oversample: 10 crops of each H x W x K image, float32 (10 N) x h x w x K.

    Per image, in order: the top-left, top-right, bottom-left and bottom-right corners, the centre
    (rows from ``int(H / 2 - h / 2)``), then the same five crops mirrored left-right.
    """
    if len(images) == 0:
        raise CaffeishError("oversample needs at least one image")
    shape = numpy.shape(images[0])
    if len(shape) != 3:
        raise CaffeishError(f"oversample takes H x W x K images, not an array of shape {shape}")
    for i, im in enumerate(images):
        if numpy.shape(im) != shape:
            raise CaffeishError(f"oversample needs images of one size: image {i} is {numpy.shape(im)}, "
                                f"image 0 is {shape} (resize them first)")
    try:
        ch, cw = (int(d) for d in crop_dims)
    except (TypeError, ValueError):
        raise CaffeishError(f"oversample takes crop_dims (height, width), not {crop_dims!r}") from None
    if not (0 < ch <= shape[0] and 0 < cw <= shape[1]):
        raise CaffeishError(f"oversample cannot cut {ch} x {cw} crops from {shape[0]} x {shape[1]} images")
    tops = [0, 0, shape[0] - ch, shape[0] - ch, int(shape[0] / 2.0 - ch / 2.0)]
    lefts = [0, shape[1] - cw, 0, shape[1] - cw, int(shape[1] / 2.0 - cw / 2.0)]
    crops = numpy.empty((10 * len(images), ch, cw, shape[2]), dtype=numpy.float32)
    for n, im in enumerate(images):
        im = numpy.asarray(im)
        for k, (top, left) in enumerate(zip(tops, lefts)):
            crops[10 * n + k] = im[top:top + ch, left:left + cw]
            crops[10 * n + 5 + k] = im[top:top + ch, left:left + cw][:, ::-1]
    return crops


class Transformer:
    """pycaffe's Transformer: an H x W x K image (floats in [0, 1]) as a net input, and back.

    ``Transformer({'data': net.blobs['data'].data.shape})``, then per input: ``set_transpose``
    (e.g. (2, 0, 1) for H x W x K -> K x H x W), ``set_channel_swap`` (e.g. (2, 1, 0) for RGB -> BGR),
    ``set_raw_scale`` (255 for nets trained on [0, 255] pixels), ``set_mean`` and ``set_input_scale``.
    ``preprocess`` applies them in pycaffe's order to a float32 copy of the image.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            known = ", ".join(f"'{name}'" for name in self.inputs) or "none"
            raise CaffeishError(f"'{in_}' is not one of the net's inputs (the Transformer knows: {known})")
        return tuple(int(d) for d in self.inputs[in_])

    def preprocess(self, in_, data):
        """An H' x W' x K image -> the K x H x W float32 input of ``in_``: resized to the input's H x W
        (``resize_image``) if it differs, transposed, channels swapped, times raw_scale, minus the mean,
        times input_scale (each step only if set)."""
        shape = self._check_input(in_)
        caffe_in = numpy.array(data, dtype=numpy.float32)  # a copy: the caller's array is left alone
        in_dims = shape[2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if transpose is not None:
            if caffe_in.ndim != len(transpose):
                raise CaffeishError(f"input '{in_}': the transpose {tuple(transpose)} is for {len(transpose)}-axis "
                                    f"images; this one has shape {caffe_in.shape}")
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            if caffe_in.ndim < 1 or caffe_in.shape[0] != len(channel_swap):
                raise CaffeishError(f"input '{in_}': the channel swap {tuple(channel_swap)} needs "
                                    f"{len(channel_swap)} channels first, but the image is {caffe_in.shape} after "
                                    "the transpose")
            caffe_in = caffe_in[list(channel_swap), :, :]
        try:
            if raw_scale is not None:
                caffe_in *= raw_scale
            if mean is not None:
                caffe_in -= mean
            if input_scale is not None:
                caffe_in *= input_scale
        except ValueError:
            raise CaffeishError(f"input '{in_}': the image is {caffe_in.shape} after the transpose and channel "
                                f"swap; the mean of shape {numpy.shape(mean)} does not fit it") from None
        return caffe_in

    def deprocess(self, in_, data):
        """Undo ``preprocess``: one K x H x W input (or a batch of one) -> H x W x K as it was fed in."""
        shape = self._check_input(in_)
        decaf_in = numpy.array(data, copy=True)
        if decaf_in.dtype.kind != "f":
            decaf_in = decaf_in.astype(numpy.float32)
        if decaf_in.ndim == len(shape) and decaf_in.shape[0] == 1:
            decaf_in = decaf_in[0]
        if decaf_in.ndim != len(shape) - 1:
            raise CaffeishError(f"deprocess takes one item of input '{in_}' ({len(shape) - 1} axes, or a batch "
                                f"of one), not an array of shape {numpy.shape(data)}")
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[numpy.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(numpy.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """The axis order taking the image to the input's, e.g. (2, 0, 1): H x W x K -> K x H x W."""
        shape = self._check_input(in_)
        order = tuple(int(a) for a in order)
        if sorted(order) != list(range(len(shape) - 1)):
            raise CaffeishError(f"input '{in_}' of shape {shape} takes {len(shape) - 1}-axis items: the transpose "
                                f"order must be a permutation of {tuple(range(len(shape) - 1))}, not {order}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The channel order to take after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        shape = self._check_input(in_)
        order = tuple(int(c) for c in order)
        channels = shape[1] if len(shape) > 1 else 0
        if len(order) != channels or any(not 0 <= c < channels for c in order):
            raise CaffeishError(f"input '{in_}' of shape {shape} has {channels} channels: the channel swap needs "
                                f"{channels} channel indices in [0, {channels - 1}], not {order}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the image by this first (255 when the net was trained on [0, 255] pixels)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (K,), or a whole K x H x W (or H x W) image."""
        shape = self._check_input(in_)
        mean = numpy.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise CaffeishError(f"input '{in_}' of shape {shape} has {shape[1]} channels, but the mean gives "
                                    f"{mean.shape[0]} values (shape {mean.shape})")
            mean = mean[:, numpy.newaxis, numpy.newaxis]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3 or ms != shape[1:]:
                raise CaffeishError(f"the mean of shape {mean.shape} does not fit input '{in_}' of shape {shape}: "
                                    f"give {shape[1]} per-channel values or a {' x '.join(map(str, shape[1:]))} "
                                    "(C x H x W) image")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by this last, after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- Datum -------------------------------------------------------------------------------------------------
def array_to_datum(arr, label=None):
    """A Datum from a C x H x W array: uint8 -> ``data`` bytes, other dtypes -> ``float_data``."""
    arr = numpy.asarray(arr)
    if arr.ndim != 3:
        raise CaffeishError(f"a Datum holds a C x H x W array (3 axes), not one of shape {arr.shape}")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == numpy.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(numpy.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """A Datum's pixels as C x H x W: uint8 for raw bytes, float32 for ``float_data``, decoded (BGR) if encoded."""
    if datum.encoded:
        return decode_datum_image(datum)
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != size:
            raise CaffeishError(f"Datum of shape {shape} holds {len(datum.data)} bytes, not {size}")
        return numpy.frombuffer(datum.data, dtype=numpy.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise CaffeishError(f"Datum of shape {shape} holds {len(datum.float_data)} float values, not {size}")
    return numpy.asarray(datum.float_data, dtype=numpy.float32).reshape(shape)


def parse_datum(value, where="record"):
    """A Datum from serialized bytes; garbage -> CaffeishError naming ``where``."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(value))
    except Exception as e:  # protobuf raises DecodeError, or RuntimeError/ValueError from the C++ backend
        raise CaffeishError(f"{where} is not a Datum ({e})") from None
    return datum

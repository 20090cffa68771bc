"""pycaffe's ``caffe.io``: Datum and BlobProto conversions, image loading, mean files.

Conventions, as in Caffe: a Datum holds one image as uint8 bytes (or ``float_data``)
in channel-major C x H x W order with colour channels in **BGR** order (OpenCV's);
an encoded Datum holds a compressed image file (PNG/JPEG) instead.
``load_image`` follows pycaffe and returns float H x W x C **RGB** in [0, 1].
"""
import io as _io

import numpy
from PIL import Image, UnidentifiedImageError

from .errors import CaffeishError
from .prototxt import read_binary_proto, write_binary_proto
from .proto import caffe_pb2

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
def _open_image(source, name):
    """A fully decoded PIL image from a path or bytes; undecodable input -> CaffeishError naming it."""
    try:
        img = Image.open(_io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
        img.load()
        return img
    except FileNotFoundError:
        raise CaffeishError("no such file", path=name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).replace(f" '{name}'", "").replace(str(name), "the file")
        raise CaffeishError(f"cannot decode the image ({reason})", path=name) from None


def _to_mode(img, color):
    """``color`` True: RGB; False: grayscale; None: as stored (gray stays gray, alpha dropped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = numpy.asarray(img, dtype=numpy.float64)
        img = Image.fromarray((arr / (256.0 if arr.max() > 255 else 1.0)).clip(0, 255).astype(numpy.uint8))
    if color is None:
        color = img.mode not in ("L", "1", "LA", "I", "F")
    return img.convert("RGB" if color else "L")


def image_to_chw_bgr(img, color=None):
    """A PIL image as uint8 C x H x W, BGR for colour, 1 channel for gray."""
    arr = numpy.asarray(_to_mode(img, color), dtype=numpy.uint8)
    if arr.ndim == 2:
        return arr[numpy.newaxis].copy()
    return numpy.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))


def read_image_chw_bgr(path, color=True, height=0, width=0):
    """Caffe's ReadImageToCVMat: uint8 C x H x W BGR (1 channel when not ``color``), resized if asked."""
    img = _to_mode(_open_image(path, path), color)
    if height > 0 and width > 0 and img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return image_to_chw_bgr(img, color)


def decode_image(data, is_color=None, name="encoded image"):
    """Bytes of an image file -> uint8 C x H x W BGR (``is_color`` None keeps the stored channels)."""
    return image_to_chw_bgr(_open_image(bytes(data), name), is_color)


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


def load_image(filename, color=True):
    """pycaffe's load_image: float32 H x W x C in [0, 1], RGB (3 channels) or gray (1 channel)."""
    img = _open_image(filename, filename)
    arr = numpy.asarray(_to_mode(img, bool(color)), dtype=numpy.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, numpy.newaxis]
    return arr


def resize_image(im, new_dims, interp_order=1):
    """pycaffe's resize_image: H x W x K float image to ``new_dims`` (height, width), per channel.

    ``interp_order`` 0 nearest, 1 bilinear (default), 3 bicubic.  Returns float32.
    """
    im = numpy.asarray(im, dtype=numpy.float32)
    squeeze = im.ndim == 2
    if squeeze:
        im = im[:, :, numpy.newaxis]
    h, w = (int(d) for d in new_dims)
    if h <= 0 or w <= 0:
        raise CaffeishError(f"resize_image needs positive dimensions, not {tuple(new_dims)}")
    resample = {0: Image.NEAREST, 1: Image.BILINEAR, 2: Image.BILINEAR, 3: Image.BICUBIC}.get(interp_order)
    if resample is None:
        raise CaffeishError(f"resize_image interp_order must be 0, 1 or 3, not {interp_order}")
    out = numpy.empty((h, w, im.shape[2]), dtype=numpy.float32)
    for k in range(im.shape[2]):
        out[:, :, k] = numpy.asarray(Image.fromarray(numpy.ascontiguousarray(im[:, :, k]))
                                     .resize((w, h), resample), dtype=numpy.float32)
    return out[:, :, 0] if squeeze else out


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

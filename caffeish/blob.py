"""Blob, the N-D array pair (data, diff) that layers read and write, and the memory limit a net's blobs are
checked against (``memory_limit``: ``CAFFEISH_MEMORY_LIMIT``, else the GPU's or the machine's memory).
"""
import math
import os

import numpy

from . import backend
from .errors import CaffeishError

MAX_AXES = 32
_ALWAYS_FITS = 1 << 20  # smaller blobs skip the memory check
#: Overrides the memory a net may use (bytes, or with a K/M/G/T suffix: ``512M``); for tests and shared machines.
MEMORY_LIMIT_ENV = "CAFFEISH_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def physical_memory():
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def memory_limit():
    """(bytes, where the figure comes from): ``CAFFEISH_MEMORY_LIMIT``, else the GPU's or the machine's memory."""
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if raw:
        number, unit = raw.rstrip("KMGTkmgtBb"), raw[len(raw.rstrip("KMGTkmgtBb")):].upper().rstrip("B")
        try:
            return int(float(number) * _UNITS[unit[:1]]), f"{MEMORY_LIMIT_ENV}={raw}"
        except (KeyError, ValueError):
            raise CaffeishError(f"{MEMORY_LIMIT_ENV}={raw!r} is not a size in bytes (e.g. 8000000000 or 8G)") from None
    if backend.mode() == backend.GPU:
        try:
            return int(backend.cupy.cuda.Device().mem_info[1]), "the GPU's memory"
        except Exception:  # pragma: no cover - no device query: fall back to the host's memory
            pass
    return physical_memory(), "the machine's memory"


def format_bytes(n):
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class _Buffer:
    """A flat array; replaced, never resized, so views of it stay valid."""
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


class Blob:
    """Blob: the N-D array pair (data, diff) that layers read and write.

    Storage follows Caffe's Blob: a flat buffer with a capacity; ``reshape`` to a
    shape that fits keeps the buffer (and any sharing), a larger one allocates a new
    buffer.  ``share_data``/``share_diff`` point this blob at another's buffer, which
    is how weight sharing and in-place views work.  ``diff`` is allocated on first
    use, so inference never pays for it.
    """

    def __init__(self, shape=(), dtype=numpy.float32, name=""):
        self.name = name
        self.dtype = numpy.dtype(dtype)
        self._shape = ()
        self._count = 1
        self._data_buf = None
        self._diff_buf = None
        self._data_view = None
        self._diff_view = None
        self.reshape(shape)

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = shape[0]
        shape = tuple(int(s) for s in shape)
        if len(shape) > MAX_AXES:
            raise CaffeishError(f"blob '{self.name}': {len(shape)} axes is more than the {MAX_AXES} allowed")
        if any(s < 0 for s in shape):
            raise CaffeishError(f"blob '{self.name}': negative dimension in shape {shape}")
        count = math.prod(shape)
        if count > self._count and count * self.dtype.itemsize > _ALWAYS_FITS:
            self._check_fits(shape, count)
        self._shape, self._count = shape, count
        if self._data_buf is not None and self._data_buf.array.size < count:
            self._data_buf = None
        if self._diff_buf is not None and self._diff_buf.array.size < count:
            self._diff_buf = None
        self._data_view = self._diff_view = None

    def _check_fits(self, shape, count):
        """Refuse a shape whose data alone would not fit in memory, before anything is allocated."""
        limit, source = memory_limit()
        need = count * self.dtype.itemsize
        if limit is not None and need > limit:
            raise CaffeishError(f"blob '{self.name}' of shape {shape} would need {format_bytes(need)} ({count} "
                                f"{self.dtype.name} values), more than {source} ({format_bytes(limit)}); check the "
                                "sizes that make this shape (num_output, dim, batch_size, kernel and stride)")

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._count

    @property
    def num_axes(self):
        return len(self._shape)

    def shape_at(self, axis):
        return self._shape[self.canonical_axis(axis)]

    def canonical_axis(self, axis):
        n = len(self._shape)
        if not -n <= axis < n:
            raise CaffeishError(f"axis {axis} is out of range for blob '{self.name}' of shape {self._shape}")
        return axis + n if axis < 0 else axis

    def count_range(self, start, end=None):
        end = len(self._shape) if end is None else end
        return int(numpy.prod(self._shape[start:end], dtype=numpy.int64))

    # Caffe's legacy 4-D accessors.
    def _legacy(self, i):
        if len(self._shape) > 4:
            raise CaffeishError(f"blob '{self.name}' has {len(self._shape)} axes; legacy accessors need at most 4")
        return self._shape[i] if i < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    # -- storage -------------------------------------------------------------
    def _alloc(self):
        return _Buffer(backend.xp().zeros(max(self._count, 1), dtype=self.dtype))

    def _view(self, buf):
        return buf.array[: self._count].reshape(self._shape)

    @property
    def data(self):
        if self._data_view is None:
            if self._data_buf is None:
                self._data_buf = self._alloc()
            self._data_view = self._view(self._data_buf)
        return self._data_view

    @data.setter
    def data(self, value):
        self._assign(self.data, value, "data")

    @property
    def diff(self):
        if self._diff_view is None:
            if self._diff_buf is None:
                self._diff_buf = self._alloc()
            self._diff_view = self._view(self._diff_buf)
        return self._diff_view

    @diff.setter
    def diff(self, value):
        self._assign(self.diff, value, "diff")

    def _assign(self, target, value, what):
        value_shape = getattr(value, "shape", None)
        if value_shape is not None and tuple(value_shape) != self._shape and numpy.size(value) != self._count:
            raise CaffeishError(
                f"cannot set {what} of blob '{self.name}' (shape {self._shape}) "
                f"from an array of shape {tuple(value_shape)}")
        xp = backend.get_array_module(target)
        target[...] = xp.asarray(value).reshape(self._shape) if value_shape is not None else value

    @property
    def has_diff(self):
        return self._diff_buf is not None

    def share_data(self, other):
        """Use ``other``'s data buffer (counts must match, as in Caffe)."""
        if other.count != self._count:
            raise CaffeishError(f"cannot share data of blob '{other.name}' ({other.shape}) "
                                f"with '{self.name}' ({self.shape})")
        _ = other.data  # allocates the buffer if it has none yet
        self._data_buf, self._data_view = other._data_buf, None

    def share_diff(self, other):
        if other.count != self._count:
            raise CaffeishError(f"cannot share diff of blob '{other.name}' ({other.shape}) "
                                f"with '{self.name}' ({self.shape})")
        _ = other.diff
        self._diff_buf, self._diff_view = other._diff_buf, None

    def shares_data_with(self, other):
        return self._data_buf is not None and self._data_buf is other._data_buf

    def to_device(self):
        """Move data and diff to the current mode's device (no-op if already there)."""
        for attr in ("_data_buf", "_diff_buf"):
            buf = getattr(self, attr)
            if buf is not None:
                buf.array = backend.to_current(buf.array)
        self._data_view = self._diff_view = None

    # -- reductions used by solvers and debug_info -----------------------------
    def asum_data(self):
        return float(abs(self.data).sum())

    def asum_diff(self):
        return float(abs(self.diff).sum())

    def sumsq_data(self):
        d = self.data
        return float((d * d).sum())

    def sumsq_diff(self):
        d = self.diff
        return float((d * d).sum())

    def __repr__(self):
        return f"Blob({self.name!r}, shape={self._shape}, dtype={self.dtype.name})"

    # -- BlobProto round trip ----------------------------------------------------
    def to_proto(self, proto=None, write_diff=False):
        """Fill (or make) a ``caffe_pb2.BlobProto``; float64 blobs write double_data."""
        from .proto import caffe_pb2
        proto = caffe_pb2.BlobProto() if proto is None else proto
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        double = self.dtype == numpy.float64
        data = backend.to_cpu(self.data).ravel()
        (proto.double_data if double else proto.data).extend(data.tolist())
        if write_diff:
            diff = backend.to_cpu(self.diff).ravel()
            (proto.double_diff if double else proto.diff).extend(diff.tolist())
        return proto

    def from_proto(self, proto, reshape=True):
        """Load data (and diff, if present) from a BlobProto, legacy 4-D form included."""
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif tuple(shape) != self._shape and not _legacy_equal(shape, self._shape):
            raise CaffeishError(f"blob '{self.name}': shape mismatch, expected {self._shape} "
                                f"but the saved blob is {tuple(shape)}")
        values = proto_values(proto, "data", self._count, self.name)
        if values is not None:
            self.data[...] = backend.to_current(values.reshape(self._shape), self.dtype)
        diff = proto_values(proto, "diff", self._count, self.name)
        if diff is not None:
            self.diff[...] = backend.to_current(diff.reshape(self._shape), self.dtype)
        return self

    @classmethod
    def from_proto_new(cls, proto, dtype=numpy.float32, name=""):
        blob = cls(proto_shape(proto), dtype=dtype, name=name)
        return blob.from_proto(proto)


def proto_shape(proto):
    """The shape a BlobProto describes: ``shape.dim``, or legacy num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.data) or len(proto.double_data),)


def proto_values(proto, kind, count, name=""):
    """The float or double values stored under ``kind`` ('data' or 'diff'), or None."""
    single, double = getattr(proto, kind), getattr(proto, "double_" + kind)
    if len(double):
        values = numpy.asarray(double, dtype=numpy.float64)
    elif len(single):
        values = numpy.asarray(single, dtype=numpy.float32)
    else:
        return None
    if values.size != count:
        raise CaffeishError(f"blob '{name}': the saved {kind} has {values.size} values, the shape needs {count}")
    return values


def _legacy_equal(a, b):
    """Caffe treats a 4-D legacy shape as equal to the same shape with leading 1s."""
    def squeeze(s):
        s = tuple(s)
        while len(s) > 1 and s[0] == 1:
            s = s[1:]
        return s
    return squeeze(a) == squeeze(b)

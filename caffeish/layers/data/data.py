"""The Data layer (Caffe's DataLayer): batches of Datums from a database (an LMDB, or any other registered
backend's), read ahead on a thread (``DatumReader``).
"""
import numpy

from ... import io as cio
from ...data.db import backend_name, open_db
from ...data.transform import DataTransformer, effective_transform_param
from ...errors import CaffeishError
from ...layer import register_layer
from .prefetch import SKIP_STREAM, PrefetchingDataLayer, Reader, stream_rng


def _key_text(key):
    return bytes(key)[:64].decode("utf-8", "replace")  # (a damaged database can hold huge garbage keys)


class DatumReader(Reader):
    """Datums of a database in key order, wrapping around; position = (epoch, record index)."""

    def __init__(self, source, backend, batch_size, transformer, labels, dtype):
        self.source, self.backend = source, backend
        self.batch_size = batch_size
        self.transformer = transformer
        self.labels = labels
        self.dtype = numpy.dtype(dtype)
        self.db = None
        self.cursor = None
        self._open_db()
        self.size = len(self.db)
        if self.size == 0:
            raise CaffeishError("the database is empty (no records)", path=source)
        self.epoch = self.pos = 0

    def _open_db(self):
        if self.db is None:
            self.db = open_db(self.source, self.backend, "r")

    def datum_at(self, index):
        """(key, Datum) of record ``index``, read with a cursor of its own (setup only)."""
        self._open_db()
        cur = self.db.cursor()
        try:
            for _ in range(index):
                cur.next()
            return cur.key(), cio.parse_datum(cur.value(), f"record {_key_text(cur.key())!r}")
        finally:
            if hasattr(cur, "close"):
                cur.close()

    # -- Reader ---------------------------------------------------------------------------------------
    def open(self):
        self._open_db()
        if self.cursor is None:
            self.cursor = self.db.cursor()
            self._cursor_at = 0

    def release(self):
        if self.cursor is not None:
            if hasattr(self.cursor, "close"):
                self.cursor.close()
            self.cursor = None

    def close(self):
        self.release()
        if self.db is not None:
            self.db.close()
            self.db = None

    def position(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def check_position(self, state):
        try:
            epoch, pos = int(state["epoch"]), int(state["pos"])
        except (KeyError, TypeError, ValueError):
            raise CaffeishError("the saved state has no valid 'epoch' and 'pos'") from None
        if not 0 <= pos < self.size:
            raise CaffeishError(f"the saved state's position {pos} is outside the database of {self.size} records")
        return {"epoch": epoch, "pos": pos}

    def seek(self, position):
        self.epoch, self.pos = int(position["epoch"]), int(position["pos"])
        self.cursor.seek_first()
        for _ in range(self.pos):
            self.cursor.next()

    def _advance(self):
        self.pos += 1
        if not self.cursor.next():
            self.cursor.seek_first()
            self.pos = 0
            self.epoch += 1

    def skip(self, n):
        full, n = divmod(int(n), self.size)
        self.epoch += full  # a whole pass comes back to the same record
        for _ in range(n):
            self._advance()

    def load_batch(self, rng):
        images, labels, keys = [], [], []
        for _ in range(self.batch_size):
            if not self.cursor.valid():  # a database that shrank under us
                self.cursor.seek_first()
                self.pos, self.epoch = 0, self.epoch + 1
            key = _key_text(self.cursor.key())
            datum = cio.parse_datum(self.cursor.value(), f"{self.source}: record {key!r}")
            try:
                image = self.transformer.decode(datum)
            except CaffeishError as e:
                raise CaffeishError(f"record {key!r}: {e}") from None
            images.append(image)
            labels.append(datum.label)
            keys.append(key)
            self._advance()
            self.stride_skip()
        first = images[0].shape
        for key, image in zip(keys, images):
            if image.shape != first and not (self.transformer.crop and image.shape[0] == first[0]):
                raise CaffeishError(f"record {key!r} holds an image of shape {image.shape} (C, H, W), but the "
                                    f"batch's first record {keys[0]!r} holds {first}; the Datums of a batch "
                                    "must have one size")
        try:
            data = self.transformer.transform_list(images, rng)
        except CaffeishError as e:
            bad = next((k for k, im in zip(keys, images) if im.shape != first), keys[0])
            raise CaffeishError(f"record {bad!r}: {e}") from None
        if not self.labels:
            return (data,)
        return data, numpy.asarray(labels, dtype=self.dtype)


@register_layer("Data")
class DataLayer(PrefetchingDataLayer):
    """Data: batches of Datums from a database (an LMDB, as Caffe's DataLayer reads, or any other registered
    backend's), read ahead on a thread.

    ``data_param``: ``source`` (the database), ``batch_size``, ``backend`` (a ``DataParameter.DB`` value of a
    registered backend, ``caffeish.data.db``: LMDB; LEVELDB is refused with how to convert it; left unset,
    the registered backends recognise the database: an LMDB or HDF5 directory), ``rand_skip`` (skip a
    random number of records in ``[0, rand_skip)`` at the start), ``prefetch`` (batches read ahead,
    default 4; 0 reads on the main thread).  Tops: ``data`` (N, C, H', W') and optionally ``label`` (N,).
    In data-parallel training each rank reads every N-th record (``set_shard``; see
    ``caffeish.layers.data.prefetch``).

    Records are raw Datums (uint8 ``data`` or ``float_data``) or encoded ones (an image file, decoded
    to BGR), as Caffe's convert_imageset writes them.  Reading wraps around at the end of the database.
    The top shape comes from the first Datum and the transform; each batch takes the shape of its own
    first Datum, and the Datums of one batch must share it (with ``crop_size`` only their channels must
    match, as in Caffe).  The deprecated ``data_param`` ``scale``/``mean_file``/``crop_size``/``mirror``
    are honoured when there is no ``transform_param``.
    """
    min_top = 1
    max_top = 2

    def make_reader(self, seed, top):
        p = self.param.data_param
        if not p.source:
            raise CaffeishError("data_param.source is not set (the database to read)")
        if p.batch_size <= 0:
            raise CaffeishError(f"data_param.batch_size must be positive, not {p.batch_size}")
        # unset: Caffe's default is LEVELDB, which is refused; the registered backends recognise what is there
        backend = backend_name(p.backend if p.HasField("backend") else "auto", p.source)
        transform = effective_transform_param(self.param, p, "data_param")
        transformer = DataTransformer(transform, self.phase, self.dtype)
        reader = DatumReader(p.source, backend, int(p.batch_size), transformer, len(top) == 2, self.dtype)
        if p.rand_skip:
            reader.pos = int(stream_rng(seed, SKIP_STREAM).integers(p.rand_skip)) % reader.size
        key, datum = reader.datum_at(reader.pos)
        try:
            shape = transformer.output_shape(transformer.decode(datum).shape)
        except CaffeishError as e:
            raise CaffeishError(f"record {_key_text(key)!r} of {p.source}: {e}") from None
        shapes = [(p.batch_size,) + shape, (p.batch_size,)]
        return reader, shapes

"""Dataset converters: Caffe's convert_imageset, convert_mnist_data, convert_cifar_data, plus npz and LevelDB;
each turns its input into records and builds a database of a registered backend from them, atomically
(``write_records``).
"""
import dataclasses
import gzip
import logging
import os
import zipfile
import zlib

import numpy

from .. import io as cio
from ..errors import CaffeishError
from .db import COMMIT_EVERY, Record, atomic_db_path, check_target, names_text, writable_backends, writing_backend
from .leveldb_backend import LevelDB
from .lmdb_backend import LMDB

log = logging.getLogger("caffeish")

MNIST_IMAGE_MAGIC = 2051
MNIST_LABEL_MAGIC = 2049
CIFAR_SIDE = 32
CIFAR_IMAGE_BYTES = 3 * CIFAR_SIDE * CIFAR_SIDE


@dataclasses.dataclass
class Summary:
    path: str
    backend: str
    written: int = 0
    skipped: int = 0
    list_path: str = None


def write_records(db_path, records, **options):
    """Build the database at ``db_path`` from ``records`` (an iterable of Record), atomically.

    Returns a Summary.  ``records`` may raise CaffeishError midway, or the disk fill up: nothing then
    appears at ``db_path`` (and an older database there is kept).  Options: see ``_write_records``.

    Each converter turns its input into records (``Record``: key, label, and either a C x H x W
    uint8/float array or an encoded image) and hands them to ``write_records``, which
    builds the database at a temporary path (``atomic_db_path``) with the writer of the
    registered backend named ``backend`` (``caffeish.data.db``), logs "Processed N files."
    as Caffe does, and renames it into place at the end.

    With ``backend="lmdb"`` every record becomes a serialized Datum (uint8 pixels in
    ``data``, anything else in ``float_data``).  With ``backend="hdf5"`` the arrays go
    to ``data``/``label`` datasets of ``.h5`` files plus a ``list.txt`` for an HDF5Data
    layer's ``source``.  What a backend cannot hold (encoded images, images of several
    sizes, non-integer labels) is refused with a message saying so.
    """
    try:
        return _write_records(db_path, records, **options)
    except OSError as e:  # a full disk, a file-size limit, a read-only directory
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise CaffeishError(f"cannot write the database: {reason}; nothing was written there (an older database "
                            "at this path is kept)", path=os.path.abspath(os.fspath(db_path))) from None


def _write_records(db_path, records, *, backend="lmdb", overwrite=False, rows_per_file=None, map_size=None,
                   log_every=COMMIT_EVERY, noun="files", batch_size=COMMIT_EVERY):
    kind = writing_backend(backend, db_path)
    if rows_per_file is not None and "rows_per_file" not in kind.write_options:
        takers = [b for b in writable_backends() if "rows_per_file" in b.write_options]
        raise CaffeishError(f"--rows-per-file applies to --backend {names_text(takers)} only")
    options = {"rows_per_file": rows_per_file, "map_size": map_size, "batch_size": batch_size}
    options = {k: v for k, v in options.items() if k in kind.write_options}
    final = os.path.abspath(os.fspath(db_path))
    summary = Summary(path=final, backend=kind.name)
    log_every = max(1, int(log_every))
    with atomic_db_path(final, overwrite) as tmp:
        writer = kind.open_writer(tmp, final=final, **options)
        try:
            for record in records:
                writer.put_record(record)
                summary.written += 1
                if summary.written % log_every == 0:
                    log.info("Processed %d %s.", summary.written, noun)
            summary.list_path = writer.close()
        except BaseException:
            writer.abort()
            raise
        if summary.written == 0:
            raise CaffeishError("no records to write: the database would be empty", path=final)
        if summary.written % log_every != 0:
            log.info("Processed %d %s.", summary.written, noun)
    return summary


# -- convert_imageset ------------------------------------------------------------------------------------------
def read_image_list(list_path):
    """``path label`` lines (split at the last space, so paths may hold spaces) -> [(path, label)]."""
    list_path = os.fspath(list_path)
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise CaffeishError("the image list does not exist", path=list_path) from None
    except OSError as e:
        raise CaffeishError(f"cannot read the image list: {e.strerror or e}", path=list_path) from None
    except UnicodeDecodeError:
        raise CaffeishError("the image list is not UTF-8 text", path=list_path) from None
    entries = []
    for number, line in enumerate(lines, 1):
        text = line.rstrip()
        if not text.strip():
            continue
        cut = max(text.rfind(" "), text.rfind("\t"))
        path, label = text[:cut].rstrip(), text[cut + 1:]
        if cut <= 0 or not path:
            raise CaffeishError(f"{list_path}:{number}: expected 'path label' (label after the last space), "
                                f"got {line!r}")
        try:
            entries.append((path, int(label)))
        except ValueError:
            raise CaffeishError(f"{list_path}:{number}: the label {label!r} is not an integer "
                                f"(each line is 'path label')") from None
    if not entries:
        raise CaffeishError("the image list names no images", path=list_path)
    return entries


def _encode_format(encode_type, filename):
    if encode_type:
        fmt = encode_type.lower().lstrip(".")
    else:  # Caffe: with -encoded and no -encode_type, keep each file's own format
        fmt = os.path.splitext(filename)[1].lower().lstrip(".")
    return fmt if fmt in cio._FORMATS else "png"


def _same_format(filename, fmt):
    ext = os.path.splitext(filename)[1].lower().lstrip(".")
    return cio._FORMATS.get(ext) == cio._FORMATS[fmt]


def _check_imageset_options(resize_height, resize_width, encode_type):
    if encode_type and encode_type.lower().lstrip(".") not in cio._FORMATS:
        raise CaffeishError(f"unknown --encode-type '{encode_type}' (known: png, jpg)")
    if resize_height < 0 or resize_width < 0:
        raise CaffeishError("--resize-height and --resize-width must not be negative")
    if (resize_height > 0) != (resize_width > 0):
        raise CaffeishError("give both --resize-height and --resize-width (or neither)")


def imageset_records(root, entries, *, resize_height=0, resize_width=0, gray=False, encoded=False,
                     encode_type=None, check_size=False, same_size=None, stats=None):
    """Records for convert_imageset; undecodable files are skipped with a warning (counted in ``stats``).
    ``same_size``: why the images must share one size even without ``check_size`` (the backend's), or None."""
    from PIL import Image

    _check_imageset_options(resize_height, resize_width, encode_type)
    resizing = resize_height > 0 and resize_width > 0
    color = not gray
    first_shape, first_file = None, None
    for index, (path, label) in enumerate(entries):
        full = os.path.join(root, path) if root else path
        try:
            array = cio.read_image_chw_bgr(full, color=color, height=resize_height, width=resize_width)
        except CaffeishError as e:
            log.warning("Could not read or decode %s; skipping it (%s)", full, e.reason)
            if stats is not None:
                stats.skipped += 1
            continue
        if first_shape is None:
            first_shape, first_file = array.shape, full
        elif array.shape != first_shape and (check_size or same_size):
            why = "--check-size is set" if check_size else same_size
            raise CaffeishError(f"{full}: image is {array.shape[1]}x{array.shape[2]} (HxW, {array.shape[0]} "
                                f"channels) but {first_file} is {first_shape[1]}x{first_shape[2]} "
                                f"({first_shape[0]} channels); {why}: resize with --resize-height and "
                                f"--resize-width")
        record = Record(key="%08d_%s" % (index, path), label=label, array=array, raw_flag=True)
        if encoded:
            fmt = _encode_format(encode_type, path)
            native = None
            if not resizing and _same_format(path, fmt):
                with Image.open(full) as img:  # keep the file's bytes when they already say what we want
                    native_color = img.mode not in ("L", "1", "LA", "I", "F", "I;16", "I;16B", "I;16L")
                if native_color == color:
                    with open(full, "rb") as f:
                        native = f.read()
            record.encoded = native if native is not None else cio.encode_image(array, fmt)
        yield record


def convert_imageset(root, list_file, db_path, *, resize_height=0, resize_width=0, gray=False, shuffle=False,
                     seed=None, backend="lmdb", encoded=False, encode_type=None, check_size=False,
                     overwrite=False, rows_per_file=None, log_every=COMMIT_EVERY, map_size=None):
    kind = writing_backend(backend, db_path)
    check_target(os.path.abspath(db_path), overwrite)
    if encoded and not kind.encoded_images:
        raise CaffeishError(f"{kind.title} cannot hold encoded images; drop --encoded for --backend {kind.name}")
    _check_imageset_options(resize_height, resize_width, encode_type)
    if root and not os.path.isdir(root):
        raise CaffeishError("the image root folder does not exist (paths in the list are relative to it)",
                            path=root)
    entries = read_image_list(list_file)
    if shuffle:
        log.info("Shuffling data")
        order = numpy.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    log.info("A total of %d images.", len(entries))
    stats = Summary(path=db_path, backend=kind.name)
    records = imageset_records(root, entries, resize_height=resize_height, resize_width=resize_width, gray=gray,
                               encoded=encoded, encode_type=encode_type, check_size=check_size,
                               same_size=f"{kind.title} data needs one image size" if kind.one_shape else None,
                               stats=stats)
    summary = write_records(db_path, records, backend=kind.name, overwrite=overwrite, rows_per_file=rows_per_file,
                            log_every=log_every, noun="files", map_size=map_size)
    summary.skipped = stats.skipped
    log.info("Wrote %d images to %s, skipped %d.", summary.written, summary.path, summary.skipped)
    return summary


# -- MNIST -----------------------------------------------------------------------------------------------------
def _read_maybe_gzip(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CaffeishError("no such file", path=path) from None
    except OSError as e:
        raise CaffeishError(f"cannot read: {e.strerror or e}", path=path) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise CaffeishError(f"is a damaged gzip file ({e})", path=path) from None
    return data


def read_idx(path, magic, what):
    """An MNIST idx file (optionally gzipped) as (count, dims, payload array)."""
    data = _read_maybe_gzip(path)
    ndim = 3 if magic == MNIST_IMAGE_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(data) >= 4:
        found = int(numpy.frombuffer(data[:4], dtype=">u4")[0])
        if found != magic:
            raise CaffeishError(f"is not an MNIST {what} file: magic number {found}, expected {magic}",
                                path=path)
    if len(data) < header:
        raise CaffeishError(f"is too short to be an MNIST {what} file ({len(data)} bytes)", path=path)
    fields = numpy.frombuffer(data[:header], dtype=">u4").astype(numpy.int64)
    dims = tuple(int(d) for d in fields[1:])
    size = int(numpy.prod(dims, dtype=numpy.int64))
    if len(data) - header < size:
        raise CaffeishError(f"is truncated: the header promises {size} bytes of {what}, the file holds "
                            f"{len(data) - header}", path=path)
    return dims, numpy.frombuffer(data, dtype=numpy.uint8, count=size, offset=header).reshape(dims)


def mnist_records(images_path, labels_path):
    (n, rows, cols), images = read_idx(images_path, MNIST_IMAGE_MAGIC, "image")
    (n_labels,), labels = read_idx(labels_path, MNIST_LABEL_MAGIC, "label")
    if n != n_labels:
        raise CaffeishError(f"{images_path} holds {n} images but {labels_path} holds {n_labels} labels")
    log.info("A total of %d items.", n)
    log.info("Rows: %d Cols: %d", rows, cols)
    return [Record(key="%08d" % i, label=int(labels[i]), array=images[i][numpy.newaxis]) for i in range(n)]


def convert_mnist(images_path, labels_path, db_path, *, backend="lmdb", overwrite=False, rows_per_file=None,
                  log_every=COMMIT_EVERY, map_size=None):
    writing_backend(backend, db_path)
    check_target(os.path.abspath(db_path), overwrite)
    records = mnist_records(images_path, labels_path)
    return write_records(db_path, records, backend=backend, overwrite=overwrite, rows_per_file=rows_per_file,
                         log_every=log_every, noun="items", map_size=map_size)


# -- CIFAR -----------------------------------------------------------------------------------------------------
def cifar_files(directory, split, cifar100=False):
    if split not in ("train", "test"):
        raise CaffeishError(f"--split must be train or test, not '{split}'")
    if cifar100:
        names = ["train.bin" if split == "train" else "test.bin"]
    else:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    if not os.path.isdir(directory):
        raise CaffeishError("is not a directory of CIFAR binary batches", path=directory)
    paths = [os.path.join(directory, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise CaffeishError(f"missing CIFAR-{'100' if cifar100 else '10'} batch file(s): {', '.join(missing)} "
                            f"(the binary version, e.g. cifar-{'100' if cifar100 else '10'}-binary.tar.gz)")
    return paths


def cifar_records(directory, split="train", cifar100=False, coarse=False, bgr=False):
    """Records from CIFAR binary batches.  Pixels keep the file's RGB plane order, as Caffe's
    convert_cifar_data does (models trained by Caffe expect it); ``bgr`` flips them to BGR."""
    label_bytes = 2 if cifar100 else 1
    record_bytes = label_bytes + CIFAR_IMAGE_BYTES
    records = []
    for path in cifar_files(directory, split, cifar100):
        raw = _read_maybe_gzip(path)
        if len(raw) == 0 or len(raw) % record_bytes:
            raise CaffeishError(f"is not a CIFAR-{'100' if cifar100 else '10'} binary batch: {len(raw)} bytes is "
                                f"not a whole number of {record_bytes}-byte records", path=path)
        table = numpy.frombuffer(raw, dtype=numpy.uint8).reshape(-1, record_bytes)
        labels = table[:, 0] if (cifar100 and coarse) else table[:, label_bytes - 1]
        images = table[:, label_bytes:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
        if bgr:
            images = images[:, ::-1]
        if not cifar100 and labels.max(initial=0) > 9:
            raise CaffeishError(f"holds label {int(labels.max())}; CIFAR-10 labels are 0-9 (is this a CIFAR-100 "
                                "file? use --cifar100)", path=path)
        start = len(records)
        records.extend(Record(key="%05d" % (start + i), label=int(labels[i]),
                              array=numpy.ascontiguousarray(images[i])) for i in range(len(table)))
    log.info("A total of %d items.", len(records))
    return records


def convert_cifar(directory, db_path, *, split="train", cifar100=False, coarse=False, bgr=False, backend="lmdb",
                  overwrite=False, rows_per_file=None, log_every=COMMIT_EVERY, map_size=None):
    writing_backend(backend, db_path)
    check_target(os.path.abspath(db_path), overwrite)
    if coarse and not cifar100:
        raise CaffeishError("--coarse applies to --cifar100 only")
    records = cifar_records(directory, split, cifar100, coarse, bgr)
    return write_records(db_path, records, backend=backend, overwrite=overwrite, rows_per_file=rows_per_file,
                         log_every=log_every, noun="items", map_size=map_size)


# -- npz -------------------------------------------------------------------------------------------------------
def npz_records(path, backend="lmdb"):
    try:
        arrays = numpy.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CaffeishError("no such file", path=path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CaffeishError(f"is not a readable .npz file ({e})", path=path) from None
    if not hasattr(arrays, "files"):
        raise CaffeishError("holds a single array; an .npz with arrays 'data' and 'label' is needed", path=path)
    with arrays:
        missing = [k for k in ("data", "label") if k not in arrays.files]
        if missing:
            raise CaffeishError(f"has no array {' or '.join(repr(m) for m in missing)} (it holds: "
                                f"{', '.join(arrays.files) or 'nothing'})", path=path)
        try:
            data, label = arrays["data"], arrays["label"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise CaffeishError(f"is a damaged .npz file: its arrays cannot be read ({e})", path=path) from None
    if data.ndim == 3:
        data = data[:, numpy.newaxis]
    elif data.ndim == 2:
        data = data[:, :, numpy.newaxis, numpy.newaxis]
    if data.ndim != 4:
        raise CaffeishError(f"'data' has shape {data.shape}; expected N x C x H x W (or N x H x W, N x D)",
                            path=path)
    if data.dtype.kind not in "uifb":
        raise CaffeishError(f"'data' has dtype {data.dtype}; numbers are needed", path=path)
    label = label.reshape(len(label), -1) if label.ndim else label
    if label.ndim != 2 or label.shape[1] != 1 or label.shape[0] != data.shape[0]:
        raise CaffeishError(f"'label' has shape {label.shape}; expected one label per image ({data.shape[0]})",
                            path=path)
    label = label[:, 0]
    if not writing_backend(backend).float_labels and not numpy.all(numpy.mod(label, 1) == 0):
        floats = names_text(b for b in writable_backends() if b.float_labels)
        raise CaffeishError("'label' holds non-integer values; a Datum's label is an integer "
                            f"(use --backend {floats} for float labels)", path=path)
    if data.dtype != numpy.uint8:
        data = data.astype(numpy.float32)
    log.info("A total of %d items of shape %s.", data.shape[0], data.shape[1:])
    return [Record(key="%08d" % i, label=label[i].item(), array=data[i]) for i in range(data.shape[0])]


def convert_npz(path, db_path, *, backend="lmdb", overwrite=False, rows_per_file=None, log_every=COMMIT_EVERY,
                map_size=None):
    writing_backend(backend, db_path)
    check_target(os.path.abspath(db_path), overwrite)
    records = npz_records(path, backend)
    return write_records(db_path, records, backend=backend, overwrite=overwrite, rows_per_file=rows_per_file,
                         log_every=log_every, noun="items", map_size=map_size)


# -- LevelDB ---------------------------------------------------------------------------------------------------
def convert_leveldb(src, db_path, *, overwrite=False, log_every=COMMIT_EVERY, map_size=None):
    """Copy the LevelDB ``src`` (Caffe's: keys and serialized Datums) into a new LMDB at ``db_path``.

    Every record keeps its key and value byte for byte, in key order (as Caffe's Data layer reads both).
    The LMDB is built at a temporary path and renamed into place when complete.  The LevelDB is read through
    the read-only ``LevelDB`` of ``caffeish.data.leveldb_backend``, which needs plyvel, the ``[leveldb]`` extra.
    """
    final = os.path.abspath(os.fspath(db_path))
    if os.path.abspath(os.fspath(src)) == final:
        raise CaffeishError("the LMDB to write is the LevelDB to read; give another destination", path=final)
    check_target(final, overwrite)
    summary = Summary(path=final, backend="lmdb")
    log_every = max(1, int(log_every))
    with LevelDB(src) as source:  # refuses a missing, empty or non-Datum database, and a missing plyvel
        try:
            with atomic_db_path(final, overwrite) as tmp:
                db = LMDB(tmp, "w", map_size=map_size, name=final)
                try:
                    txn = db.transaction()
                    for key, value in source:
                        txn.put(key, value)
                        summary.written += 1
                        if summary.written % log_every == 0:
                            log.info("Processed %d records.", summary.written)
                    txn.commit()
                finally:
                    db.close()
        except OSError as e:  # a full disk, a file-size limit, a read-only directory
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise CaffeishError(f"cannot write the database: {reason}; nothing was written there (an older "
                                "database at this path is kept)", path=final) from None
    if summary.written % log_every:
        log.info("Processed %d records.", summary.written)
    return summary

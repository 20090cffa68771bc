"""``caffeish extract-features``: Caffe's ``tools/extract_features`` -- blobs of a trained net into databases, each
named blob one record per image in its own LMDB or HDF5 database (``extract_features``), Caffe's positional
arguments accepted as well (``parse_caffe_tail``).
"""
import contextlib
import logging
import os

import click
import numpy

from .. import backend as be
from ..data.db import COMMIT_EVERY, Record, atomic_db_path, check_target, names_text, writable_backends, \
    writing_backend
from ..errors import CaffeishError
from ..net import TEST, Net
from ..weights import load_weights
from . import register_command
from .common import gpu_option, select_device

log = logging.getLogger("caffeish")


def _names(text, what):
    names = text.split(",")
    if any(not n.strip() for n in names):
        raise CaffeishError(f"the {what} list '{text}' has an empty name (names are separated by single commas)")
    return [n.strip() for n in names]


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise CaffeishError(f"NUM_BATCHES must be a whole number of at least 1 (the forward passes to run), "
                            f"not '{text}'")
    return value


def _backend(name):
    """The registered backend a database type names (one that can be written)."""
    return writing_backend(name).name


def parse_caffe_tail(args, backend_option, gpu_option_value):
    """Caffe's trailing positionals ``[db_type] [CPU|GPU] [DEVICE_ID]`` merged with ``--backend``/``--gpu``;
    returns (backend name, gpu spec or None).

    ::

        caffeish extract-features WEIGHTS MODEL BLOB[,BLOB...] DB[,DB...] NUM_BATCHES [lmdb|hdf5] [CPU|GPU] [DEVICE_ID]

    is Caffe's ``extract_features pretrained_net_param feature_extraction_proto_file blob1[,blob2,...]
    db1[,db2,...] num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]`` (``--backend`` and ``--gpu`` work too).
    """
    rest = list(args)
    db_type = rest.pop(0) if rest and rest[0].upper() not in ("CPU", "GPU") else None
    mode = rest.pop(0).upper() if rest else None
    if mode not in (None, "CPU", "GPU"):
        raise CaffeishError(f"after the database type comes CPU or GPU [DEVICE_ID], not '{mode}'")
    device = rest.pop(0) if rest else None
    if rest:
        raise CaffeishError(f"too many arguments: {' '.join(args)} (expected [DB_TYPE] [CPU|GPU] [DEVICE_ID])")
    if device is not None and (mode != "GPU" or not device.isdigit()):
        raise CaffeishError(f"DEVICE_ID follows GPU and is a GPU number (0, 1, ...), not '{device}'")
    if db_type is not None and backend_option is not None and _backend(db_type) != _backend(backend_option):
        raise CaffeishError(f"the database type is given twice and differs: '{db_type}' and --backend "
                            f"{backend_option}")
    name = _backend(db_type or backend_option or "lmdb")
    gpu = gpu_option_value
    if mode == "GPU":
        spec = device or "0"
        if gpu is not None and gpu != spec:
            raise CaffeishError(f"GPU {spec} and --gpu {gpu} disagree; give one of them")
        gpu = spec
    elif mode == "CPU" and gpu is not None:
        raise CaffeishError(f"CPU and --gpu {gpu} disagree; give one of them")
    return name, gpu


def datum_shape(blob):
    """(channels, height, width) of one image's slice, as Caffe's Blob::channels()/height()/width() give them
    (a blob of more than 4 axes, which Caffe refuses there: all values as channels)."""
    if blob.num_axes > 4:
        return blob.count // max(blob.shape[0], 1), 1, 1
    return blob.channels, blob.height, blob.width


class _FeatureDB:
    """One blob's database under construction at ``tmp``, renamed onto ``final`` by its atomic_db_path."""

    def __init__(self, blob_name, final, tmp, backend):
        self.blob_name, self.final = blob_name, final
        self.kind = writing_backend(backend)
        self.backend = self.kind.name
        self.count = 0
        self.shape = None
        self.source = None  # what the finished database's writer says to read (HDF5: its list.txt)
        self.db = self.kind.open_writer(tmp, final=final)

    def put(self, blob):
        shape = datum_shape(blob)
        num = blob.shape[0] if blob.num_axes else 1
        # a copy: the next forward pass overwrites the blob, and the HDF5 writer keeps rows until it flushes
        rows = numpy.array(be.to_cpu(blob.data), dtype=numpy.float32).reshape(num, blob.count // max(num, 1))
        if self.shape is None:
            self.shape = shape
        for row in rows:
            self.db.put_record(Record(key=b"%010d" % self.count, label=None, array=row.reshape(shape)))
            self.count += 1
            if self.count % COMMIT_EVERY == 0:
                log.info("Extracted features of %d query images for feature blob %s", self.count, self.blob_name)

    def close(self):
        self.source = self.db.close()

    def abort(self):
        """Close without finishing (the temporary database is removed next)."""
        self.db.abort()


def extract_features(net, blob_names, db_paths, num_batches, backend="lmdb", overwrite=False):
    """Run ``net`` ``num_batches`` times and write each named blob, image by image, into its database
    (built atomically); returns the finished ``_FeatureDB`` of each blob.

    The net (MODEL in its TEST phase, its own data layer feeding it, WEIGHTS copied in) runs NUM_BATCHES
    forward passes; after each, every image's slice of each named blob becomes one record of that blob's
    database, the images numbered on across batches:

    * ``lmdb`` (the default): a Datum with the values in ``float_data`` and the blob's Caffe shape per image
      (``channels``, ``height``, ``width``: Blob::channels()/height()/width(), so an N x D blob gives D x 1 x 1
      and an N x C x H x W blob C x H x W), under the key ``%010d`` of the image's index, as Caffe writes them.
    * ``hdf5``: what ``caffeish convert --backend hdf5`` builds -- a directory of ``data_00000.h5`` files with
      a ``data`` dataset (images x C x H x W, float32, in the LMDB's key order) and a ``label`` dataset of
      zeros (features carry no label; a Datum's label is 0 as well), plus ``list.txt`` naming the files (the
      ``source`` of an HDF5Data layer; ``compute-mean`` and ``open_db`` read it too).

    Every database is built at a temporary path beside its final one and renamed into place only after the
    last batch, so an interrupted or failed run leaves no database behind (and an existing one, replaced with
    ``--overwrite``, stays as it was).
    """
    finals = [os.path.abspath(os.fspath(p)) for p in db_paths]
    try:
        with contextlib.ExitStack() as stack:
            dbs = []
            for name, final in zip(blob_names, finals):
                tmp = stack.enter_context(atomic_db_path(final, overwrite))
                dbs.append(_FeatureDB(name, final, tmp, backend))
            try:
                for batch in range(num_batches):
                    net.forward_prefilled()
                    for db in dbs:
                        db.put(net.blobs[db.blob_name])
                    log.debug("Batch %d of %d done", batch + 1, num_batches)
                for db in dbs:
                    db.close()
                    if db.count % COMMIT_EVERY:
                        log.info("Extracted features of %d query images for feature blob %s", db.count,
                                 db.blob_name)
            except BaseException:
                for db in dbs:
                    with contextlib.suppress(Exception):
                        db.abort()
                raise
    except OSError as e:  # a full disk, a file-size limit, a read-only directory
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise CaffeishError(f"cannot write the feature databases: {reason}; none was written (older databases at "
                            f"these paths are kept): {', '.join(finals)}") from None
    return dbs


@register_command("extract-features")
@click.command(context_settings={"ignore_unknown_options": True})  # NUM_BATCHES "-1" gets its own message
@click.argument("weights", type=click.Path(dir_okay=False))
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("blobs", metavar="BLOB[,BLOB...]")
@click.argument("dbs", metavar="DB[,DB...]")
@click.argument("num_batches", metavar="NUM_BATCHES")
@click.argument("caffe_tail", nargs=-1, metavar="[DB_TYPE] [CPU|GPU] [DEVICE_ID]")
@click.option("--backend", default=None, help=f"{names_text(writable_backends())}, lmdb by default (Caffe's "
              "positional DB_TYPE works too).")
@click.option("--overwrite", is_flag=True, help="Replace existing databases at DB (once the new ones are complete).")
@gpu_option
def extract_features_command(weights, model, blobs, dbs, num_batches, caffe_tail, backend, overwrite, gpu):
    """Run MODEL (TEST phase, its own data layer) with WEIGHTS for NUM_BATCHES batches and store each BLOB,
    one record per image, in the matching DB (Caffe's extract_features).

    LMDB records are Datums of float_data with keys %010d; --backend hdf5 writes data/label datasets and a
    list.txt instead. Each DB is built at a temporary path and appears only when complete.
    """
    count = _positive(num_batches)
    blob_names = _names(blobs, "blob")
    db_paths = _names(dbs, "database")
    if len(blob_names) != len(db_paths):
        raise CaffeishError(f"{len(blob_names)} blob(s) ({', '.join(blob_names)}) but {len(db_paths)} database(s) "
                            f"({', '.join(db_paths)}): give one database per blob, in the same order")
    finals = [os.path.abspath(p) for p in db_paths]
    twice = sorted({p for p in db_paths if finals.count(os.path.abspath(p)) > 1})
    if twice:
        raise CaffeishError(f"database {twice[0]} is named twice; give each blob its own database")
    name, gpu = parse_caffe_tail(caffe_tail, backend, gpu)
    for final in finals:
        check_target(final, overwrite)
    gpus = select_device(gpu)
    log.info("Using %s", f"GPU {gpus[0]}" if gpus else "CPU")
    net = Net(model, phase=TEST)
    try:
        load_weights(net, weights)
        for blob in blob_names:
            if blob not in net.blobs:
                raise CaffeishError(f"unknown feature blob '{blob}' in the network {model}; its blobs are: "
                                    f"{', '.join(net.blobs)}")
        log.info("Extracting features of %s over %d batches", ", ".join(blob_names), count)
        done = extract_features(net, blob_names, db_paths, count, name, overwrite)
    finally:
        net.close()
    log.info("Successfully extracted the features!")
    for db in done:
        kind = db.kind.source_title if db.source else f"{db.kind.title} database"
        click.echo(f"{kind}: {db.source or db.final} ({db.count} records of blob {db.blob_name}, "
                   f"{' x '.join(map(str, db.shape))} each)")

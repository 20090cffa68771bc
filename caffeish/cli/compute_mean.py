"""``caffeish compute-mean DB [OUT.binaryproto]``: Caffe's compute_image_mean.

The mean image over every record of an LMDB (raw or encoded Datums) or an HDF5
database, written as a (1, C, H, W) BlobProto (atomically), and the per-channel
means logged as Caffe logs them ("mean_value channel [0]: 33.3").
"""
import logging

import click
import numpy

from .. import io as cio
from ..data.db import open_db
from ..data.hdf5_backend import HDF5DB
from ..errors import CaffeishError
from . import register_command

log = logging.getLogger("caffeish")
LOG_EVERY = 10000


def _hdf5_rows(block):
    """HDF5 rows (N x C x H x W, N x H x W or N x D) as N x C x H x W, the shape their Datums have."""
    if block.ndim == 3:
        return block[:, numpy.newaxis]
    if block.ndim == 2:
        return block[:, :, numpy.newaxis, numpy.newaxis]
    if block.ndim == 1:
        return block[:, numpy.newaxis, numpy.newaxis, numpy.newaxis]
    return block


def compute_mean(db, log_every=LOG_EVERY):
    """(mean C x H x W float64, count) over every record of an open database."""
    total, count, shape, first_key = None, 0, None, None
    if isinstance(db, HDF5DB):
        for data, _ in db.iter_batches():
            rows = _hdf5_rows(numpy.asarray(data))
            if shape is None:
                shape, total = rows.shape[1:], numpy.zeros(rows.shape[1:], numpy.float64)
            total += rows.sum(axis=0, dtype=numpy.float64)
            count += len(rows)
        return total / max(count, 1), count
    cur = db.cursor()
    try:
        while cur.valid():
            key = cur.key()
            arr = cio.datum_to_array(cio.parse_datum(cur.value(), f"{db.path}: record {key[:64]!r}"))
            if shape is None:
                shape, first_key, total = arr.shape, key, numpy.zeros(arr.shape, numpy.float64)
            elif arr.shape != shape:
                raise CaffeishError(f"record {key[:64]!r} is {arr.shape} (C, H, W) but the first record {first_key!r} "
                                    f"is {shape}; a mean image needs one image size (convert with "
                                    f"--resize-height/--resize-width)", path=db.path)
            total += arr
            count += 1
            if count % log_every == 0:
                log.info("Processed %d files.", count)
            cur.next()
    finally:
        cur.close()
    if count % log_every:
        log.info("Processed %d files.", count)
    return total / max(count, 1), count


@register_command("compute-mean")
@click.command()
@click.argument("db", type=click.Path())
@click.argument("out", required=False, type=click.Path())
@click.option("--backend", default="auto", show_default=True, help="lmdb, hdf5, ... or auto (recognised on disk).")
def compute_mean_command(db, out, backend):
    """The mean image of DB, written to OUT (a BlobProto) when given; per-channel means are logged."""
    with open_db(db, backend, "r") as database:
        mean, count = compute_mean(database)
    if count == 0:
        raise CaffeishError("the database is empty (no records)", path=db)
    if out:
        log.info("Write to %s", out)
        try:
            cio.write_mean_binaryproto(out, mean)
        except OSError as e:
            raise CaffeishError(f"cannot write the mean file: {e.strerror or e}", path=out) from None
    channels = mean.shape[0]
    log.info("Number of channels: %d", channels)
    for c in range(channels):
        log.info("mean_value channel [%d]: %g", c, mean[c].mean())

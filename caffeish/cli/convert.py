"""``caffeish convert``: build LMDB or HDF5 databases from images, MNIST, CIFAR, npz arrays or a LevelDB; every
database is built at a temporary path and renamed into place only when complete.

``caffeish convert imageset ROOT/ LIST DB`` is Caffe's ``convert_imageset ROOT/ LIST DB`` (its single-dash flags
work too: ``-resize_height 32 -shuffle -backend lmdb``).  ``caffeish convert leveldb SRC DST`` copies a LevelDB of
Caffe's (its older default backend) into an LMDB.
"""
import click

from ..data import converters
from ..data.db import get_backend, names_text, writable_backends
from . import register_command


_COMMON_OPTIONS = [
    click.option("--backend", default="lmdb", show_default=True,
                 help=f"{names_text(writable_backends())} (the database backends that can be written)."),
    click.option("--overwrite", is_flag=True, help="Replace an existing database at DB."),
    click.option("--rows-per-file", type=click.IntRange(min=1), default=None,
                 help="hdf5: rows per .h5 file (default: all in one)."),
    click.option("--log-every", type=click.IntRange(min=1), default=1000, show_default=True,
                 help="Log progress every this many records."),
]


def _common(fn):
    """Options every converter takes."""
    for option in reversed(_COMMON_OPTIONS):
        fn = option(fn)
    return fn


def _report(summary):
    kind = get_backend(summary.backend)
    if summary.list_path:
        click.echo(f"{kind.source_title}: {summary.list_path}")
    else:
        click.echo(f"{kind.title} database: {summary.path} ({summary.written} records)")


@register_command("convert")
@click.group()
def convert():
    """Convert a dataset into an LMDB (Datums) or HDF5 (data/label) database."""


@convert.command("imageset")
@click.argument("root", type=click.Path())
@click.argument("list_file", metavar="LIST", type=click.Path())
@click.argument("db", type=click.Path())
@click.option("--resize-height", default=0, type=int, show_default=True, help="Resize images to this height.")
@click.option("--resize-width", default=0, type=int, show_default=True, help="Resize images to this width.")
@click.option("--gray", is_flag=True, help="Store grayscale (1-channel) images.")
@click.option("--shuffle", is_flag=True, help="Shuffle the order of the images.")
@click.option("--seed", default=None, type=int, help="Random seed for --shuffle.")
@click.option("--encoded", is_flag=True, help="Store compressed images (encoded Datums).")
@click.option("--encode-type", default="", help="png or jpg for --encoded (default: each file's own format).")
@click.option("--check-size", is_flag=True, help="Fail when the images do not all have the same size.")
@_common
def imageset(root, list_file, db, resize_height, resize_width, gray, shuffle, seed, encoded, encode_type,
             check_size, backend, overwrite, rows_per_file, log_every):
    """Images named in LIST ('path label' lines, paths relative to ROOT) into DB, as BGR C x H x W Datums."""
    summary = converters.convert_imageset(
        root, list_file, db, resize_height=resize_height, resize_width=resize_width, gray=gray, shuffle=shuffle,
        seed=seed, backend=backend, encoded=encoded, encode_type=encode_type or None, check_size=check_size,
        overwrite=overwrite, rows_per_file=rows_per_file, log_every=log_every)
    _report(summary)
    if summary.skipped:
        click.echo(f"skipped {summary.skipped} unreadable image(s); see the warnings above", err=True)


@convert.command("mnist")
@click.argument("images", type=click.Path())
@click.argument("labels", type=click.Path())
@click.argument("db", type=click.Path())
@_common
def mnist(images, labels, db, backend, overwrite, rows_per_file, log_every):
    """MNIST idx files (gzipped or not) into DB: 1 x 28 x 28 uint8 Datums, keys %08d."""
    _report(converters.convert_mnist(images, labels, db, backend=backend, overwrite=overwrite,
                                     rows_per_file=rows_per_file, log_every=log_every))


@convert.command("cifar10")
@click.argument("directory", metavar="DIR", type=click.Path())
@click.argument("db", type=click.Path())
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="train: data_batch_1..5.bin (CIFAR-100: train.bin); test: test_batch.bin (test.bin).")
@click.option("--cifar100", is_flag=True, help="CIFAR-100 batches (two label bytes: coarse, fine).")
@click.option("--coarse", is_flag=True, help="CIFAR-100: use the coarse (20-class) label instead of the fine.")
@click.option("--bgr", is_flag=True, help="Store BGR planes (default: the file's RGB order, as Caffe does).")
@_common
def cifar10(directory, db, split, cifar100, coarse, bgr, backend, overwrite, rows_per_file, log_every):
    """CIFAR-10/100 binary batches in DIR into DB: 3 x 32 x 32 uint8 Datums, keys %05d."""
    _report(converters.convert_cifar(directory, db, split=split, cifar100=cifar100, coarse=coarse, bgr=bgr,
                                     backend=backend, overwrite=overwrite, rows_per_file=rows_per_file,
                                     log_every=log_every))


@convert.command("npz")
@click.argument("file", type=click.Path())
@click.argument("db", type=click.Path())
@_common
def npz(file, db, backend, overwrite, rows_per_file, log_every):
    """Arrays 'data' (N x C x H x W, any dtype) and 'label' of an .npz FILE into DB (uint8 stays bytes)."""
    _report(converters.convert_npz(file, db, backend=backend, overwrite=overwrite, rows_per_file=rows_per_file,
                                   log_every=log_every))


@convert.command("leveldb")
@click.argument("src", metavar="SRC_LEVELDB", type=click.Path())
@click.argument("db", metavar="DST_LMDB", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace an existing database at DST_LMDB.")
@click.option("--log-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Log progress every this many records.")
def leveldb(src, db, overwrite, log_every):
    """A LevelDB of Caffe's (convert_imageset -backend leveldb, extract_features ... leveldb) into an LMDB, every
    record as it is (its key and serialized Datum). Needs plyvel: pip install 'caffeish[leveldb]'."""
    _report(converters.convert_leveldb(src, db, overwrite=overwrite, log_every=log_every))

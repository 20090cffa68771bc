"""Data: databases (a registry of backends: LMDB, HDF5, LevelDB), converters and the data transformer (the data
layers and their prefetching base are in ``caffeish.layers.data``).

Importing the package registers every database backend: a new one is a module here that registers itself
(see ``caffeish.data.db``) and its name in the import line below.
"""
from . import hdf5_backend, leveldb_backend, lmdb_backend  # noqa: F401  (each registers its database backend)

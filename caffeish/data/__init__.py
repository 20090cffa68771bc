"""Data: databases (a registry of backends: LMDB, HDF5, LevelDB), converters and the data transformer (the data
layers and their prefetching base are in ``caffeish.layers.data``).

Importing the package registers every database backend: a new one is a module ``<name>_backend.py`` here that
registers itself (see ``caffeish.data.db``); nothing else names it.
"""
from ..registry import import_modules

import_modules(__name__, __path__, suffix="_backend")

"""Data layers (no bottoms): Data, ImageData, HDF5Data, MemoryData, DummyData, Input, and HDF5Output.

``prefetch`` is the base of the layers that read ahead on a thread (``PrefetchingDataLayer``, ``Reader``).
"""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types

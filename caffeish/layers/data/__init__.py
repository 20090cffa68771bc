"""Data layers (no bottoms): Data, ImageData, HDF5Data, MemoryData, DummyData, Input, and HDF5Output.

``prefetch`` is the base of the layers that read ahead on a thread (``PrefetchingDataLayer``, ``Reader``).
"""
from . import data, dummy_data, hdf5_data, hdf5_output, image_data, input, memory_data, prefetch  # noqa: F401

"""Data: databases (LMDB, HDF5), converters and the data transformer (the data layers and their prefetching base
are in ``caffeish.layers.data``)."""

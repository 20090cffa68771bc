"""Data: databases (LMDB, HDF5), converters, and (from colleagues) data layers, transforms, prefetching."""

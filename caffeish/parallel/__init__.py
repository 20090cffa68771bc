"""Data-parallel training: N synchronous replicas of a solver, over MPI ranks or on several devices of one process.

``replicas`` is the core both share; ``trainer`` (``mpiexec -n N caffeish train``, with ``world`` and
``reducers``) and ``multi_device`` (``caffeish train --gpu 0,1``, with ``local_reducers``) are its front ends.
"""
from .replicas import Bucket, Replicas, gradient_layers, make_buckets
from .trainer import DataParallel, rank_gpu, shared_seed
from .multi_device import MultiDeviceSolver, check_gpus, parse_devices
from .world import DEFAULT_TIMEOUT, World, launched_size, want_mpi

__all__ = ["DEFAULT_TIMEOUT", "Bucket", "DataParallel", "MultiDeviceSolver", "Replicas", "World", "check_gpus",
           "gradient_layers", "launched_size", "make_buckets", "parse_devices", "rank_gpu", "shared_seed",
           "want_mpi"]

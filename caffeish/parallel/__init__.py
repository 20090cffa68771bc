"""Data-parallel training across processes with MPI: ``mpiexec -n N caffeish train --solver S``.

``world`` finds out whether this process is one of several started by an MPI launcher and holds
the MPI operations the trainer needs (waits that never hang, failures that end the whole job);
``trainer.DataParallel`` turns a Solver into one of N synchronous replicas (sharded TRAIN data,
gradients all-reduced layer by layer during the backward pass, rank 0 testing and snapshotting);
``reducers`` sums the gradient buckets with MPI (host arrays) or NCCL (GPU arrays).  mpi4py is
imported only when MPI is used: install it with the ``[mpi]`` extra.  See docs/scaling.md.
"""
from .trainer import DataParallel, gradient_layers, make_buckets, rank_gpu, shared_seed
from .world import DEFAULT_TIMEOUT, World, launched_size, want_mpi

__all__ = ["DEFAULT_TIMEOUT", "DataParallel", "World", "gradient_layers", "launched_size", "make_buckets",
           "rank_gpu", "shared_seed", "want_mpi"]

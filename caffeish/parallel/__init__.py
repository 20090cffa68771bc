"""Data-parallel training across processes with MPI: ``mpiexec -n N caffeish train --solver S``.

``world`` finds out whether this process is one of several started by an MPI launcher and holds
the MPI operations the trainer needs (waits that never hang, failures that end the whole job);
``trainer.DataParallel`` turns a Solver into one of N synchronous replicas (sharded TRAIN data,
gradients all-reduced layer by layer during the backward pass, rank 0 testing and snapshotting);
``reducers`` sums the gradient buckets with MPI (host arrays) or NCCL (GPU arrays).  mpi4py is
imported only when MPI is used: install it with the ``[mpi]`` extra.  See docs/scaling.md.

Without MPI, ``multi_device.MultiDeviceSolver`` trains N replicas in one process, one per GPU (``caffeish
train --gpu 0,1``, gradients summed with NCCL) or on the CPU (``devices=["cpu", "cpu"]``, summed in host
memory), with the same sharding and the same semantics.
"""
from .trainer import DataParallel, gradient_layers, make_buckets, rank_gpu, shared_seed
from .multi_device import MultiDeviceSolver, check_gpus, parse_devices
from .world import DEFAULT_TIMEOUT, World, launched_size, want_mpi

__all__ = ["DEFAULT_TIMEOUT", "DataParallel", "MultiDeviceSolver", "World", "check_gpus", "gradient_layers",
           "launched_size", "make_buckets", "parse_devices", "rank_gpu", "shared_seed", "want_mpi"]

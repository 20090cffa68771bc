"""How the CPU runs things: numpy's work split across threads and the batch image by image (``threads``),
work buffers kept across layers (``buffers``; CuPy's too), and the optional compiled C kernels (``native``).
"""
from .buffers import buffer, release_workspace, workspace
from .threads import num_threads, parallel_copy, parallel_for, set_num_threads

__all__ = ["buffer", "num_threads", "parallel_copy", "parallel_for", "release_workspace", "set_num_threads",
           "workspace"]

"""Exact Poisson resampling and batched one-pixel differential evolution (DE).

This module is the documented front of the compiled core :mod:`galguard._core` (C++/OpenMP,
plus CUDA where it was compiled in). Every function accepts numpy arrays and torch tensors (CPU
or CUDA), validates its arguments, and returns the input's kind, dtype and device. Tensors are
passed to the core zero-copy through DLPack; CUDA kernels run on the caller's current stream.

Where ``galguard._core`` cannot be imported, :mod:`galguard.kernels._reference` (numpy/numba,
the same Philox stream, identical results) is used instead with a
:class:`~galguard.errors.CoreUnavailableWarning`. CUDA tensors given to a core built without
CUDA are computed on the CPU and copied back, with the same warning.

Randomness
----------
Philox4x32-10 keyed on the 64-bit ``seed``, counter = (global row id, realisation or
generation, element or member, stream id). Pass the global row ids (``index=`` / ``ids=``) of a
batch taken from a larger collection and the results do not depend on how the collection was
split into batches, on the number of OpenMP threads, or on the device.

Non-contiguous inputs are copied to a contiguous layout first; inputs are never modified.
"""

from ._loader import (MAX_COUNT, MAX_MEAN, backend, build_info, genes_per_member,
                      get_num_threads, set_num_threads)
from .de import de_init, de_mutate, de_select, de_write_candidates, decode_members
from .sampling import binomial_thin, poisson

__all__ = [
    "poisson",
    "binomial_thin",
    "de_init",
    "de_mutate",
    "de_write_candidates",
    "de_select",
    "decode_members",
    "genes_per_member",
    "backend",
    "build_info",
    "set_num_threads",
    "get_num_threads",
    "MAX_COUNT",
    "MAX_MEAN",
]

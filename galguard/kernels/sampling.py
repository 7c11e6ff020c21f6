"""Exact Poisson resampling and binomial thinning (depth degradation).
"""

import numpy as np

from .._validate import validate_int
from ..errors import GalguardValueError
from . import _reference
from ._arrays import (all_integer, cap, capsule, contig, convert_like, dtype_name, empty,
                      is_torch, minmax, stream, to_numpy, validate_array, validate_index,
                      validate_seed)
from ._loader import MAX_COUNT, MAX_MEAN, U32, dispatch


# ---------------------------------------------------------------------------------------------
# Poisson and binomial thinning
# ---------------------------------------------------------------------------------------------
FLOATS = ("float32", "float64")
_COUNTS = ("float32", "float64", "int32", "int64")


def _row_size(x, name):
    n = x.shape[0]
    size = int(np.prod(tuple(x.shape[1:]), dtype=np.int64))
    if size >= U32:
        raise GalguardValueError(f"{name} rows must have fewer than 2**32 elements, got {size}")
    return n, size


def poisson(mean, *, seed, index=None, realisation=0, check=True):
    """Exact Poisson draws with the given means.

    Parameters
    ----------
    mean : numpy.ndarray or torch.Tensor, float32 or float64, shape (N, ...)
        Means lambda >= 0 (finite, at most 1e15). Row ``n`` is drawn with row id ``index[n]``;
        the element counter is the flat index within the row.
    seed : int
        Key of the Philox stream, in [0, 2**64).
    index : array-like of int, shape (N,), optional
        Global row ids in [0, 2**32); default ``arange(N)``.
    realisation : int, optional
        Which independent realisation, in [0, 2**32); default 0.
    check : bool, optional
        Check the values of ``mean`` (one reduction; on CUDA a synchronisation). Default True.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Counts, same kind, dtype, shape and device as ``mean`` (float32 is exact up to 2**24).

    Raises
    ------
    GalguardValueError
        If ``mean`` is not a float array, is 0-d, holds a negative, NaN or infinite value, or
        if ``seed``, ``index`` or ``realisation`` is out of range.

    Notes
    -----
    lambda < 10: inversion by sequential search; lambda >= 10: PTRS, the transformed rejection
    method with squeeze of Hoermann (1993). Both are exact (no normal approximation); each
    element's draws depend only on (seed, index[n], realisation, element).

    Examples
    --------
    >>> import numpy as np
    >>> from galguard.kernels import poisson
    >>> k = poisson(np.full((2, 3), 4.0, dtype=np.float32), seed=0)
    >>> k.shape, k.dtype
    ((2, 3), dtype('float32'))
    """
    validate_array(mean, "mean", FLOATS, min_ndim=1)
    seed = validate_seed(seed)
    realisation = validate_int("realisation", realisation, minimum=0, maximum=U32 - 1)
    n, _ = _row_size(mean, "mean")
    idx = validate_index(index, "index", n, mean)
    mean = contig(mean)
    if check:
        mn, mx = minmax(mean)
        if not (mn >= 0.0 and mx <= MAX_MEAN):
            raise GalguardValueError(
                f"mean must be finite and in [0, {MAX_MEAN:g}], got values in [{mn}, {mx}]"
            )
    if (mean.numel() if is_torch(mean) else mean.size) == 0:
        return mean.clone() if is_torch(mean) else mean.copy()
    def compiled(core, place):
        src, ids = place(mean), place(idx)
        out = empty(tuple(src.shape), dtype_name(src), src)
        core.poisson(capsule(src), capsule(out), cap(ids), seed, realisation, stream(src))
        return out

    return dispatch(mean, lambda: _reference.poisson(to_numpy(mean), seed=seed,
                                                     index=to_numpy(idx),
                                                     realisation=realisation), compiled)


def binomial_thin(counts, p, *, seed, index=None, realisation=0, check=True):
    """Binomial thinning: k' ~ Binomial(k, p) for each count k.

    Thinning Poisson(lambda) counts gives Poisson(p lambda) counts: this degrades an exposure
    to a fraction ``p`` of its depth exactly.

    Parameters
    ----------
    counts : numpy.ndarray or torch.Tensor, float32, float64, int32 or int64, shape (N, ...)
        Integer-valued counts in [0, 2**31].
    p : float or array-like broadcastable to ``counts``
        Fraction kept, in (0, 1]; p = 1 returns the counts unchanged.
    seed : int
        Key of the Philox stream, in [0, 2**64).
    index : array-like of int, shape (N,), optional
        Global row ids in [0, 2**32); default ``arange(N)``.
    realisation : int, optional
        Which independent realisation, in [0, 2**32); default 0.
    check : bool, optional
        Check the values of ``counts`` and ``p``. Default True.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Thinned counts, same kind, dtype, shape and device as ``counts``; never above ``counts``.

    Raises
    ------
    GalguardValueError
        If ``counts`` has another dtype, a negative, non-integer, non-finite or too large value;
        if ``p`` is outside (0, 1] or does not broadcast to ``counts``; or if ``seed``,
        ``index`` or ``realisation`` is out of range.

    Notes
    -----
    With q = min(p, 1 - p) and m = k q: inversion (sequential search) for m < 10, BTRS
    (Hoermann 1993, transformed rejection with squeeze) otherwise; p > 1/2 uses
    k - Binomial(k, 1 - p). Exact for every k up to 2**31, computed in double.

    Examples
    --------
    >>> import numpy as np
    >>> from galguard.kernels import binomial_thin
    >>> k = binomial_thin(np.array([[10, 0, 1000]], dtype=np.int32), 0.1, seed=0)
    >>> bool((k <= [10, 0, 1000]).all()), k.dtype
    (True, dtype('int32'))
    """
    validate_array(counts, "counts", _COUNTS, min_ndim=1)
    seed = validate_seed(seed)
    realisation = validate_int("realisation", realisation, minimum=0, maximum=U32 - 1)
    n, _ = _row_size(counts, "counts")
    idx = validate_index(index, "index", n, counts)
    counts = contig(counts)
    p_scalar = None
    p_arr = None
    if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, (bool, np.bool_)):
        p_scalar = float(p)
        if not (0.0 < p_scalar <= 1.0):
            raise GalguardValueError(f"p must be in (0, 1], got {p_scalar}")
    else:
        p_arr = convert_like(p, "p", counts, "float64")
        if p_arr.ndim == 0:
            p_scalar, p_arr = float(p_arr), None
            if not (0.0 < p_scalar <= 1.0):
                raise GalguardValueError(f"p must be in (0, 1], got {p_scalar}")
        else:
            try:
                if is_torch(p_arr):
                    p_arr = p_arr.expand(tuple(counts.shape)).contiguous()
                else:
                    p_arr = np.ascontiguousarray(np.broadcast_to(p_arr, counts.shape))
            except (ValueError, RuntimeError) as exc:
                raise GalguardValueError(
                    f"p must broadcast to the shape of counts {tuple(counts.shape)}, "
                    f"got shape {tuple(p_arr.shape)}"
                ) from exc
            mn, mx = minmax(p_arr)
            if not (mn > 0.0 and mx <= 1.0):
                raise GalguardValueError(f"p must be in (0, 1], got values in [{mn}, {mx}]")
    if check:
        mn, mx = minmax(counts)
        if not (mn >= 0.0 and mx <= MAX_COUNT):
            raise GalguardValueError(
                f"counts must be finite and in [0, 2**31], got values in [{mn}, {mx}]"
            )
        if not all_integer(counts):
            raise GalguardValueError("counts must be integer-valued, got non-integer values")
    if (counts.numel() if is_torch(counts) else counts.size) == 0:
        return counts.clone() if is_torch(counts) else counts.copy()
    def reference():
        pp = p_scalar if p_arr is None else to_numpy(p_arr)
        return _reference.binomial_thin(to_numpy(counts), pp, seed=seed, index=to_numpy(idx),
                                        realisation=realisation)

    def compiled(core, place):
        src, ids, pa = place(counts), place(idx), place(p_arr)
        out = empty(tuple(src.shape), dtype_name(src), src)
        core.binomial_thin(capsule(src), cap(pa), 1.0 if p_scalar is None else p_scalar,
                           capsule(out), cap(ids), seed, realisation, stream(src))
        return out

    return dispatch(counts, reference, compiled)

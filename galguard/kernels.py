"""Exact Poisson resampling and batched one-pixel differential evolution (DE).

This module is the documented front of the compiled core :mod:`galguard._core` (C++/OpenMP,
plus CUDA where it was compiled in). Every function accepts numpy arrays and torch tensors (CPU
or CUDA), validates its arguments, and returns the input's kind, dtype and device. Tensors are
passed to the core zero-copy through DLPack; CUDA kernels run on the caller's current stream.

Where ``galguard._core`` cannot be imported, :mod:`galguard._reference` (numpy/numba, the same
Philox stream, identical results) is used instead with a
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

import logging
import math
import sys
import warnings

import numpy as np

from . import _reference
from .errors import CoreUnavailableWarning, GalguardValueError

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
]

log = logging.getLogger(__name__)

_REQUIRED = (
    "build_info",
    "poisson",
    "binomial_thin",
    "de_init",
    "de_mutate",
    "de_write_candidates",
    "de_select",
    "set_num_threads",
    "get_max_threads",
)
_U32 = 2**32
_U64 = 2**64
_MAX_MEAN = 1e15
_MAX_COUNT = 2.0**31
_MAX_EXTENT = 2**24


def _core_problem(exc):
    """Why ``galguard._core`` is missing, and the fix."""
    import os

    pkg = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(pkg)
    if os.path.exists(os.path.join(root, "CMakeLists.txt")):
        return (f"galguard._core could not be imported ({exc}): galguard was imported from the "
                f"source tree {root}, which has no compiled core; build it for this checkout "
                f"with `pip install -e .` (README, Contributing), or run Python outside the "
                f"checkout to use the installed galguard")
    return f"galguard._core could not be imported ({exc}); reinstall galguard (`pip install .`)"


def _load_core():
    try:
        from . import _core
    except ImportError as exc:  # pragma: no cover - depends on the build
        return None, _core_problem(exc)
    missing = [name for name in _REQUIRED if not hasattr(_core, name)]
    if missing:  # pragma: no cover - stale build
        return None, f"galguard._core lacks {', '.join(missing)} (stale build?)"
    return _core, ""


_core, _CORE_PROBLEM = _load_core()
_CORE_CUDA = bool(_core is not None and _core.build_info().get("cuda"))


# ---------------------------------------------------------------------------------------------
# Introspection
# ---------------------------------------------------------------------------------------------
def backend():
    """Name of the implementation in use: ``"core"`` or ``"reference"``.

    Returns
    -------
    str
        ``"core"`` when the compiled extension is loaded, ``"reference"`` otherwise.
    """
    return "core" if _core is not None else "reference"


def build_info():
    """What the compiled core was built with.

    Returns
    -------
    dict
        ``galguard._core.build_info()`` (keys ``cuda``, ``cuda_architectures``, ``openmp``,
        ``version``, ...), or ``{"core": False, "cuda": False, "openmp": False, "error": ...}``
        when the core is unavailable.
    """
    if _core is None:
        return {"core": False, "cuda": False, "openmp": False, "error": _CORE_PROBLEM}
    info = dict(_core.build_info())
    info["core"] = True
    return info


def set_num_threads(n):
    """Set the number of OpenMP threads used by the CPU kernels.

    Results never depend on it. With torch imported, torch and galguard share one OpenMP
    runtime, so this also sets torch's OpenMP thread count.

    Parameters
    ----------
    n : int
        Number of threads, >= 1.
    """
    n = _validate_int(n, "n", lo=1)
    if _core is not None:
        _core.set_num_threads(n)


def get_num_threads():
    """Maximum number of OpenMP threads the CPU kernels will use (1 without the core)."""
    return int(_core.get_max_threads()) if _core is not None else 1


def genes_per_member(pixels, channels):
    """Number of genes G = pixels * (2 + channels) of one DE member."""
    return int(pixels) * (2 + int(channels))


# ---------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------
def _torch():
    return sys.modules.get("torch")


def _is_torch(x):
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _validate_array(x, name, dtypes, *, ndim=None, min_ndim=None):
    if not (isinstance(x, np.ndarray) or _is_torch(x)):
        raise GalguardValueError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
        )
    dt = _dtype_name(x)
    if dt not in dtypes:
        raise GalguardValueError(f"{name} must have dtype {' or '.join(dtypes)}, got {dt}")
    if ndim is not None and x.ndim != ndim:
        raise GalguardValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}"
        )
    if min_ndim is not None and x.ndim < min_ndim:
        raise GalguardValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}"
        )
    if _is_torch(x):
        if x.device.type not in ("cpu", "cuda"):
            raise GalguardValueError(f"{name} must be on a cpu or cuda device, got {x.device}")
        if x.is_complex() or x.layout != _torch().strided:
            raise GalguardValueError(f"{name} must be a dense strided tensor, got {x.layout}")
    return x


def _dtype_name(x):
    if _is_torch(x):
        return str(x.dtype).replace("torch.", "")
    return np.dtype(x.dtype).name


def _validate_int(v, name, *, lo=None, hi=None):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise GalguardValueError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise GalguardValueError(f"{name} must be an integer {rng}, got {v}")
    return v


def _validate_float(v, name, *, lo, hi, lo_open=False):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GalguardValueError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise GalguardValueError(f"{name} must be in {left}{lo}, {hi}], got {v}")
    return v


def _validate_seed(seed):
    return _validate_int(seed, "seed", lo=0, hi=_U64 - 1)


def _same_place(x, name, like, like_name):
    """x must be of like's kind and device."""
    if _is_torch(like) != _is_torch(x):
        raise GalguardValueError(
            f"{name} must be a {'torch tensor' if _is_torch(like) else 'numpy array'} like "
            f"{like_name}, got {type(x).__name__}"
        )
    if _is_torch(x) and x.device != like.device:
        raise GalguardValueError(
            f"{name} must be on the same device as {like_name} ({like.device}), got {x.device}"
        )


def _convert_like(x, name, like, dtype):
    """Small auxiliary argument (ids, bounds, p): any array-like -> like's kind/device, dtype."""
    if _is_torch(like):
        torch = _torch()
        tdt = getattr(torch, dtype)
        if _is_torch(x):
            x = x.detach()
            if x.is_floating_point() and dtype.startswith("int"):
                raise GalguardValueError(f"{name} must hold integers, got dtype {x.dtype}")
            return x.to(device=like.device, dtype=tdt).contiguous()
        arr = _np_convert(x, name, dtype)
        return torch.from_numpy(arr).to(like.device)
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return _np_convert(x, name, dtype)


def _np_convert(x, name, dtype):
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report anything unconvertible the same way
        raise GalguardValueError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if dtype.startswith("int"):
        if arr.dtype.kind not in "iu":
            raise GalguardValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    elif arr.dtype.kind not in "iuf":
        raise GalguardValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _contig(x):
    if _is_torch(x):
        return x.detach().contiguous()
    return np.ascontiguousarray(x)


def _empty(shape, dtype, like):
    if _is_torch(like):
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    return np.empty(shape, dtype=dtype)


def _minmax(x):
    """(min, max) as Python floats; NaN propagates into both."""
    if _is_torch(x):
        if x.numel() == 0:
            return 0.0, 0.0
        torch = _torch()
        xf = x if x.is_floating_point() else x.to(torch.float64)
        if bool(torch.isnan(xf).any()):
            return math.nan, math.nan
        mn, mx = torch.aminmax(xf)
        return float(mn), float(mx)
    if x.size == 0:
        return 0.0, 0.0
    return float(np.min(x)), float(np.max(x))


def _all_integer(x):
    if _is_torch(x):
        return bool((x == x.floor()).all()) if x.is_floating_point() else True
    return bool(np.all(x == np.floor(x))) if x.dtype.kind == "f" else True


def _validate_index(index, name, n, like):
    """Global row ids: None, or (n,) integers in [0, 2^32) -> like's kind/device int64."""
    if index is None:
        return None
    idx = _convert_like(index, name, like, "int64")
    if tuple(idx.shape) != (n,):
        raise GalguardValueError(f"{name} must have shape ({n},), got {tuple(idx.shape)}")
    mn, mx = _minmax(idx)
    if n and (mn < 0 or mx >= _U32):
        raise GalguardValueError(f"{name} must hold ids in [0, 2**32), got values in [{mn:.0f}, {mx:.0f}]")
    return idx


def _capsule(x):
    """A DLPack capsule of x (versioned where the producer supports it)."""
    if _is_torch(x):
        if x.device.type == "cuda":
            # no synchronisation: the kernel is launched on the current stream itself
            try:
                return x.__dlpack__(stream=-1)
            except (TypeError, BufferError):  # pragma: no cover - older torch
                return _torch().utils.dlpack.to_dlpack(x)
        return x.__dlpack__()
    try:
        return x.__dlpack__(max_version=(1, 0))
    except TypeError:  # pragma: no cover - numpy < 2.1
        return x.__dlpack__()


def _cap(x):
    return None if x is None else _capsule(x)


def _stream(x):
    if _is_torch(x) and x.device.type == "cuda":
        return int(_torch().cuda.current_stream(x.device).cuda_stream)
    return 0


def _mode(x):
    """'core', 'core-cpu' (CUDA tensor, CPU-only core) or 'reference'."""
    if _core is None:
        warnings.warn(
            f"{_CORE_PROBLEM}; using the numpy reference implementation (slow)",
            CoreUnavailableWarning,
            stacklevel=3,
        )
        return "reference"
    if _is_torch(x) and x.device.type == "cuda" and not _CORE_CUDA:
        warnings.warn(
            "galguard._core was built without CUDA; computing on the CPU and copying back "
            "(reinstall with GALGUARD_CUDA=ON on a machine with nvcc)",
            CoreUnavailableWarning,
            stacklevel=3,
        )
        return "core-cpu"
    return "core"


def _to_cpu(x):
    return x.cpu() if _is_torch(x) else x


def _to_numpy(x):
    if x is None:
        return None
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return x


def _back(arr, like):
    """numpy or CPU tensor result -> like's kind and device."""
    if _is_torch(like):
        torch = _torch()
        t = arr if _is_torch(arr) else torch.from_numpy(np.ascontiguousarray(arr))
        return t.to(like.device)
    return _to_numpy(arr)


# ---------------------------------------------------------------------------------------------
# Poisson and binomial thinning
# ---------------------------------------------------------------------------------------------
_FLOATS = ("float32", "float64")
_COUNTS = ("float32", "float64", "int32", "int64")


def _row_size(x, name):
    n = x.shape[0]
    size = int(np.prod(tuple(x.shape[1:]), dtype=np.int64))
    if size >= _U32:
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
    _validate_array(mean, "mean", _FLOATS, min_ndim=1)
    seed = _validate_seed(seed)
    realisation = _validate_int(realisation, "realisation", lo=0, hi=_U32 - 1)
    n, _ = _row_size(mean, "mean")
    idx = _validate_index(index, "index", n, mean)
    mean = _contig(mean)
    if check:
        mn, mx = _minmax(mean)
        if not (mn >= 0.0 and mx <= _MAX_MEAN):
            raise GalguardValueError(
                f"mean must be finite and in [0, {_MAX_MEAN:g}], got values in [{mn}, {mx}]"
            )
    if (mean.numel() if _is_torch(mean) else mean.size) == 0:
        return mean.clone() if _is_torch(mean) else mean.copy()
    mode = _mode(mean)
    if mode == "reference":
        res = _reference.poisson(_to_numpy(mean), seed=seed, index=_to_numpy(idx),
                                 realisation=realisation)
        return _back(res, mean)
    src = mean if mode == "core" else _to_cpu(mean)
    ids = idx if (mode == "core" or idx is None) else _to_cpu(idx)
    out = _empty(tuple(src.shape), _dtype_name(src), src)
    _core.poisson(_capsule(src), _capsule(out), _cap(ids), seed, realisation, _stream(src))
    return out if mode == "core" else _back(out, mean)


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
    _validate_array(counts, "counts", _COUNTS, min_ndim=1)
    seed = _validate_seed(seed)
    realisation = _validate_int(realisation, "realisation", lo=0, hi=_U32 - 1)
    n, _ = _row_size(counts, "counts")
    idx = _validate_index(index, "index", n, counts)
    counts = _contig(counts)
    p_scalar = None
    p_arr = None
    if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, (bool, np.bool_)):
        p_scalar = float(p)
        if not (0.0 < p_scalar <= 1.0):
            raise GalguardValueError(f"p must be in (0, 1], got {p_scalar}")
    else:
        p_arr = _convert_like(p, "p", counts, "float64")
        if p_arr.ndim == 0:
            p_scalar, p_arr = float(p_arr), None
            if not (0.0 < p_scalar <= 1.0):
                raise GalguardValueError(f"p must be in (0, 1], got {p_scalar}")
        else:
            try:
                if _is_torch(p_arr):
                    p_arr = p_arr.expand(tuple(counts.shape)).contiguous()
                else:
                    p_arr = np.ascontiguousarray(np.broadcast_to(p_arr, counts.shape))
            except (ValueError, RuntimeError) as exc:
                raise GalguardValueError(
                    f"p must broadcast to the shape of counts {tuple(counts.shape)}, "
                    f"got shape {tuple(p_arr.shape)}"
                ) from exc
            mn, mx = _minmax(p_arr)
            if not (mn > 0.0 and mx <= 1.0):
                raise GalguardValueError(f"p must be in (0, 1], got values in [{mn}, {mx}]")
    if check:
        mn, mx = _minmax(counts)
        if not (mn >= 0.0 and mx <= _MAX_COUNT):
            raise GalguardValueError(
                f"counts must be finite and in [0, 2**31], got values in [{mn}, {mx}]"
            )
        if not _all_integer(counts):
            raise GalguardValueError("counts must be integer-valued, got non-integer values")
    if (counts.numel() if _is_torch(counts) else counts.size) == 0:
        return counts.clone() if _is_torch(counts) else counts.copy()
    mode = _mode(counts)
    if mode == "reference":
        pp = p_scalar if p_arr is None else _to_numpy(p_arr)
        res = _reference.binomial_thin(_to_numpy(counts), pp, seed=seed, index=_to_numpy(idx),
                                       realisation=realisation)
        return _back(res, counts)
    if mode == "core":
        src, ids, pa = counts, idx, p_arr
    else:
        src = _to_cpu(counts)
        ids = None if idx is None else _to_cpu(idx)
        pa = None if p_arr is None else _to_cpu(p_arr)
    out = _empty(tuple(src.shape), _dtype_name(src), src)
    _core.binomial_thin(_capsule(src), _cap(pa), 1.0 if p_scalar is None else p_scalar,
                        _capsule(out), _cap(ids), seed, realisation, _stream(src))
    return out if mode == "core" else _back(out, counts)


# ---------------------------------------------------------------------------------------------
# Differential evolution
# ---------------------------------------------------------------------------------------------
def _validate_extent(v, name):
    return _validate_int(v, name, lo=1, hi=_MAX_EXTENT)


def _validate_bounds(lo, hi, b, c, like):
    lo_ = _convert_like(lo, "lo", like, "float32")
    hi_ = _convert_like(hi, "hi", like, "float32")
    for arr, name in ((lo_, "lo"), (hi_, "hi")):
        if tuple(arr.shape) != (b, c):
            raise GalguardValueError(
                f"{name} must have shape (B, C) = ({b}, {c}), got {tuple(arr.shape)}"
            )
        mn, mx = _minmax(arr)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise GalguardValueError(f"{name} must be finite, got values in [{mn}, {mx}]")
    bad = (lo_ > hi_)
    if bool(bad.any()):
        where = tuple(int(v) for v in (np.argwhere(_to_numpy(bad))[0]))
        raise GalguardValueError(
            f"lo must be <= hi, got lo > hi at (image, band) {where}: "
            f"{float(lo_[where])} > {float(hi_[where])}"
        )
    return lo_, hi_


def _validate_ids(ids, name, like, n=None):
    if n is None:
        ids_ = _convert_like(ids, name, like, "int64")
        if ids_.ndim != 1:
            raise GalguardValueError(f"{name} must have shape (B,), got {tuple(ids_.shape)}")
        n = ids_.shape[0]
    else:
        ids_ = _convert_like(ids, name, like, "int64")
        if tuple(ids_.shape) != (n,):
            raise GalguardValueError(f"{name} must have shape ({n},), got {tuple(ids_.shape)}")
    mn, mx = _minmax(ids_)
    if n and (mn < 0 or mx >= _U32):
        raise GalguardValueError(
            f"{name} must hold ids in [0, 2**32), got values in [{mn:.0f}, {mx:.0f}]"
        )
    return ids_


def de_init(ids, popsize, *, pixels, channels, height, width, lo, hi, seed):
    """Initial DE populations, uniform inside the bounds.

    Parameters
    ----------
    ids : array-like of int, shape (B,)
        Global image ids in [0, 2**32) (they key the random stream).
    popsize : int
        Members per image P >= 1.
    pixels : int
        Pixels per member k >= 1.
    channels : int
        Bands C >= 1.
    height, width : int
        Image size (positions are drawn in [0, height) and [0, width)), at most 2**24.
    lo, hi : array-like, shape (B, C)
        Per-image, per-band value bounds, finite, lo <= hi.
    seed : int
        Key of the Philox stream, in [0, 2**64).

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        G = pixels * (2 + C) genes [x_0, y_0, v_0[0..C-1], x_1, ...]. A torch tensor (on the
        device of the first tensor among ``ids``, ``lo``, ``hi``) if any of them is one, else a
        numpy array.

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, range, or lo > hi.

    Notes
    -----
    Gene g of member m of image ``ids[b]`` uses Philox counter (ids[b], 0, m, 3 << 24 | g).
    """
    like = next((x for x in (ids, lo, hi) if _is_torch(x)), np.empty(0))
    ids_ = _validate_ids(ids, "ids", like)
    b = ids_.shape[0]
    popsize = _validate_int(popsize, "popsize", lo=1, hi=_U32 - 1)
    pixels = _validate_int(pixels, "pixels", lo=1, hi=1 << 16)
    channels = _validate_int(channels, "channels", lo=1, hi=1 << 16)
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    seed = _validate_seed(seed)
    lo_, hi_ = _validate_bounds(lo, hi, b, channels, like)
    g = genes_per_member(pixels, channels)
    mode = _mode(like) if b else "core"
    if mode == "reference":
        res = _reference.de_init(_to_numpy(ids_), popsize, pixels=pixels, channels=channels,
                                 height=height, width=width, lo=_to_numpy(lo_),
                                 hi=_to_numpy(hi_), seed=seed)
        return _back(res, like)
    if mode == "core-cpu":
        ids_, lo_, hi_ = _to_cpu(ids_), _to_cpu(lo_), _to_cpu(hi_)
    out = _empty((b, popsize, g), "float32", lo_)
    if b:
        _core.de_init(_capsule(ids_), _capsule(lo_), _capsule(hi_), _capsule(out), pixels,
                      channels, height, width, seed, _stream(out))
    return out if mode != "core-cpu" else _back(out, like)


def _validate_pop(pop, name, like=None):
    _validate_array(pop, name, ("float32",), ndim=3)
    if like is not None:
        _same_place(pop, name, like, "pop")
        if tuple(pop.shape) != tuple(like.shape):
            raise GalguardValueError(
                f"{name} must have the shape of pop {tuple(like.shape)}, got {tuple(pop.shape)}"
            )
    return _contig(pop)


def de_mutate(pop, *, ids, generation, F=0.5, strategy="rand1", best=None, CR=1.0,
              oob="redraw", height, width, lo, hi, seed):
    """Trial members by DE mutation, optional binomial crossover and bounds handling.

    Parameters
    ----------
    pop : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Current populations, G = pixels * (2 + C) with C = ``lo.shape[1]``.
    ids : array-like of int, shape (B,)
        Global image ids in [0, 2**32).
    generation : int
        Generation number in [0, 2**32) (keys the random stream together with ``ids``).
    F : float, optional
        Differential weight in (0, 2]; default 0.5 (the paper's).
    strategy : {"rand1", "best1"}, optional
        rand/1: v = x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and != i (needs P >= 4; the
        paper's); best/1: v = x_best + F (x_r1 - x_r2) (needs P >= 3 and ``best``).
    best : array-like of int, shape (B,), optional
        Index of each image's best member (from :func:`de_select`); required for best1.
    CR : float, optional
        Crossover rate in [0, 1]; gene g comes from the mutant when u_g < CR or g == jrand.
        CR = 1 (default, the paper's) means no crossover.
    oob : {"redraw", "clip"}, optional
        Out-of-bounds genes are redrawn uniformly inside the bounds (default, as the reference
        code does) or clipped to them (positions to the largest float below W or H). NaN genes
        are always redrawn.
    height, width : int
        Image size; positions live in [0, width) and [0, height).
    lo, hi : array-like, shape (B, C)
        Per-image, per-band value bounds, lo <= hi.
    seed : int
        Key of the Philox stream.

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Trial members, same kind and device as ``pop``; every gene inside its bounds.

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, device, value or option.
    """
    _validate_array(pop, "pop", ("float32",), ndim=3)
    b, p, g = (int(s) for s in pop.shape)
    generation = _validate_int(generation, "generation", lo=0, hi=_U32 - 1)
    F = _validate_float(F, "F", lo=0.0, hi=2.0, lo_open=True)
    CR = _validate_float(CR, "CR", lo=0.0, hi=1.0)
    if strategy not in ("rand1", "best1"):
        raise GalguardValueError(f"strategy must be 'rand1' or 'best1', got {strategy!r}")
    if oob not in ("redraw", "clip"):
        raise GalguardValueError(f"oob must be 'redraw' or 'clip', got {oob!r}")
    need = 4 if strategy == "rand1" else 3
    if p < need:
        raise GalguardValueError(
            f"pop must have at least {need} members per image for {strategy}, got P = {p}"
        )
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    seed = _validate_seed(seed)
    ids_ = _validate_ids(ids, "ids", pop, b)
    lo_arr = lo if (_is_torch(lo) or isinstance(lo, np.ndarray)) else np.asarray(lo)
    if lo_arr.ndim != 2:
        raise GalguardValueError(f"lo must have shape (B, C), got {tuple(lo_arr.shape)}")
    c = int(lo_arr.shape[1])
    lo_, hi_ = _validate_bounds(lo, hi, b, c, pop)
    if c < 1 or g % (2 + c) or g == 0:
        raise GalguardValueError(
            f"pop must have G = pixels * (2 + C) genes with C = {c} bands, got G = {g}"
        )
    best_ = None
    if strategy == "best1":
        if best is None:
            raise GalguardValueError("best must be given for strategy 'best1', got None")
        best_ = _validate_ids(best, "best", pop, b)
        mn, mx = _minmax(best_)
        if b and mx >= p:
            raise GalguardValueError(f"best must hold member indices in [0, {p}), got max {mx:.0f}")
    pop = _contig(pop)
    mode = _mode(pop) if b else "core"
    if mode == "reference":
        res = _reference.de_mutate(_to_numpy(pop), ids=_to_numpy(ids_), generation=generation,
                                   F=F, strategy=strategy, best=_to_numpy(best_), CR=CR, oob=oob,
                                   height=height, width=width, lo=_to_numpy(lo_),
                                   hi=_to_numpy(hi_), seed=seed)
        return _back(res, pop)
    src = pop
    if mode == "core-cpu":
        src, ids_, lo_, hi_ = _to_cpu(pop), _to_cpu(ids_), _to_cpu(lo_), _to_cpu(hi_)
        best_ = None if best_ is None else _to_cpu(best_)
    out = _empty((b, p, g), "float32", src)
    if b:
        _core.de_mutate(_capsule(src), _capsule(ids_), _cap(best_), _capsule(lo_), _capsule(hi_),
                        _capsule(out), generation, F, CR, 1 if strategy == "best1" else 0,
                        1 if oob == "clip" else 0, height, width, seed, _stream(src))
    return out if mode != "core-cpu" else _back(out, pop)


def de_write_candidates(images, members, *, out=None):
    """Write the B x P candidate images in one pass.

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor, float32, shape (B, C, H, W)
        Base images.
    members : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Members, G = pixels * (2 + C), same kind and device as ``images``.
    out : numpy.ndarray or torch.Tensor, float32, shape (B * P, C, H, W), optional
        C-contiguous buffer to write into (same kind and device; must not overlap ``images``).

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B * P, C, H, W)
        ``out[b * P + p]`` is ``images[b]`` with pixel (int(y_j), int(x_j)) of every band c set
        to v_j[c] for each pixel j of member p (later pixels win where two coincide; positions
        are clamped into the image).

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, device or a non-contiguous ``out``.
    """
    _validate_array(images, "images", ("float32",), ndim=4)
    _validate_array(members, "members", ("float32",), ndim=3)
    _same_place(members, "members", images, "images")
    b, c, h, w = (int(s) for s in images.shape)
    if int(members.shape[0]) != b:
        raise GalguardValueError(
            f"members must have shape (B, P, G) with B = {b} (from images), "
            f"got {tuple(members.shape)}"
        )
    p, g = int(members.shape[1]), int(members.shape[2])
    if g == 0 or g % (2 + c):
        raise GalguardValueError(
            f"members must have G = pixels * (2 + C) genes with C = {c}, got G = {g}"
        )
    shape = (b * p, c, h, w)
    if out is not None:
        _validate_array(out, "out", ("float32",), ndim=4)
        _same_place(out, "out", images, "images")
        if tuple(out.shape) != shape:
            raise GalguardValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        contiguous = out.is_contiguous() if _is_torch(out) else out.flags.c_contiguous
        if not contiguous:
            raise GalguardValueError("out must be C-contiguous, got a non-contiguous array")
        if _shares_memory(out, images):
            raise GalguardValueError("out must not overlap images")
    images_c, members_c = _contig(images), _contig(members)
    mode = _mode(images) if b * p else "core"
    if mode == "reference":
        res = _reference.de_write_candidates(_to_numpy(images_c), _to_numpy(members_c))
        if out is None:
            return _back(res, images)
        if _is_torch(out):
            out.copy_(_back(res, images))
        else:
            out[...] = res
        return out
    if mode == "core-cpu":
        target = _empty(shape, "float32", _to_cpu(images_c))
        if b * p:
            _core.de_write_candidates(_capsule(_to_cpu(images_c)), _capsule(_to_cpu(members_c)),
                                      _capsule(target), 0)
        if out is None:
            return _back(target, images)
        out.copy_(target.to(out.device))
        return out
    target = out if out is not None else _empty(shape, "float32", images_c)
    if b * p:
        _core.de_write_candidates(_capsule(images_c), _capsule(members_c), _capsule(target),
                                  _stream(images_c))
    return target


def _shares_memory(a, b):
    if _is_torch(a):
        if a.device != b.device or a.numel() == 0 or b.numel() == 0:
            return False
        a0, b0 = a.data_ptr(), b.data_ptr()
        a1 = a0 + a.numel() * a.element_size()
        b1 = b0 + b.numel() * b.element_size()
        return a0 < b1 and b0 < a1
    return bool(np.shares_memory(a, b))


def de_select(pop, fitness, trial, trial_fitness):
    """Greedy one-to-one DE selection (fitness is minimised).

    Parameters
    ----------
    pop : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Parents.
    fitness : float32 or float64, shape (B, P)
        Parents' fitness.
    trial : float32, shape (B, P, G)
        Trial members (from :func:`de_mutate`).
    trial_fitness : same dtype as ``fitness``, shape (B, P)
        Trials' fitness.

    Returns
    -------
    pop : float32 (B, P, G)
        Trial i replaces parent i where ``trial_fitness <= fitness``.
    fitness : (B, P)
        The survivors' fitness.
    best : int64 (B,)
        Index of the first member with the smallest fitness of each image.

    Raises
    ------
    GalguardValueError
        On mismatched shapes, dtypes or devices.

    Notes
    -----
    NaN fitness is worse than any number: a NaN trial never replaces its parent, a NaN parent
    is replaced by any non-NaN trial, and NaN members are never ``best`` unless all are NaN
    (then ``best`` is 0). The inputs are not modified.
    """
    _validate_array(pop, "pop", ("float32",), ndim=3)
    b, p, g = (int(s) for s in pop.shape)
    _validate_array(trial, "trial", ("float32",), ndim=3)
    _same_place(trial, "trial", pop, "pop")
    if tuple(trial.shape) != (b, p, g):
        raise GalguardValueError(
            f"trial must have the shape of pop {(b, p, g)}, got {tuple(trial.shape)}"
        )
    _validate_array(fitness, "fitness", _FLOATS, ndim=2)
    _same_place(fitness, "fitness", pop, "pop")
    if tuple(fitness.shape) != (b, p):
        raise GalguardValueError(
            f"fitness must have shape (B, P) = {(b, p)}, got {tuple(fitness.shape)}"
        )
    _validate_array(trial_fitness, "trial_fitness", _FLOATS, ndim=2)
    _same_place(trial_fitness, "trial_fitness", pop, "pop")
    if tuple(trial_fitness.shape) != (b, p):
        raise GalguardValueError(
            f"trial_fitness must have shape (B, P) = {(b, p)}, got {tuple(trial_fitness.shape)}"
        )
    if _dtype_name(trial_fitness) != _dtype_name(fitness):
        raise GalguardValueError(
            f"trial_fitness must have the dtype of fitness ({_dtype_name(fitness)}), "
            f"got {_dtype_name(trial_fitness)}"
        )
    pop, trial = _contig(pop), _contig(trial)
    fitness, trial_fitness = _contig(fitness), _contig(trial_fitness)
    mode = _mode(pop) if b * p else "core"
    if mode == "reference":
        rp, rf, rb = _reference.de_select(_to_numpy(pop), _to_numpy(fitness), _to_numpy(trial),
                                          _to_numpy(trial_fitness))
        return _back(rp, pop), _back(rf, pop), _back(rb, pop)
    args = (pop, fitness, trial, trial_fitness)
    if mode == "core-cpu":
        args = tuple(_to_cpu(a) for a in args)
    like = args[0]
    out_pop = _empty((b, p, g), "float32", like)
    out_fit = _empty((b, p), _dtype_name(fitness), like)
    out_best = _empty((b,), "int64", like)
    if b * p:
        _core.de_select(*(_capsule(a) for a in args), _capsule(out_pop), _capsule(out_fit),
                        _capsule(out_best), _stream(like))
    elif b:
        out_best[...] = 0
    res = (out_pop, out_fit, out_best)
    return res if mode != "core-cpu" else tuple(_back(r, pop) for r in res)


def decode_members(members, *, height, width, channels):
    """Pixel positions and values of DE members.

    Parameters
    ----------
    members : numpy.ndarray or torch.Tensor, float32, shape (..., G)
        Members, G = pixels * (2 + channels).
    height, width : int
        Image size (positions are clamped into it, as :func:`de_write_candidates` does).
    channels : int
        Bands C.

    Returns
    -------
    x, y : int64, shape (..., pixels)
        Pixel columns int(x_j) and rows int(y_j).
    values : float32, shape (..., pixels, C)
        The pixels' values.
    """
    _validate_array(members, "members", ("float32",), min_ndim=1)
    channels = _validate_int(channels, "channels", lo=1)
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    g = int(members.shape[-1])
    if g == 0 or g % (2 + channels):
        raise GalguardValueError(
            f"members must have G = pixels * (2 + C) genes with C = {channels}, got G = {g}"
        )
    k = g // (2 + channels)
    genes = members.reshape(*members.shape[:-1], k, 2 + channels)
    xs, ys, vals = genes[..., 0], genes[..., 1], genes[..., 2:]
    if _is_torch(members):
        torch = _torch()

        def idx(t, n):
            t = torch.nan_to_num(t, nan=0.0, posinf=float(n), neginf=0.0)
            return t.clamp(0, n).to(torch.int64).clamp(0, n - 1)

        return idx(xs, width), idx(ys, height), vals.clone()
    return _reference._pixel_index(xs, width), _reference._pixel_index(ys, height), vals.copy()

"""The array adaptor: validation of array arguments, numpy/torch conversions and DLPack capsules.
"""

import math
import sys

import numpy as np

from .._validate import validate_int
from ..errors import GalguardValueError
from ._loader import U32, U64


# ---------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------
def torch_module():
    return sys.modules.get("torch")


def is_torch(x):
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def validate_array(x, name, dtypes, *, ndim=None, min_ndim=None):
    if not (isinstance(x, np.ndarray) or is_torch(x)):
        raise GalguardValueError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
        )
    dt = dtype_name(x)
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
    if is_torch(x):
        if x.device.type not in ("cpu", "cuda"):
            raise GalguardValueError(f"{name} must be on a cpu or cuda device, got {x.device}")
        if x.is_complex() or x.layout != torch_module().strided:
            raise GalguardValueError(f"{name} must be a dense strided tensor, got {x.layout}")
    return x


def dtype_name(x):
    if is_torch(x):
        return str(x.dtype).replace("torch.", "")
    return np.dtype(x.dtype).name


def validate_float(v, name, *, lo, hi, lo_open=False):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GalguardValueError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise GalguardValueError(f"{name} must be in {left}{lo}, {hi}], got {v}")
    return v


def validate_seed(seed):
    return validate_int("seed", seed, minimum=0, maximum=U64 - 1)


def same_place(x, name, like, like_name):
    """x must be of like's kind and device."""
    if is_torch(like) != is_torch(x):
        raise GalguardValueError(
            f"{name} must be a {'torch tensor' if is_torch(like) else 'numpy array'} like "
            f"{like_name}, got {type(x).__name__}"
        )
    if is_torch(x) and x.device != like.device:
        raise GalguardValueError(
            f"{name} must be on the same device as {like_name} ({like.device}), got {x.device}"
        )


def convert_like(x, name, like, dtype):
    """Small auxiliary argument (ids, bounds, p): any array-like -> like's kind/device, dtype."""
    if is_torch(like):
        torch = torch_module()
        tdt = getattr(torch, dtype)
        if is_torch(x):
            x = x.detach()
            if x.is_floating_point() and dtype.startswith("int"):
                raise GalguardValueError(f"{name} must hold integers, got dtype {x.dtype}")
            return x.to(device=like.device, dtype=tdt).contiguous()
        arr = _np_convert(x, name, dtype)
        return torch.from_numpy(arr).to(like.device)
    if is_torch(x):
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


def contig(x):
    if is_torch(x):
        return x.detach().contiguous()
    return np.ascontiguousarray(x)


def empty(shape, dtype, like):
    if is_torch(like):
        torch = torch_module()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    return np.empty(shape, dtype=dtype)


def minmax(x):
    """(min, max) as Python floats; NaN propagates into both."""
    if is_torch(x):
        if x.numel() == 0:
            return 0.0, 0.0
        torch = torch_module()
        xf = x if x.is_floating_point() else x.to(torch.float64)
        if bool(torch.isnan(xf).any()):
            return math.nan, math.nan
        mn, mx = torch.aminmax(xf)
        return float(mn), float(mx)
    if x.size == 0:
        return 0.0, 0.0
    return float(np.min(x)), float(np.max(x))


def all_integer(x):
    if is_torch(x):
        return bool((x == x.floor()).all()) if x.is_floating_point() else True
    return bool(np.all(x == np.floor(x))) if x.dtype.kind == "f" else True


def validate_index(index, name, n, like):
    """Global row ids: None, or (n,) integers in [0, 2^32) -> like's kind/device int64."""
    if index is None:
        return None
    idx = convert_like(index, name, like, "int64")
    if tuple(idx.shape) != (n,):
        raise GalguardValueError(f"{name} must have shape ({n},), got {tuple(idx.shape)}")
    mn, mx = minmax(idx)
    if n and (mn < 0 or mx >= U32):
        raise GalguardValueError(f"{name} must hold ids in [0, 2**32), got values in [{mn:.0f}, {mx:.0f}]")
    return idx


def capsule(x):
    """A DLPack capsule of x (versioned where the producer supports it)."""
    if is_torch(x):
        if x.device.type == "cuda":
            # no synchronisation: the kernel is launched on the current stream itself
            try:
                return x.__dlpack__(stream=-1)
            except (TypeError, BufferError):  # pragma: no cover - older torch
                return torch_module().utils.dlpack.to_dlpack(x)
        return x.__dlpack__()
    try:
        return x.__dlpack__(max_version=(1, 0))
    except TypeError:  # pragma: no cover - numpy < 2.1
        return x.__dlpack__()


def cap(x):
    return None if x is None else capsule(x)


def stream(x):
    if is_torch(x) and x.device.type == "cuda":
        return int(torch_module().cuda.current_stream(x.device).cuda_stream)
    return 0


def to_cpu(x):
    return x.cpu() if is_torch(x) else x


def to_numpy(x):
    if x is None:
        return None
    if is_torch(x):
        return x.detach().cpu().numpy()
    return x


def back(arr, like):
    """numpy or CPU tensor result -> like's kind and device."""
    if is_torch(like):
        torch = torch_module()
        t = arr if is_torch(arr) else torch.from_numpy(np.ascontiguousarray(arr))
        return t.to(like.device)
    return to_numpy(arr)

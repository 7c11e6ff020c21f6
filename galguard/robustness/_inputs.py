"""Validation of the one-pixel attack's inputs and its value bounds (`OnePixelAttack`)."""

import math

import numpy as np
import torch

from ..errors import GalguardValueError

#: the named bound specifications
BOUND_SPECS = ("cutout", "saturation", "paper")


def validate_bounds(bounds, *, name="bounds"):
    """``bounds`` checked: "cutout", "saturation", "paper" or a finite (lo, hi) pair (scalars
    or per band)."""
    if isinstance(bounds, str):
        if bounds not in BOUND_SPECS:
            raise GalguardValueError(
                f"{name} must be 'cutout', 'saturation', 'paper' or a (lo, hi) pair, got {bounds!r}")
        return bounds
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise GalguardValueError(
            f"{name} must be 'cutout', 'saturation', 'paper' or a (lo, hi) pair, got {bounds!r}") from None
    lo = np.asarray(lo.cpu() if isinstance(lo, torch.Tensor) else lo, dtype=np.float64)
    hi = np.asarray(hi.cpu() if isinstance(hi, torch.Tensor) else hi, dtype=np.float64)
    if lo.ndim > 1 or hi.ndim > 1 or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise GalguardValueError(
            f"{name} (lo, hi) must be finite scalars or per-band sequences, got {bounds!r}")
    if np.any(lo > hi):
        raise GalguardValueError(f"{name} must have lo <= hi, got lo={lo}, hi={hi}")
    return (lo, hi)


def _validate_images(images):
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise GalguardValueError(
            f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise GalguardValueError(
            f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise GalguardValueError(f"images must be floating point, got dtype {images.dtype}")
    if images.dtype != torch.float32:
        images = images.float()
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise GalguardValueError("images must be finite, got NaN or inf values")
    return images


def _validate_labels(labels, B, device):
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    if labels.shape != (B,):
        raise GalguardValueError(
            f"labels must have shape ({B},) to match images, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise GalguardValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels.to(device=device, dtype=torch.int64)


def _validate_ids(ids, B, device):
    if ids is None:
        return torch.arange(B, dtype=torch.int64, device=device)
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(np.asarray(ids))
    if ids.shape != (B,) or ids.is_floating_point() or ids.dtype == torch.bool:
        raise GalguardValueError(
            f"ids must be ({B},) integers matching images, got shape {tuple(ids.shape)} "
            f"dtype {ids.dtype}")
    if B and int(ids.min()) < 0:
        raise GalguardValueError(f"ids must be >= 0, got minimum {int(ids.min())}")
    return ids.to(device=device, dtype=torch.int64)


def _resolve_bounds(spec, model, images):
    """(B, C) float32 lo and hi on the images' device."""
    B, C = images.shape[:2]
    device = images.device
    if spec == "cutout":
        flat = images.reshape(B, C, -1)
        if flat.shape[-1] == 0:
            raise GalguardValueError(f"images must have H, W > 0, got {tuple(images.shape)}")
        return flat.amin(dim=2).contiguous(), flat.amax(dim=2).contiguous()
    if spec == "saturation":
        raise GalguardValueError(
            "bounds='saturation' needs each cutout's saturation level: pass bounds=(lo, hi) to "
            "the call (see galguard.checks.physical_bounds), or use galguard.check")
    if spec == "paper":
        lo, hi = paper_bounds(model, C)
    else:
        lo, hi = spec
    lo = np.full(C, lo, dtype=np.float32) if np.ndim(lo) == 0 else np.array(lo, np.float32)
    hi = np.full(C, hi, dtype=np.float32) if np.ndim(hi) == 0 else np.array(hi, np.float32)
    for name, arr in (("lo", lo), ("hi", hi)):
        if np.shape(arr) != (C,):
            raise GalguardValueError(
                f"bounds {name} must be a scalar or have one value per band ({C},), got shape "
                f"{np.shape(arr)}")
    lo_t = torch.as_tensor(np.asarray(lo, dtype=np.float32), device=device)
    hi_t = torch.as_tensor(np.asarray(hi, dtype=np.float32), device=device)
    return lo_t.expand(B, C).contiguous(), hi_t.expand(B, C).contiguous()


def _per_image_bounds(bounds, B, C, device):
    """(B, C) float32 lo and hi from per-image bounds given to a call."""
    out = []
    for name, arr in zip(("lo", "hi"), bounds):
        t = torch.as_tensor(np.asarray(arr, np.float32), device=device)
        if t.shape != (B, C) or not bool(torch.isfinite(t).all()):
            raise GalguardValueError(
                f"bounds {name} of a call must be finite with shape ({B}, {C}), got "
                f"{tuple(t.shape)}")
        out.append(t.contiguous())
    if bool((out[0] > out[1]).any()):
        raise GalguardValueError("bounds of a call must have lo <= hi")
    return out[0], out[1]


def paper_bounds(model, channels):
    """Raw-value bounds of the DeepAdversaries [0, 1] normalised space for `model`.

    Parameters
    ----------
    model : torch.nn.Module
        A `galguard.models.GalaxyClassifier` (or any module with a ``preprocess`` holding per-band
        ``lo``, ``hi`` and ``scale`` buffers), or a plain module.
    channels : int
        Number of bands.

    Returns
    -------
    lo, hi : numpy.ndarray
        (C,) float32 bounds in the model's raw input units.

    Notes
    -----
    The frozen preprocessing maps raw flux x to ``y = (asinh(c clip(x, l, h)) + 1) / 2``. The
    raw values mapping to y = 0 and y = 1 are ``-sinh(1)/c`` and ``sinh(1)/c``; the clip limits
    l and h cut that interval further, since raw values past them give the same y. So the bounds
    are ``[max(l, -sinh(1)/c), min(h, sinh(1)/c)]`` per band: every normalised value the
    paper's attack could write that a raw-flux pixel can produce. (The paper wrote normalised
    values directly; those outside the clipped range cannot be made by any raw pixel.) For a plain
    module without that preprocessing the bounds are the raw values 0 and 1.
    """
    pre = getattr(model, "preprocess", None)
    consts = [getattr(pre, name, None) for name in ("lo", "hi", "scale")]
    if pre is None or any(not isinstance(c, torch.Tensor) for c in consts):
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    l, h, c = (t.detach().double().cpu().numpy().reshape(-1) for t in consts)
    if l.shape != (channels,):
        raise GalguardValueError(
            f"bounds='paper': the model's preprocessing has {l.size} bands but images have "
            f"{channels}")
    s = math.sinh(1.0) / c
    lo = np.maximum(l, -s)
    hi = np.minimum(h, s)
    return lo.astype(np.float32), hi.astype(np.float32)

"""Stability of predictions under shallower-depth Poisson noise.

A cutout in sky-subtracted flux f with sky level s and gain g (electrons per flux unit) holds about
k = g (f + s) electrons. Two ways of making a shallower version (a fraction p of the exposure;
LSST Y10 -> Y1 is p ~ 0.1) are provided:

``mode="thin"`` (default, exact for Poisson counts)
    ``k = max(round(g (f + s)), 0)``, ``k' ~ Binomial(k, p)``, ``f' = k' / (g p) - s``. If k is
    Poisson with mean m, k' is Poisson with mean p m: exactly the count of a p-times shorter
    exposure. The rounding is the only approximation (the data are not integer counts).
``mode="poisson"`` (additive approximation)
    ``lam = g max(f + s, 0) (1/p - 1)``, ``n ~ Poisson(lam)``, ``f' = f + (n - lam) / g``. It adds
    the missing variance ``(f + s)(1/p - 1) / g`` as Poisson noise on top of the observed image,
    so the total variance matches the shallower depth, but it treats the noisy observed flux as
    the true mean and the added noise is independent of the noise already there: an
    approximation, kept for comparison with codes that "add Poisson noise".

The gain may be given per pixel (an effective gain map, see `effective_gain`): a variance plane
gives g = (f + s) / var pixel by pixel, which makes the thinning exact for Poisson counts where
the gain varies across the cutout (stacks of unequal depth).

Random draws come from the compiled core (`galguard.kernels`), keyed on (seed, global cutout
index, realisation, pixel), so a cutout's noisy versions do not depend on its batch.

Counts of any size are handled. The compiled samplers are exact up to 2**31 electrons a pixel
(thinning) and means of 1e15 (Poisson); the few pixels beyond (a bright star's core: 4e5 e-/s at
gain 5520 is 2.2e9 electrons) are drawn with numpy's exact int64 binomial and Poisson samplers
from a generator keyed on (seed, cutout index, realisation), so they too are independent of the
batch; past 2**53 electrons (where float64 no longer holds every integer) the normal
approximation is used, whose relative error there is below 1e-8.
"""

import dataclasses
import logging

import numpy as np
import torch

from .._model_io import evaluating, forward_probs
from .._validate import validate_int
from ..errors import GalguardValueError
from .latent import latent_shift

__all__ = ["degrade", "noise_stability", "effective_gain", "NoiseResult", "MODES"]

log = logging.getLogger(__name__)

MODES = ("thin", "poisson")


def _kernels():
    from .. import kernels
    return kernels


def _per_band(name, value, N, C, device, per_pixel=None):
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device=device, dtype=torch.float64)
    else:
        t = torch.as_tensor(np.asarray(value, dtype=np.float64), device=device)
    if t.ndim == 0:
        t = t.expand(N, C)
    elif t.ndim == 1 and t.shape[0] == C:
        t = t.expand(N, C)
    if per_pixel is not None and t.ndim == 4:
        if tuple(t.shape) != tuple(per_pixel):
            raise GalguardValueError(f"{name} must be a scalar, ({C},), ({N}, {C}) or the images' "
                                     f"shape {tuple(per_pixel)}, got shape {tuple(t.shape)}")
        return t
    if t.shape != (N, C):
        raise GalguardValueError(
            f"{name} must be a scalar, ({C},) or ({N}, {C}), got shape {tuple(t.shape)}")
    return t.reshape(N, C, 1, 1)


def _validate_p(p):
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise GalguardValueError(f"p must be a number in (0, 1], got {p!r}") from None
    if not (0.0 < p <= 1.0):
        raise GalguardValueError(f"p must be in (0, 1], got {p!r}")
    return p


def degrade(images, *, gain, sky, p=0.1, mode="thin", seed=0, index=None, realisation=0):
    """One shallower-depth realisation of each image.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W) sky-subtracted flux; not modified.
    gain : float or array-like
        Electrons per flux unit: scalar, (C,), (N, C) or per pixel (N, C, H, W); finite and > 0.
    sky : float or array-like
        Subtracted sky level in flux units: scalar, (C,) or (N, C); finite.
    p : float, optional
        Fraction of the exposure kept, in (0, 1] (0.1: LSST Y10 -> Y1).
    mode : {"thin", "poisson"}, optional
        Exact binomial thinning of the counts, or the additive-Poisson approximation (see the
        module docstring).
    seed : int, optional
        Random seed.
    index : array-like of int, optional
        (N,) global cutout indices keying the random streams (default ``arange(N)``).
    realisation : int, optional
        Realisation number r; different r give independent draws.

    Returns
    -------
    torch.Tensor
        (N, C, H, W) float32 on the images' device.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise GalguardValueError(f"images must be a (N, C, H, W) torch.Tensor, got {got}")
    if mode not in MODES:
        raise GalguardValueError(f"mode must be one of {MODES}, got {mode!r}")
    p = _validate_p(p)
    N, C = images.shape[:2]
    device = images.device
    g = _per_band("gain", gain, N, C, device, per_pixel=tuple(images.shape))
    s = _per_band("sky", sky, N, C, device)
    if not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
        raise GalguardValueError("gain must be finite and > 0 in every band")
    if not bool(torch.isfinite(s).all()):
        raise GalguardValueError("sky must be finite in every band")
    if index is None:
        index = torch.arange(N, dtype=torch.int64, device=device)
    else:
        index = torch.as_tensor(index, dtype=torch.int64, device=device)
        if index.shape != (N,):
            raise GalguardValueError(
                f"index must have shape ({N},), got {tuple(index.shape)}")
    k = _kernels()
    f = images.double()
    electrons = (g * (f + s)).clamp_min(0.0)
    if mode == "thin":
        counts = torch.round(electrons).contiguous()
        big = counts > k.MAX_COUNT
        thinned = k.binomial_thin(torch.where(big, 0.0, counts), p, seed=seed, index=index,
                                  realisation=realisation)
        if bool(big.any()):
            thinned = _large(thinned, counts, big, p, "thin", seed, index, realisation)
        out = thinned.double() / (g * p) - s
    else:
        lam = (electrons * (1.0 / p - 1.0)).contiguous()
        big = lam > k.MAX_MEAN
        n = k.poisson(torch.where(big, 0.0, lam), seed=seed, index=index,
                      realisation=realisation)
        if bool(big.any()):
            n = _large(n, lam, big, p, "poisson", seed, index, realisation)
        out = f + (n.double() - lam) / g
    return out.to(torch.float32)


#: the stream tag of the draws for counts beyond the compiled samplers' range
_LARGE_TAG = 0x6C61726765
_EXACT_LIMIT = 2.0**53


def _large(drawn, values, big, p, mode, seed, index, realisation):
    """Draws for the pixels ``big`` (counts or means beyond the compiled samplers' range): numpy's
    exact int64 samplers with one generator per (seed, cutout index, realisation), pixels in
    flat order; the normal approximation past 2**53."""
    out = drawn.double().cpu().numpy().copy()
    vals = values.double().cpu().numpy()
    mask = big.cpu().numpy()
    ids = index.cpu().numpy()
    for r in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        rng = np.random.default_rng([int(seed), int(ids[r]), int(realisation), _LARGE_TAG])
        sel = mask[r]
        v = vals[r][sel]
        exact = v <= _EXACT_LIMIT
        res = np.empty_like(v)
        if mode == "thin":
            res[exact] = rng.binomial(v[exact].astype(np.int64), p)
            mean, var = v[~exact] * p, v[~exact] * p * (1.0 - p)
        else:
            res[exact] = rng.poisson(v[exact])
            mean, var = v[~exact], v[~exact]
        if (~exact).any():
            res[~exact] = np.round(mean + np.sqrt(var) * rng.standard_normal(mean.shape))
        out[r][sel] = res
    return torch.from_numpy(out).to(device=drawn.device, dtype=torch.float64)


def effective_gain(images, variance, *, sky, gain, mask=None):
    """Per-pixel effective gain ``g = (f + s) / var`` (electrons per data unit) from a variance.

    Parameters
    ----------
    images : array-like, (N, C, H, W)
        Sky-subtracted flux f.
    variance : array-like, (N, C, H, W)
        Its variance (NaN where unknown).
    sky : array-like, (N, C)
        Subtracted sky levels s.
    gain : array-like, (N, C)
        Each plane's gain, used where the per-pixel value is ill-defined.
    mask : array-like of bool, (N, C, H, W), optional
        Masked pixels take the plane's gain.

    Returns
    -------
    numpy.ndarray
        float64 (N, C, H, W). Where the variance is not finite or not positive, the pixel is
        masked, or ``f + s <= 0`` (below the sky: no electrons to thin, so the gain does not
        matter there), the plane's ``gain``.
    """
    f = np.asarray(images, np.float64)
    v = np.asarray(variance, np.float64)
    s = np.asarray(sky, np.float64)[:, :, None, None]
    g = np.broadcast_to(np.asarray(gain, np.float64)[:, :, None, None], f.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = (f + s) / v
    ok = np.isfinite(v) & (v > 0) & (f + s > 0) & np.isfinite(pix) & (pix > 0)
    if mask is not None:
        ok &= ~np.asarray(mask, bool)
    return np.where(ok, pix, g)


@dataclasses.dataclass
class NoiseResult:
    """Per-image outcome of `noise_stability` (tensors on the images' device).

    Attributes
    ----------
    flip_rate : torch.Tensor
        (N,) fraction of realisations whose predicted class differs from the original's.
    prob_drop : torch.Tensor
        (N,) mean over realisations of p_orig(c) - p_noisy(c), c the original predicted class.
    latent_shift : torch.Tensor
        (N,) mean over realisations of the Euclidean latent distance (NaN when the model returns
        no latent), not normalised.
    pred_label : torch.Tensor
        (N,) original predicted class.
    pred_prob : torch.Tensor
        (N,) original probability of that class.
    """

    flip_rate: torch.Tensor
    prob_drop: torch.Tensor
    latent_shift: torch.Tensor
    pred_label: torch.Tensor
    pred_prob: torch.Tensor


def noise_stability(model, images, *, gain, sky, p=0.1, realisations=8, mode="thin", seed=0,
                    index=None, batch_size=256, clean=None):
    """Flip rate, probability drop and latent shift under K shallower-depth realisations.

    Parameters
    ----------
    model : torch.nn.Module
        Maps raw (N, C, H, W) images to logits or ``(latent, logits)``.
    images : torch.Tensor
        (N, C, H, W) sky-subtracted flux; not modified.
    gain, sky, p, mode, seed, index
        See `degrade`.
    realisations : int, optional
        Number K of noisy versions per image (realisation numbers 0..K-1).
    batch_size : int, optional
        Images per model call; affects only speed and memory.
    clean : tuple of torch.Tensor, optional
        ``(latent or None, probs)`` of the original images if already computed.

    Returns
    -------
    NoiseResult

    Notes
    -----
    The model is put in eval mode (and its mode restored) and run under `torch.inference_mode`.
    """
    realisations = validate_int("realisations", realisations, minimum=1)
    batch_size = validate_int("batch_size", batch_size, minimum=1)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise GalguardValueError(f"images must be a (N, C, H, W) torch.Tensor, got {got}")
    with evaluating(model):
        N = images.shape[0]
        if clean is None:
            latent0, probs0 = forward_probs(model, images, batch_size)
        else:
            latent0, probs0 = clean
        if N == 0:
            z = torch.zeros(0, device=images.device)
            return NoiseResult(z, z, z, z.long(), z)
        pred = probs0.argmax(dim=1)
        p0 = probs0.gather(1, pred[:, None])[:, 0]
        flips = torch.zeros(N, dtype=torch.float64, device=images.device)
        drop = torch.zeros(N, dtype=torch.float64, device=images.device)
        shift = torch.zeros(N, dtype=torch.float64, device=images.device)
        for r in range(realisations):
            noisy = degrade(images, gain=gain, sky=sky, p=p, mode=mode, seed=seed,
                            index=index, realisation=r)
            latent, probs = forward_probs(model, noisy, batch_size)
            flips += (probs.argmax(dim=1) != pred).double()
            drop += (p0 - probs.gather(1, pred[:, None])[:, 0]).double()
            if latent0 is not None and latent is not None:
                shift += latent_shift(latent0, latent).double()
        K = float(realisations)
        if latent0 is None:
            shift = torch.full_like(shift, float("nan"))
        return NoiseResult(flip_rate=(flips / K).float(), prob_drop=(drop / K).float(),
                           latent_shift=(shift / K).float(), pred_label=pred,
                           pred_prob=p0.float())

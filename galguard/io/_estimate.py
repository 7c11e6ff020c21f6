"""Sky level and gain from the border of a cutout (photutils background estimators)."""

import logging
import warnings

import numpy as np
from astropy.stats import SigmaClip
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import GalguardValueError

__all__ = ["border_background", "variance_gain", "default_border", "DEFAULT_GAIN",
           "RAW_SKY_NSIGMA"]

log = logging.getLogger(__name__)

#: gain (e- per data unit) used where a header has none and none can be estimated
DEFAULT_GAIN = 1.0

#: with ``subtract_sky="auto"``, a border level above this many per-pixel noise sigmas means
#: the image still holds its sky (it was not sky-subtracted)
RAW_SKY_NSIGMA = 3.0

#: fewer usable border pixels than this give NaN estimates
MIN_BORDER_PIXELS = 16


def default_border(height, width):
    """Default border width in pixels: ``max(2, min(H, W) // 8)`` (12 for 100 x 100)."""
    return max(2, min(height, width) // 8)


def border_background(data, *, mask=None, border=None):
    """Sky level and noise variance of each plane, from the pixels of the cutout border.

    Parameters
    ----------
    data : ndarray, shape (..., H, W)
        Cutout planes.
    mask : ndarray of bool, same shape, optional
        True pixels are ignored (as are non-finite ones).
    border : int, optional
        Width in pixels of the frame used (default `default_border`).

    Returns
    -------
    level, variance : ndarray, shape (...)
        Sigma-clipped median (`photutils.background.MedianBackground`, 3 sigma, 5 iterations)
        and the square of the biweight scale (`photutils.background.BiweightScaleBackgroundRMS`,
        nearly unbiased for Gaussian noise and robust to galaxy wings and stars) of the border
        pixels. NaN where fewer than 16 usable pixels remain.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = rng.poisson(400.0, size=(64, 64)).astype(np.float32)
    >>> level, var = border_background(img)
    >>> bool(abs(level - 400) < 3 and abs(var / 400 - 1) < 0.15)
    True
    """
    from photutils.background import BiweightScaleBackgroundRMS, MedianBackground

    a = np.asarray(data)
    if a.ndim < 2:
        raise GalguardValueError(f"data must have shape (..., H, W), got {a.shape}")
    lead = a.shape[:-2]
    h, w = a.shape[-2:]
    if border is None:
        border = default_border(h, w)
    b = int(border)
    if b < 1:
        raise GalguardValueError(f"border must be a positive number of pixels, got {border!r}")
    ring = np.ones((h, w), dtype=bool)
    if h > 2 * b and w > 2 * b:
        ring[b:h - b, b:w - b] = False
    flat = a.reshape((-1, h, w))
    vals = flat[:, ring].astype(np.float64)
    bad = ~np.isfinite(vals)
    if mask is not None:
        bad |= np.asarray(mask).reshape((-1, h, w))[:, ring]
    vals[bad] = np.nan
    npix = (~bad).sum(axis=1)
    level = np.full(flat.shape[0], np.nan)
    var = np.full(flat.shape[0], np.nan)
    ok = npix >= MIN_BORDER_PIXELS
    if ok.any():
        sc = SigmaClip(sigma=3.0, maxiters=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            lv = MedianBackground(sigma_clip=sc)(vals[ok], axis=1)
            rms = BiweightScaleBackgroundRMS(sigma_clip=sc)(vals[ok], axis=1)
        level[ok] = np.asarray(lv, dtype=np.float64)
        var[ok] = np.asarray(rms, dtype=np.float64) ** 2
    return level.reshape(lead), var.reshape(lead)


#: fewer usable pixels than this give no variance-based estimate
MIN_VARIANCE_PIXELS = 16

#: a fitted gain whose relative standard error exceeds this is not used (the variance spans too
#: small a range of flux to separate the gain from the sky level)
MAX_GAIN_REL_ERROR = 0.02


def variance_gain(data, variance, *, mask=None, sky=None):
    """Gain and sky level of each plane from its variance plane (Poisson: var = (f + s) / g).

    Parameters
    ----------
    data : ndarray, shape (..., H, W)
        Sky-subtracted flux f.
    variance : ndarray, same shape
        Per-pixel variance of ``data``.
    mask : ndarray of bool, same shape, optional
        Pixels to leave out (as are those with a non-finite or non-positive variance).
    sky : ndarray, shape (...), optional
        Known sky levels s (NaN where unknown).

    Returns
    -------
    gain, sky : ndarray, shape (...)
        NaN where no estimate is possible (fewer than 16 usable pixels, or for an unknown sky a
        fit whose gain has a relative standard error above 2 %).

    Notes
    -----
    Sky known: the gain is the median over the usable pixels of :math:`(f + s) / \\sigma^2`
    (pixels with :math:`f + s > 0`). Sky unknown: the weighted least-squares line
    :math:`f = g \\sigma^2 - s` (weights :math:`1 / \\sigma^2`, one 5-sigma clipping pass) gives
    both. This regresses the noisy flux on the variance, so a variance computed from a noiseless
    model and one computed from the observed image (Rubin's ISR) both give unbiased values. Read
    noise :math:`\\sigma_{rn}` enters the sky as :math:`s + g \\sigma_{rn}^2`, which is what the
    noise check's count model :math:`k = g (f + s)` needs to reproduce the variance.
    """
    f = np.asarray(data, np.float64)
    v = np.asarray(variance, np.float64)
    lead = f.shape[:-2]
    f2 = f.reshape((-1, f.shape[-2] * f.shape[-1]))
    v2 = v.reshape(f2.shape)
    ok = np.isfinite(f2) & np.isfinite(v2) & (v2 > 0)
    if mask is not None:
        ok &= ~np.asarray(mask, bool).reshape(f2.shape)
    s_in = np.full(f2.shape[0], np.nan) if sky is None else \
        np.broadcast_to(np.asarray(sky, np.float64), lead).reshape(-1)
    gain = np.full(f2.shape[0], np.nan)
    sky_out = s_in.copy()
    for i in range(f2.shape[0]):
        sel = ok[i]
        if sel.sum() < MIN_VARIANCE_PIXELS:
            continue
        fi, vi = f2[i, sel], v2[i, sel]
        if np.isfinite(s_in[i]):
            pos = fi + s_in[i] > 0
            if pos.sum() >= MIN_VARIANCE_PIXELS:
                gain[i] = float(np.median((fi[pos] + s_in[i]) / vi[pos]))
            continue
        g, s = _fit_line(fi, vi)
        if np.isfinite(g):
            gain[i], sky_out[i] = g, s
    return gain.reshape(lead), sky_out.reshape(lead)


def _fit_line(f, v):
    """WLS f = g v - s with weights 1/v and one 5-sigma clipping pass; NaN when ill-determined."""
    keep = np.ones(f.shape, bool)
    for _ in range(2):
        w = 1.0 / v[keep]
        x, y = v[keep], f[keep]
        sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
        sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
        det = sw * sxx - sx * sx
        if not det > 0:
            return np.nan, np.nan
        g = (sw * sxy - sx * sy) / det
        a = (sy - g * sx) / sw
        resid = (f - (g * v + a)) * np.sqrt(1.0 / v)
        new = np.abs(resid) < 5.0 * max(np.sqrt(np.mean(resid[keep] ** 2)), 1e-300)
        if new.sum() < MIN_VARIANCE_PIXELS or np.array_equal(new, keep):
            break
        keep = new
    dof = max(int(keep.sum()) - 2, 1)
    chi2 = float(((f[keep] - (g * v[keep] + a)) ** 2 / v[keep]).sum()) / dof
    g_err = np.sqrt(max(chi2, 1e-300) * sw / det)
    if not (g > 0 and g_err < MAX_GAIN_REL_ERROR * g):
        return np.nan, np.nan
    return float(g), float(-a)

"""Sky level and gain from the border of a cutout (photutils background estimators)."""

import logging
import warnings

import numpy as np
from astropy.stats import SigmaClip
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import GalguardValueError

__all__ = ["border_background", "default_border", "DEFAULT_GAIN", "RAW_SKY_NSIGMA"]

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

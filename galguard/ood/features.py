"""Input-space statistics of a cutout: what its pixels say about units, depth, resolution and
band order, without looking at the model.

Each cutout gets `FEATURE_NAMES` (for C bands; the middle band is the colour reference):

- ``noise_b``: log10 of the border's robust noise sigma (1.4826 x MAD) per band: the units and
  the depth (counts instead of flux, an 8-bit render, another survey's depth);
- ``peak_b``: asinh of the 99.5th percentile above the border level, in sigmas: the dynamic range;
- ``colour_b``: asinh of each band's central flux over the reference band's: band order swapped
  or a band missing;
- ``size``: log10 of the second-moment radius (pixels) of the light above 3 sigma in the band sum:
  other pixel scales, much larger or smaller galaxies;
- ``core``: log10 of the number of pixels above half the peak of the band sum: the PSF and the
  concentration;
- ``distinct``: log10 of the fraction of distinct pixel values, capped at log10(0.1): a few
  percent for 8-bit renders; at the cap for float flux, compressed data and the simulator's
  (quantised in steps of 1 / gain), which must not differ from one another;
- ``integer``: the fraction of integer-valued pixels (counts, renders).

`profile_features` adds the steepness of the light profile around the peak (``slope_core``,
``slope_wing``) and the width of its best-matching Gaussian (``sharpness``, from GalSim's adaptive
moments), which the ``psf`` scorer compares with reference galaxies of the same size and
brightness: a wider PSF (worse seeing) or a lower resolution flattens and widens it.

These are the statistics a survey scientist would look at first; `galguard.ood` compares them
with the model's reference set (a Mahalanobis distance with Ledoit-Wolf shrinkage). The border
level is not one of them: `galguard.io` subtracts a sky left in the image before any check, and
galaxy light reaching the border made it flag bright, large galaxies.
"""

import numpy as np

__all__ = ["input_features", "feature_names", "describe_feature", "border_level_sigma",
           "profile_features", "PROFILE_NAMES", "DISTINCT_CAP"]

#: the columns of `profile_features`
PROFILE_NAMES = ("slope_core", "slope_wing", "sharpness")
#: ring radii (pixels) of `profile_features` around the peak: core, inner ring, outer ring
_RINGS = ((0.0, 1.0), (1.5, 3.0), (3.0, 5.0))

#: the distinct-value statistic is capped here (log10 of a fraction): only fewer distinct values
#: than that (renders, 8-bit data) count
DISTINCT_CAP = -1.0

_TEXT = {
    "noise": "background noise level",
    "peak": "peak brightness over the noise (dynamic range)",
    "colour": "colour (flux ratio to the reference band)",
    "size": "size of the light distribution",
    "core": "size of the bright core (PSF, concentration)",
    "distinct": "number of distinct pixel values (quantised data, e.g. an 8-bit render)",
    "integer": "integer-valued pixels (counts, or an image render)",
    "slope": "steepness of the light profile at its peak (PSF, resolution)",
}


def feature_names(bands):
    """The names of `input_features` for these band names (or a band count)."""
    if isinstance(bands, int):
        bands = [str(k) for k in range(bands)]
    bands = [b or str(k) for k, b in enumerate(bands)]
    ref = len(bands) // 2
    names = [f"noise_{b}" for b in bands] + [f"peak_{b}" for b in bands] + \
        [f"colour_{b}" for k, b in enumerate(bands) if k != ref]
    return tuple(names + ["size", "core", "distinct", "integer"])


def describe_feature(name, z):
    """Words for a feature ``name`` that lies ``z`` reference standard deviations off."""
    stem, _, band = name.partition("_")
    where = f" in band {band}" if band else ""
    direction = "higher" if z > 0 else "lower"
    return f"{_TEXT.get(stem, stem)}{where} {direction} than in the training data ({abs(z):.0f} sigma)"


def border_level_sigma(images, *, border=None):
    """Median and robust noise sigma (1.4826 x MAD) of each plane's border frame, (N, C) each
    (border width `galguard.io.default_border` unless given)."""
    from ..io._estimate import default_border

    x = np.asarray(images, np.float64)
    h, w = x.shape[-2:]
    b = default_border(h, w) if border is None else int(border)
    ring = np.ones((h, w), bool)
    if h > 2 * b and w > 2 * b:
        ring[b:h - b, b:w - b] = False
    edge = x[..., ring]
    level = np.median(edge, axis=-1)
    return level, 1.4826 * np.median(np.abs(edge - level[..., None]), axis=-1)


def input_features(images, *, border=None):
    """Input statistics of each cutout (see the module docstring).

    Parameters
    ----------
    images : array-like, (N, C, H, W)
        Flux in the data's units (masked pixels as the reader left them).
    border : int, optional
        Width of the border frame (default ``max(2, min(H, W) // 8)``).

    Returns
    -------
    numpy.ndarray
        float64 (N, F), F = ``len(feature_names(C))``; finite everywhere.
    """
    x = np.asarray(images, np.float64)
    n, c, h, w = x.shape
    x = np.where(np.isfinite(x), x, 0.0)
    flat = x.reshape(n, c, h * w)
    level, sigma = border_level_sigma(x, border=border)
    tiny = 1e-12 * np.maximum(np.abs(flat).max(axis=2), 1e-30)
    sig = np.maximum(sigma, np.maximum(tiny, 1e-30))
    peak = np.percentile(flat, 99.5, axis=2) - level
    yy, xx = np.mgrid[:h, :w]
    rr2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)
    centre = rr2 <= (min(h, w) / 4) ** 2
    cflux = (x[:, :, centre] - level[..., None]).sum(axis=2)        # (N, C)
    ref = c // 2
    csig = sig[:, ref] * np.sqrt(centre.sum())
    colour = [np.arcsinh(cflux[:, k] / np.maximum(np.abs(cflux[:, ref]), 3 * csig))
              for k in range(c) if k != ref]
    total = ((x - level[..., None, None]) / sig[..., None, None]).sum(axis=1)  # (N, H, W), in sigmas
    above = total > 3.0 * np.sqrt(c)
    wgt = np.where(above, total, 0.0)
    sw = wgt.sum(axis=(1, 2))
    r2 = (wgt * rr2[None]).sum(axis=(1, 2)) / np.maximum(sw, 1e-30)
    size = np.where(sw > 0, 0.5 * np.log10(np.maximum(r2, 0.25)), -1.0)
    tpeak = total.reshape(n, -1).max(axis=1)
    core = np.log10(np.maximum((total > 0.5 * tpeak[:, None, None]).sum(axis=(1, 2)), 1))
    srt = np.sort(flat, axis=2)
    distinct = ((np.diff(srt, axis=2) != 0).sum(axis=2) + 1) / (h * w)
    integer = (flat == np.round(flat)).mean(axis=2)
    parts = [np.log10(sig), np.arcsinh(peak / sig)]
    if colour:
        parts.append(np.stack(colour, 1))
    few = np.minimum(np.log10(np.maximum(distinct.mean(axis=1), 1e-6)), DISTINCT_CAP)
    parts.append(np.stack([size, core, few, integer.mean(axis=1)], 1))
    out = np.concatenate(parts, axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def profile_features(images, *, border=None, rings=_RINGS):
    """Steepness of the light profile around the peak, (N, 3) float64 (`PROFILE_NAMES`):

    - ``slope_core``: the asinh of the mean band sum (in noise sigmas) within 1 pixel of the
      peak minus that of the ring 1.5-3 pixels out;
    - ``slope_wing``: the ring 1.5-3 minus the ring 3-5 pixels out;
    - ``sharpness``: -log10 of the sigma (pixels) of the elliptical Gaussian that best matches
      the band sum (adaptive moments, `galsim.hsm.FindAdaptiveMom`, started at the peak; a
      Gaussian convolved with a wider PSF has a larger one). Where the moments do not converge
      (no source, pure noise) it is -log10 of half the cutout's size: as flat as a cutout can
      be.

    The peak is the brightest pixel of the band sum within 6 pixels of the centroid of its
    light above 2 sigma (the image centre without such light). In asinh units the slopes are
    log ratios for bright galaxies and differences in sigmas for faint ones, so the ``psf``
    scorer compares them with reference galaxies of the same brightness and size. A wider PSF
    or a coarser resolution flattens the profile; a larger galaxy does too, which the
    comparison at the same size tells apart. The slopes are finite everywhere; deterministic.
    """
    x = np.asarray(images, np.float64)
    n, c, h, w = x.shape
    x = np.where(np.isfinite(x), x, 0.0)
    level, sigma = border_level_sigma(x, border=border)
    tiny = 1e-12 * np.maximum(np.abs(x).reshape(n, c, -1).max(axis=2), 1e-30)
    sig = np.maximum(sigma, np.maximum(tiny, 1e-30))
    tot = ((x - level[..., None, None]) / sig[..., None, None]).sum(axis=1) / np.sqrt(c)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    wgt = np.where(tot > 2.0, tot, 0.0)
    sw = wgt.sum(axis=(1, 2))
    cy = np.where(sw > 0, (wgt * yy).sum(axis=(1, 2)) / np.maximum(sw, 1e-30), (h - 1) / 2)
    cx = np.where(sw > 0, (wgt * xx).sum(axis=(1, 2)) / np.maximum(sw, 1e-30), (w - 1) / 2)
    near = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2 < 36.0
    pk = np.where(near, tot, -np.inf).reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(pk, w)
    # the rings in a window around the peak (pixels outside the image left out)
    reach = int(np.ceil(max(b for _, b in rings)))
    d = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    r2 = (dy * dy + dx * dx).ravel().astype(np.float64)
    wy = py[:, None] + dy.ravel()[None, :]
    wx = px[:, None] + dx.ravel()[None, :]
    inside = (wy >= 0) & (wy < h) & (wx >= 0) & (wx < w)
    win = tot[np.arange(n)[:, None], np.clip(wy, 0, h - 1), np.clip(wx, 0, w - 1)]
    means = []
    for a, b in rings:
        ring = inside & (r2 <= b * b) & ((r2 > a * a) if a > 0 else True)
        means.append(np.arcsinh((win * ring).sum(axis=1) / np.maximum(ring.sum(axis=1), 1)))
    slopes = np.stack([means[j] - means[j + 1] for j in range(len(means) - 1)], axis=1)
    slopes = np.where(np.isfinite(slopes), slopes, 0.0)
    return np.concatenate([slopes, _sharpness(tot, py, px)[:, None]], axis=1)


def _sharpness(tot, py, px):
    """-log10 of the adaptive-moment sigma (pixels) of each band sum `tot` (N, H, W), started
    at the peaks (py, px); NaN where the moments fail or are wider than half the cutout."""
    import galsim

    n, h, w = tot.shape
    out = np.full(n, np.nan)
    for i in range(n):
        img = galsim.Image(np.ascontiguousarray(tot[i], dtype=np.float64), scale=1.0)
        try:
            m = galsim.hsm.FindAdaptiveMom(img, guess_centroid=galsim.PositionD(px[i] + 1.0,
                                                                                py[i] + 1.0),
                                           strict=True)
        except (galsim.GalSimHSMError, galsim.GalSimError, RuntimeError, ValueError):
            continue
        sig = float(m.moments_sigma)
        if np.isfinite(sig) and 0 < sig < min(h, w) / 2.0:
            out[i] = -np.log10(sig)
    return out

"""Simulated LSST-like galaxy cutouts: spirals, ellipticals and mergers at Y10 and Y1 depth.

GalSim renders the smooth (Sersic) components of each galaxy; spiral arms, star-forming knots,
discs and tidal features are drawn as numpy patterns on a 3x oversampled grid and convolved with
the same PSF. Each galaxy is rendered once without noise and then observed at every requested
depth by drawing Poisson counts from the counts model of ``docs/contracts.md``::

    k ~ Poisson(gain * (f + sky)),      f_obs = k / gain - sky

with ``f`` the noiseless flux (electron/s per pixel), ``sky`` the sky level (electron/s per
pixel) and ``gain`` the total exposure time of the coadd in that band (electrons per data unit).

Everything random about galaxy ``index`` comes from ``numpy.random.SeedSequence([seed, index,
...])``, so a galaxy is the same whatever ``n``, ``start`` or ``n_jobs`` it was produced with,
and the noise of each depth comes from its own stream keyed on ``(seed, index, depth)``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib.resources
import logging
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from ._files import atomic_write
from .errors import GalguardValueError

__all__ = [
    "CLASSES",
    "BANDS",
    "DEPTHS",
    "PIXEL_SCALE",
    "BAND_PARAMS",
    "PAPER_CLASS_FRACTIONS",
    "SimData",
    "simulate",
    "class_labels",
    "depth_params",
    "write_fits",
    "sample_path",
    "make_mosaic",
]

logger = logging.getLogger(__name__)

CLASSES = ("spiral", "elliptical", "merger")
BANDS = ("g", "r", "i")
DEPTHS = ("y10", "y1")
PIXEL_SCALE = 0.2  #: arcsec per pixel (LSST)
VISIT_TIME = 30.0  #: s, one LSST visit (2 x 15 s snaps)

#: Per-band LSST constants.
#:
#: ``zeropoint``: AB magnitude giving 1 electron/s (syseng_throughputs v1.9, SMTN-002, as in
#: obs_lsst's ``fiducialZeroPoint`` for LSSTCam); ``sky_mag``: dark-sky brightness in
#: mag/arcsec^2 (SMTN-002); ``visits_y10``: number of 30 s visits after 10 years (LSST SRD,
#: Ivezic et al. 2019); ``wavelength``: effective wavelength in nm, used to scale the seeing
#: (FWHM proportional to wavelength^-0.2).
BAND_PARAMS = {
    "g": {"zeropoint": 28.51, "sky_mag": 22.24, "visits_y10": 80, "wavelength": 477.0},
    "r": {"zeropoint": 28.36, "sky_mag": 21.20, "visits_y10": 184, "wavelength": 622.0},
    "i": {"zeropoint": 28.17, "sky_mag": 20.47, "visits_y10": 184, "wavelength": 755.0},
}

#: Visit fraction of each depth relative to Y10 (Y1 = one tenth of the 10-year coadd).
_DEPTH_FRACTION = {"y10": 1.0, "y1": 0.1}
_DEPTH_CODE = {"y10": 10, "y1": 1}

#: Class fractions of the DeepAdversaries data set (spiral 43%, elliptical 24%, merger 33%).
PAPER_CLASS_FRACTIONS = (0.43, 0.24, 0.33)

_MIN_PER_WORKER = 32  # fewer galaxies per worker process are rendered in this process
_OVERSAMPLE = 3  # numpy patterns are drawn on a grid this many times finer than the pixels
_STREAM_GALAXY = 0
_STREAM_NOISE = 1
_STREAM_LABEL = 2
_STREAM_NEIGHBOUR = 3


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------

def _validate_int(name, value, *, minimum=None, maximum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GalguardValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise GalguardValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise GalguardValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _validate_depths(depths):
    if isinstance(depths, str):
        depths = (depths,)
    try:
        depths = tuple(depths)
    except TypeError:
        raise GalguardValueError(
            f"depths must be a sequence of 'y10' and/or 'y1', got {depths!r}") from None
    if not depths:
        raise GalguardValueError("depths must name at least one depth, got ()")
    out = []
    for d in depths:
        key = str(d).lower()
        if key not in _DEPTH_FRACTION:
            raise GalguardValueError(f"depths must contain only 'y10' or 'y1', got {d!r}")
        if key not in out:
            out.append(key)
    return tuple(out)


def _validate_depth(depth):
    key = str(depth).lower() if isinstance(depth, str) else None
    if key not in _DEPTH_FRACTION:
        raise GalguardValueError(f"depth must be 'y10' or 'y1', got {depth!r}")
    return key


def _validate_fractions(class_fractions):
    if class_fractions is None or (isinstance(class_fractions, str)
                                   and class_fractions == "balanced"):
        return None
    if isinstance(class_fractions, str):
        if class_fractions == "paper":
            return PAPER_CLASS_FRACTIONS
        raise GalguardValueError(
            "class_fractions must be 'balanced', 'paper' or three non-negative numbers, "
            f"got {class_fractions!r}")
    try:
        fr = np.asarray(class_fractions, dtype=float)
    except (TypeError, ValueError):
        fr = None
    if fr is None or fr.shape != (3,) or not np.all(np.isfinite(fr)) or np.any(fr < 0) \
            or fr.sum() <= 0:
        raise GalguardValueError(
            "class_fractions must be 'balanced', 'paper' or three non-negative numbers, "
            f"got {class_fractions!r}")
    return tuple(float(x) for x in fr / fr.sum())


# --------------------------------------------------------------------------------------------
# Observing conditions
# --------------------------------------------------------------------------------------------

def depth_params(depth):
    """Exposure time (= gain), sky level and zero point per band at a given depth.

    Parameters
    ----------
    depth : {'y10', 'y1'}
        Survey depth: the 10-year coadd, or the 1-year coadd (one tenth of the visits).

    Returns
    -------
    dict
        ``exptime`` (s), ``gain`` (electrons per data unit, equal to ``exptime`` because data
        are in electron/s), ``sky`` (electron/s per pixel) and ``zeropoint`` (AB magnitude of
        one electron/s); each an array of shape (3,) in ``BANDS`` order.

    Examples
    --------
    >>> p = depth_params("y1")
    >>> p["exptime"].tolist()
    [240.0, 552.0, 552.0]
    """
    depth = _validate_depth(depth)
    frac = _DEPTH_FRACTION[depth]
    exptime = np.array([BAND_PARAMS[b]["visits_y10"] * VISIT_TIME * frac for b in BANDS])
    zp = np.array([BAND_PARAMS[b]["zeropoint"] for b in BANDS])
    sky_mag = np.array([BAND_PARAMS[b]["sky_mag"] for b in BANDS])
    sky = 10.0 ** (-0.4 * (sky_mag - zp)) * PIXEL_SCALE ** 2
    return {"exptime": exptime, "gain": exptime.copy(), "sky": sky, "zeropoint": zp}


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

def _block_counts(fractions):
    """Class counts per block: exact fractions over every block of indices."""
    if fractions is None:
        return np.array([1, 1, 1])
    block = 100
    raw = np.asarray(fractions) * block
    counts = np.floor(raw).astype(int)
    rest = block - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def class_labels(indices, *, seed=0, class_fractions=None):
    """True class label of each galaxy index (0 spiral, 1 elliptical, 2 merger).

    Indices are grouped into blocks (3 for balanced classes, 100 otherwise); within a block the
    labels are a random permutation keyed on ``(seed, block)``, so every complete block holds
    the requested fractions exactly and a galaxy's label depends only on ``(seed, index)``.

    Parameters
    ----------
    indices : array_like of int
        Global galaxy indices (>= 0).
    seed : int, optional
        Simulation seed.
    class_fractions : None, 'balanced', 'paper' or sequence of 3 floats, optional
        Class fractions (spiral, elliptical, merger). Default: balanced.

    Returns
    -------
    numpy.ndarray of int64
    """
    seed = _validate_int("seed", seed, minimum=0, maximum=2**63 - 1)
    fractions = _validate_fractions(class_fractions)
    idx = np.asarray(indices)
    if idx.size and idx.dtype.kind not in "iu":
        raise GalguardValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if np.any(idx < 0):
        raise GalguardValueError(f"indices must be >= 0, got min {idx.min()}")
    counts = _block_counts(fractions)
    block_labels = np.repeat(np.arange(3), counts)
    bsize = block_labels.size
    blocks, inverse = np.unique(idx // bsize, return_inverse=True)
    perms = np.empty((blocks.size, bsize), dtype=np.int64)
    for k, b in enumerate(blocks):
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(b), _STREAM_LABEL]))
        perms[k] = rng.permutation(block_labels)
    return perms[inverse.reshape(-1), idx % bsize]


# --------------------------------------------------------------------------------------------
# Numpy pattern helpers (on the oversampled grid, coordinates in arcsec from the stamp centre)
# --------------------------------------------------------------------------------------------

class _Grid:
    def __init__(self, size):
        self.size = size
        self.os = _OVERSAMPLE
        self.n = size * self.os
        self.scale = PIXEL_SCALE / self.os
        self.width = size * PIXEL_SCALE
        c = (np.arange(self.n) + 0.5) * self.scale - size * PIXEL_SCALE / 2.0
        self.x = c[None, :]
        self.y = c[:, None]

    def to_pix(self, x, y):
        """Arcsec coordinates -> continuous oversampled pixel coordinates."""
        off = self.size * PIXEL_SCALE / 2.0
        return (np.asarray(x) + off) / self.scale - 0.5, (np.asarray(y) + off) / self.scale - 0.5

    def splat(self, x, y, w):
        """Bilinear deposit of weights ``w`` at arcsec positions (x, y)."""
        px, py = self.to_pix(x, y)
        x0 = np.floor(px).astype(np.int64)
        y0 = np.floor(py).astype(np.int64)
        fx = px - x0
        fy = py - y0
        out = np.zeros(self.n * self.n)
        for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi = x0 + dx
            yi = y0 + dy
            ok = (xi >= 0) & (xi < self.n) & (yi >= 0) & (yi < self.n)
            out += np.bincount(yi[ok] * self.n + xi[ok], weights=(w * ww)[ok],
                               minlength=self.n * self.n)
        return out.reshape(self.n, self.n)

    def bin(self, img):
        """Oversampled image -> pixel-integrated image at the stamp's pixel scale."""
        o = self.os
        return img.reshape(self.size, o, self.size, o).sum(axis=(1, 3))


def _disk_coords(grid, x0, y0, pa, q):
    """Disc-plane coordinates (u, v) of a thin disc at (x0, y0), position angle pa, axis ratio q.
    """
    dx = grid.x - x0
    dy = grid.y - y0
    c, s = math.cos(pa), math.sin(pa)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q
    return u, v


def _disk_to_sky(u, v, x0, y0, pa, q):
    c, s = math.cos(pa), math.sin(pa)
    vv = v * q
    return x0 + u * c - vv * s, y0 + u * s + vv * c


def _gauss_blur(img, sigma_arcsec, grid):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma_arcsec / grid.scale, mode="constant")


# --------------------------------------------------------------------------------------------
# Galaxy models. Each returns a list of components (kind, colour key, r-band flux weight, obj)
# where obj is a galsim profile ("gs") or an oversampled numpy image ("np").
# --------------------------------------------------------------------------------------------

# Colours (g - r, r - i) of stellar populations: mean and scatter.
_COLOURS = {
    "red": ((0.75, 0.05), (0.38, 0.03)),      # bulges, nuclei
    "early": ((0.72, 0.07), (0.37, 0.04)),    # elliptical galaxies
    "disk": ((0.50, 0.10), (0.26, 0.05)),     # old disc light
    "young": ((0.22, 0.10), (0.07, 0.06)),    # spiral arms, HII regions
    "tidal": ((0.58, 0.10), (0.29, 0.05)),    # tidal debris
    "mixed": ((0.58, 0.12), (0.30, 0.06)),    # interacting galaxies
    "field": ((0.60, 0.20), (0.30, 0.10)),    # unrelated neighbours
}


def _colour(rng, key):
    (gr, sgr), (ri, sri) = _COLOURS[key]
    return rng.normal(gr, sgr), rng.normal(ri, sri)


#: Default r-magnitude law of `simulate`: uniform in 18.5-22.5 (bright, well-resolved galaxies).
R_MAG_RANGE = (18.5, 22.5)


def _draw_r_mag(rng, mag_range, counts_slope):
    """One r magnitude: uniform in ``mag_range`` (slope 0) or from number counts
    ``dN/dm ~ 10**(counts_slope * m)`` truncated to it. Consumes exactly one uniform draw."""
    lo, hi = mag_range
    if counts_slope == 0:
        return rng.uniform(lo, hi)
    u = rng.uniform()
    b = counts_slope
    # inverse CDF of 10**(b m) on [lo, hi], written relative to hi for numerical range
    return hi + math.log10(10.0 ** (b * (lo - hi)) + u * (1.0 - 10.0 ** (b * (lo - hi)))) / b


def _size_for_mag(rng, mag_r, base, lo, hi, *, slope=0.18, scatter=0.12):
    """Half-light radius (arcsec): ``base`` at r = 20.5, shrinking by ``slope`` dex per mag."""
    lr = math.log10(base) - slope * (mag_r - 20.5) + rng.normal(0.0, scatter)
    return float(np.clip(10.0 ** lr, lo, hi))


def _round_n(n):
    return round(n * 2.0) / 2.0


_R0_PER_HLR = {}  # Sersic scale radius / half-light radius, per index n
_TRUNC_HLR = 30.0  # truncate Sersic profiles (n >= 2) whose 30 x hlr exceeds the stamp width


def _sersic(n, hlr, q, pa, x0, y0, *, width):
    """Sersic profile of unit untruncated flux, truncated beyond the stamp.

    Large profiles (n >= 2, ``30 * hlr`` > ``width``) are truncated at ``trunc`` >= 1.2 ``width``:
    the profile is the untruncated one within ``trunc``, so the pixels of the
    stamp are unchanged (to ~1e-6 of the peak) while GalSim's FFT grid shrinks (up to 30x faster
    for large, high-n profiles). It is built in units of its scale radius with ``trunc`` rounded
    up to a power of sqrt(2), then dilated, so that GalSim's per-(n, trunc) tables are reused.
    """
    import galsim

    n = _round_n(n)
    if n < 2.0 or hlr * _TRUNC_HLR < width:
        # the profile's extent (as GalSim sizes its FFT) already fits: no truncation needed
        prof = galsim.Sersic(n=n, half_light_radius=hlr)
    else:
        if n not in _R0_PER_HLR:
            _R0_PER_HLR[n] = galsim.Sersic(n=n, half_light_radius=1.0).scale_radius
        r0 = _R0_PER_HLR[n] * hlr
        rmax = 2.0 ** (math.ceil(2.0 * math.log2(1.2 * width / r0)) / 2.0)
        prof = galsim.Sersic(n=n, scale_radius=1.0, flux=1.0, trunc=rmax,
                             flux_untruncated=True).dilate(r0)
    if q < 0.999:
        prof = prof.shear(q=q, beta=pa * galsim.radians)
    return prof.shift(x0, y0)


def _centre_jitter(rng):
    return rng.normal(0.0, 0.25, size=2)


def _make_spiral(rng, grid, mag_r):
    w = grid.width  # truncation scale of the Sersic components
    comps = []
    x0, y0 = _centre_jitter(rng)
    pa = rng.uniform(0, math.pi)
    q = rng.uniform(0.3, 1.0)  # inclination: face-on to fairly inclined
    hlr_disk = _size_for_mag(rng, mag_r, 2.0, 1.2, 3.5, slope=0.15, scatter=0.08)
    h = hlr_disk / 1.678
    bt = rng.uniform(0.05, 0.5)
    hlr_bulge = float(np.clip(rng.uniform(0.1, 0.25) * hlr_disk, 0.2, 0.7))
    n_bulge = rng.choice([2.0, 2.5, 3.0, 3.5, 4.0])
    comps.append(("gs", "red", bt,
                  _sersic(n_bulge, hlr_bulge, min(1.0, q + rng.uniform(0.2, 0.4)), pa, x0, y0,
                          width=w)))
    has_bar = rng.uniform() < 0.3
    bar_len = 0.0
    if has_bar:
        bar_len = rng.uniform(0.6, 1.2) * h
        bar_pa = rng.uniform(0, math.pi)
        comps.append(("gs", "red", rng.uniform(0.04, 0.08),
                      _sersic(0.5, bar_len * 0.6, rng.uniform(0.2, 0.35), bar_pa, x0, y0,
                              width=w)))
    m = int(rng.choice([2, 2, 3, 4]))
    pitch = math.radians(rng.uniform(15.0, 32.0) + 3.0 * (m - 2))
    phase = rng.uniform(0, 2 * math.pi)
    sharp = rng.uniform(2.0, 5.0)
    amp = rng.uniform(0.45, 0.95)
    r_in = max(bar_len, 1.5 * hlr_bulge, 0.4 * h)
    u, v = _disk_coords(grid, x0, y0, pa, q)
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    expo = np.exp(-r / h)
    rs = np.maximum(r, 1e-3)
    psi = m * (theta - np.log(rs / h) / math.tan(pitch) - phase)
    arms = ((1.0 + np.cos(psi)) * 0.5) ** sharp
    taper = 1.0 - np.exp(-(r / r_in) ** 2)
    arm_img = expo * arms * taper
    disk_img = expo * (1.0 - amp * taper)
    f_disk_total = 1.0 - bt
    f_knots = rng.uniform(0.05, 0.15) * f_disk_total
    f_arms = amp * 0.6 * f_disk_total
    f_smooth = f_disk_total - f_arms - f_knots
    comps.append(("np", "disk", f_smooth, disk_img))
    comps.append(("np", "young", f_arms, arm_img))
    # star-forming knots along the arms
    nk = int(rng.integers(10, 40))
    rk = r_in + rng.exponential(1.2 * h, size=nk)
    arm_id = rng.integers(0, m, size=nk)
    th = phase + 2 * math.pi * arm_id / m + np.log(rk / h) / math.tan(pitch)
    th = th + rng.normal(0.0, 0.12, size=nk)
    kx, ky = _disk_to_sky(rk * np.cos(th), rk * np.sin(th), x0, y0, pa, q)
    kw = rng.lognormal(0.0, 0.5, size=nk)
    knots = _gauss_blur(grid.splat(kx, ky, kw), rng.uniform(0.08, 0.18), grid)
    comps.append(("np", "young", f_knots, knots))
    params = {"half_light_radius": hlr_disk, "axis_ratio": q, "sersic_n": n_bulge,
              "bulge_fraction": bt, "n_arms": m, "pitch_angle": math.degrees(pitch),
              "has_bar": bool(has_bar)}
    return comps, params


def _make_elliptical(rng, grid, mag_r):
    w = grid.width  # truncation scale of the Sersic components
    x0, y0 = _centre_jitter(rng)
    pa = rng.uniform(0, math.pi)
    q = rng.uniform(0.55, 1.0)
    n = _round_n(rng.uniform(3.0, 5.0))
    hlr = _size_for_mag(rng, mag_r, 1.2, 0.5, 3.0)
    comps = [("gs", "early", 1.0, _sersic(n, hlr, q, pa, x0, y0, width=w))]
    params = {"half_light_radius": hlr, "axis_ratio": q, "sersic_n": n}
    return comps, params


def _curve(rng, x0, y0, phi0, r0, length, curl, n_pts=400, decay=0.6):
    """Points (x, y, w) of a curved stream from radius r0 around (x0, y0), weights sum to 1."""
    t = np.linspace(0.0, 1.0, n_pts)
    rad = r0 + length * t
    phi = phi0 + curl * t
    w = np.exp(-t / decay) * (1.0 + 0.3 * rng.normal(size=n_pts)).clip(0.2)
    return x0 + rad * np.cos(phi), y0 + rad * np.sin(phi), w / w.sum()


def _shell(x0, y0, radius, centre_angle, half_open, n_pts=300):
    """Points (x, y, w) of a shell arc around (x0, y0), brightest at its middle; sum(w) = 1."""
    a = np.linspace(-half_open, half_open, n_pts)
    w = np.sqrt(np.clip(np.cos(0.5 * np.pi * a / half_open), 0.0, None)) + 0.05
    return (x0 + radius * np.cos(centre_angle + a), y0 + radius * np.sin(centre_angle + a),
            w / w.sum())


def _blurred(grid, pieces, width):
    """Splat the (x, y, w) point sets at once and blur them with a Gaussian of ``width``."""
    x, y, w = (np.concatenate(v) for v in zip(*pieces))
    return _gauss_blur(grid.splat(x, y, w), width, grid)


def _make_merger(rng, grid, mag_r):
    w = grid.width  # truncation scale of the Sersic components
    comps = []
    xc, yc = _centre_jitter(rng)
    sep = rng.uniform(1.0, 4.0)
    ang = rng.uniform(0, 2 * math.pi)
    ratio = math.exp(rng.uniform(0.0, math.log(6.0)))  # primary / secondary flux
    f_tidal = rng.uniform(0.04, 0.22)
    f1 = (1.0 - f_tidal) * ratio / (1.0 + ratio)
    f2 = (1.0 - f_tidal) / (1.0 + ratio)
    w1 = f1 / (f1 + f2)
    x1, y1 = xc - sep * (1 - w1) * math.cos(ang), yc - sep * (1 - w1) * math.sin(ang)
    x2, y2 = xc + sep * w1 * math.cos(ang), yc + sep * w1 * math.sin(ang)
    hlr1 = _size_for_mag(rng, mag_r + 0.3, 1.1, 0.4, 2.5)
    hlr2 = float(np.clip(hlr1 * rng.uniform(0.4, 0.9), 0.3, 2.0))
    n1 = _round_n(rng.uniform(1.0, 4.0))
    n2 = _round_n(rng.uniform(1.0, 4.0))
    q1 = rng.uniform(0.4, 1.0)
    q2 = rng.uniform(0.3, 0.9)
    pa1 = rng.uniform(0, math.pi)
    pa2 = rng.uniform(0, math.pi)
    # each galaxy: a compact nucleus plus an envelope, so that two nuclei are visible
    nuc = rng.uniform(0.15, 0.3)
    comps.append(("gs", "mixed", f1 * (1 - nuc), _sersic(n1, hlr1, q1, pa1, x1, y1, width=w)))
    comps.append(("gs", "red", f1 * nuc,
                  _sersic(3.0, max(0.15, 0.2 * hlr1), 0.9, pa1, x1, y1, width=w)))
    comps.append(("gs", "mixed", f2 * (1 - nuc), _sersic(n2, hlr2, q2, pa2, x2, y2, width=w)))
    comps.append(("gs", "red", f2 * nuc,
                  _sersic(3.0, max(0.15, 0.2 * hlr2), 0.9, pa2, x2, y2, width=w)))
    disturbed = rng.uniform() < 0.6
    if disturbed:  # a lopsided common envelope of stripped stars: light moved off both galaxies
        f_env = rng.uniform(0.1, 0.25)
        comps = [(k, c, w * (1.0 - f_env), o) for k, c, w, o in comps]
        off = sep * rng.uniform(0.2, 0.6)
        off_ang = ang + rng.normal(0.0, 0.8)
        comps.append(("gs", "mixed", (f1 + f2) * f_env,
                      _sersic(1.0, max(hlr1, sep * rng.uniform(0.7, 1.3)), rng.uniform(0.35, 0.8),
                              ang + rng.normal(0.0, 0.4), xc + off * math.cos(off_ang),
                              yc + off * math.sin(off_ang), width=w)))
    # tidal tails: antisymmetric pair, same sense of rotation; point sets are blurred together
    sense = rng.choice([-1.0, 1.0])
    streams = []
    n_tails = int(rng.choice([1, 2, 2]))
    for xa, ya, hl, base in ((x1, y1, hlr1, ang + math.pi), (x2, y2, hlr2, ang))[:n_tails]:
        phi0 = base + sense * rng.uniform(0.3, 1.2)
        length = rng.uniform(2.5, 7.0)
        curl = sense * rng.uniform(0.6, 1.8)
        x, y, w = _curve(rng, xa, ya, phi0, 0.7 * hl, length, curl)
        streams.append((x, y, w * rng.uniform(0.6, 1.0)))
    feature = "tails"
    if rng.uniform() < 0.5:  # a bridge between the nuclei
        xs = np.linspace(x1, x2, 200) + rng.normal(0, 0.05, 200)
        ys = np.linspace(y1, y2, 200) + rng.normal(0, 0.05, 200)
        streams.append((xs, ys, np.full(200, 0.3 / 200)))
        feature += "+bridge"
    tidal = _blurred(grid, streams, rng.uniform(0.25, 0.6))
    if rng.uniform() < 0.4:  # sharp-edged shells around the primary
        shells = []
        base = rng.uniform(0, 2 * math.pi)
        for j in range(int(rng.integers(2, 5))):
            rad = hlr1 * (1.3 + 0.9 * j) + rng.uniform(0, 0.4)
            x, y, w = _shell(x1, y1, rad, base + math.pi * j + rng.normal(0, 0.3),
                             rng.uniform(0.6, 1.3))
            shells.append((x, y, w * 0.5 * 0.8 ** j))
        tidal += _blurred(grid, shells, rng.uniform(0.12, 0.25))
        feature += "+shells"
    if disturbed:
        feature += "+envelope"
    comps.append(("np", "tidal", f_tidal, tidal))
    params = {"half_light_radius": hlr1, "axis_ratio": q1, "sersic_n": n1,
              "separation": sep, "flux_ratio": ratio, "tidal_fraction": f_tidal,
              "tidal_features": feature}
    return comps, params


_MAKERS = (_make_spiral, _make_elliptical, _make_merger)


def _neighbours(seed, index, width):
    """Unrelated faint field galaxies in the stamp (any class, 25% of stamps).

    Returns components whose weights are fluxes relative to the main galaxy's r-band flux.
    They come from their own random stream, so they do not change the main galaxy.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _STREAM_NEIGHBOUR]))
    comps = []
    if rng.uniform() >= 0.25:
        return comps
    for _ in range(int(rng.choice([1, 1, 2]))):
        rad = rng.uniform(3.5, 9.0)
        phi = rng.uniform(0, 2 * math.pi)
        weight = 10.0 ** (-0.4 * rng.uniform(1.5, 4.0))
        comps.append(("gs", _colour(rng, "field"), weight,
                      _sersic(_round_n(rng.uniform(1.0, 4.0)), rng.uniform(0.25, 0.8),
                              rng.uniform(0.4, 1.0), rng.uniform(0, math.pi),
                              rad * math.cos(phi), rad * math.sin(phi), width=width)))
    return comps


def _psf(fwhm, e1, e2):
    import galsim

    return galsim.Kolmogorov(fwhm=fwhm).shear(e1=e1, e2=e2)


def _validate_mag_law(mag_range, counts_slope):
    try:
        lo, hi = (float(v) for v in mag_range)
    except (TypeError, ValueError):
        raise GalguardValueError(
            f"mag_range must be two numbers (bright, faint), got {mag_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise GalguardValueError(f"mag_range must be finite with bright < faint, got {mag_range!r}")
    try:
        b = float(counts_slope)
    except (TypeError, ValueError):
        raise GalguardValueError(f"counts_slope must be a number >= 0, got {counts_slope!r}") \
            from None
    if not (math.isfinite(b) and 0 <= b <= 2):
        raise GalguardValueError(f"counts_slope must be in 0..2, got {counts_slope!r}")
    return (lo, hi), b


def _render(seed, index, label, size, mag_law=(R_MAG_RANGE, 0.0)):
    """Noiseless (3, size, size) image in electron/s and the galaxy's parameters."""
    import galsim
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _STREAM_GALAXY]))
    grid = _Grid(size)
    mag_r = _draw_r_mag(rng, *mag_law)
    comps, params = _MAKERS[label](rng, grid, mag_r)
    # colour (g - r, r - i) of each component of the galaxy, then its unrelated neighbours
    comps = [(kind, _colour(rng, ckey), weight, obj, True) for kind, ckey, weight, obj in comps]
    n_main = len(comps)
    zp = np.array([BAND_PARAMS[b]["zeropoint"] for b in BANDS])
    flux_r_total = 10.0 ** (-0.4 * (mag_r - zp[1]))
    # seeing per galaxy (coadd PSF): r-band FWHM and a chromatic lambda^-0.2 scaling
    seeing_r = float(np.clip(rng.lognormal(math.log(0.78), 0.12), 0.6, 1.0))
    lam = {b: BAND_PARAMS[b]["wavelength"] for b in BANDS}
    seeing = np.array([np.clip(seeing_r * (lam[b] / lam["r"]) ** -0.2 * rng.normal(1.0, 0.02),
                               0.55, 1.1) for b in BANDS])
    psf_e = rng.normal(0.0, 0.015, size=(3, 2))
    comps += [(kind, col, weight, obj, False) for kind, col, weight, obj in
              _neighbours(seed, index, grid.width)]
    out = np.zeros((3, size, size))
    band_flux = np.zeros(3)
    for bi, band in enumerate(BANDS):
        gs_parts = []
        np_img = None
        for kind, (gr, ri), weight, obj, main in comps:
            dm = {"g": gr, "r": 0.0, "i": -ri}[band]
            flux = weight * flux_r_total * 10.0 ** (-0.4 * dm) * 10.0 ** (0.4 * (zp[bi] - zp[1]))
            if main:
                band_flux[bi] += flux
            if flux <= 0:
                continue
            if kind == "gs":
                gs_parts.append(obj * flux)  # obj has unit untruncated flux
            else:
                tot = obj.sum()
                if tot > 0:
                    part = obj * (flux / tot)
                    np_img = part if np_img is None else np_img + part
        psf = _psf(seeing[bi], *psf_e[bi])
        if gs_parts:
            prof = galsim.Convolve(galsim.Add(gs_parts) if len(gs_parts) > 1 else gs_parts[0], psf)
            img = prof.drawImage(nx=size, ny=size, scale=PIXEL_SCALE).array.astype(np.float64)
            out[bi] += img
        if np_img is not None:
            ksize = int(2 * math.ceil(2.5 * seeing[bi] / grid.scale) + 1)
            kern = psf.drawImage(nx=ksize, ny=ksize, scale=grid.scale, method="no_pixel").array
            kern = kern / kern.sum()
            conv = fftconvolve(np_img, kern, mode="same")
            out[bi] += grid.bin(conv)
    np.clip(out, 0.0, None, out=out)
    mags = zp - 2.5 * np.log10(band_flux)
    params = dict(params)
    params.update({"mag": mags, "seeing": seeing, "n_neighbours": len(comps) - n_main})
    return out, params


def _observe(noiseless, depth, seed, index):
    """One noisy realisation of a noiseless (3, H, W) image at ``depth``.

    Returns sky-subtracted electron/s: ``k / gain - sky`` with ``k ~ Poisson(gain * (f + sky))``
    drawn from the stream keyed on ``(seed, index, depth)``.
    """
    p = depth_params(depth)
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, index, _STREAM_NOISE, _DEPTH_CODE[depth]]))
    gain = p["gain"][:, None, None]
    sky = p["sky"][:, None, None]
    counts = rng.poisson(gain * (noiseless + sky))
    return (counts / gain - sky).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Batch driver
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SimData:
    """Simulated cutouts at one depth.

    Attributes
    ----------
    images : numpy.ndarray
        float32 (N, 3, size, size), sky-subtracted flux in electron/s, bands ``BANDS``.
    labels : numpy.ndarray
        int64 (N,), 0 spiral, 1 elliptical, 2 merger.
    meta : astropy.table.Table
        One row per galaxy: ``index``, ``id``, ``label``, ``class``, ``depth``, per-band
        ``gain``, ``exptime``, ``sky``, ``zeropoint``, ``seeing`` (N, 3), true ``mag`` (N, 3)
        and the structural parameters (NaN where they do not apply): ``half_light_radius``
        (arcsec), ``axis_ratio``, ``sersic_n``, ``bulge_fraction``, ``n_arms``,
        ``pitch_angle`` (deg), ``separation`` (arcsec), ``flux_ratio``, ``tidal_fraction``,
        ``tidal_features``, ``n_neighbours`` (unrelated field galaxies in the stamp).
        ``meta.meta`` holds ``seed``, ``depth``, ``bands``, ``pixscale``.
    depth : str
        'y10' or 'y1'.
    seed : int
        Simulation seed.
    """

    images: np.ndarray
    labels: np.ndarray
    meta: object
    depth: str
    seed: int

    def __len__(self):
        return len(self.labels)


_PARAM_COLUMNS = ("half_light_radius", "axis_ratio", "sersic_n", "bulge_fraction", "n_arms",
                  "pitch_angle", "separation", "flux_ratio", "tidal_fraction", "n_neighbours")


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_thread_env():
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_init():
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:  # pragma: no cover - optional
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _render_chunk(seed, indices, labels, size, depths, mag_law=(R_MAG_RANGE, 0.0)):
    imgs = {d: np.empty((len(indices), 3, size, size), dtype=np.float32) for d in depths}
    params = []
    for k, (index, label) in enumerate(zip(indices, labels)):
        noiseless, par = _render(seed, int(index), int(label), size, mag_law)
        for d in depths:
            imgs[d][k] = _observe(noiseless, d, seed, int(index))
        params.append(par)
    return imgs, params


def simulate(n, *, seed=0, start=0, depths=DEPTHS, size=100, n_jobs=1, progress=False,
             class_fractions=None, mag_range=R_MAG_RANGE, counts_slope=0.0):
    """Render ``n`` galaxies (indices ``start`` .. ``start + n - 1``) at one or more depths.

    Parameters
    ----------
    n : int
        Number of galaxies (>= 0).
    seed : int, optional
        Simulation seed (>= 0).
    start : int, optional
        Index of the first galaxy. Galaxy ``start + i`` is the same for any ``n``, ``start``
        and ``n_jobs``.
    depths : sequence of {'y10', 'y1'}, optional
        Depths to observe each galaxy at; the same noiseless galaxy and PSF are used for all.
    size : int, optional
        Stamp side in pixels (0.2 arcsec each); >= 16.
    n_jobs : int, optional
        Worker processes (-1: all cores). Workers run with one thread each; fewer workers are
        started when there are fewer than 32 galaxies per worker (a worker takes seconds to
        start). Results do not depend on ``n_jobs``.
    progress : bool, optional
        Show a tqdm progress bar.
    class_fractions : None, 'balanced', 'paper' or sequence of 3 floats, optional
        Class mix: balanced (default; exact over every 3 consecutive indices aligned to a
        multiple of 3), 'paper' (43% spiral, 24% elliptical, 33% merger, exact over every
        aligned block of 100 indices) or explicit fractions.
    mag_range : (float, float), optional
        Range of the galaxies' total r magnitudes (default 18.5-22.5). Sizes follow the
        magnitude (fainter galaxies are smaller, down to a floor per class).
    counts_slope : float, optional
        0 (default): magnitudes uniform in ``mag_range``. ``b > 0``: drawn from galaxy number
        counts ``dN/dm ~ 10**(b m)`` within ``mag_range`` (``b`` about 0.3 in r from 21 to 26),
        so that, as in a magnitude-limited survey sample, most galaxies are near the faint limit.
        Galaxy ``i`` keeps its class, shape, colours and neighbours whatever the magnitude law
        (the magnitude is one draw of its random stream).

    Returns
    -------
    dict
        depth -> `SimData`.

    Raises
    ------
    GalguardValueError
        If an argument is out of range.

    Notes
    -----
    Each galaxy is rendered once without noise, then for each depth ``d`` the observed image
    is ``f_obs = k / gain_d - sky`` with ``k ~ Poisson(gain_d * (f + sky))``, ``gain_d`` the
    coadd exposure time (s) and ``sky`` in electron/s per pixel. The relative sky noise at
    Y1 is therefore ``sqrt(10)`` times that at Y10.

    The PSF is a Kolmogorov profile with 1.5% rms ellipticity per band; its r-band FWHM is
    drawn per galaxy (log-normal around 0.78", clipped to 0.6-1.0") and scaled to the other
    bands as wavelength^-0.2 with 2% jitter. Galaxy r magnitudes follow ``mag_range`` and
    ``counts_slope`` (default uniform in 18.5-22.5); sizes shrink with magnitude; colours
    (g - r, r - i) are drawn per stellar population.
    See ``README.md`` ("Simulated data") for the class models.

    Examples
    --------
    >>> out = simulate(3, seed=1, size=32)
    >>> out["y10"].images.shape, out["y1"].labels.tolist() == out["y10"].labels.tolist()
    ((3, 3, 32, 32), True)
    """
    from astropy.table import Table

    n = _validate_int("n", n, minimum=0)
    seed = _validate_int("seed", seed, minimum=0, maximum=2**63 - 1)
    start = _validate_int("start", start, minimum=0)
    size = _validate_int("size", size, minimum=16)
    n_jobs = _validate_int("n_jobs", n_jobs, minimum=-1)
    if n_jobs == 0:
        raise GalguardValueError("n_jobs must be >= 1 or -1 (all cores), got 0")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    depths = _validate_depths(depths)
    fractions = _validate_fractions(class_fractions)
    mag_law = _validate_mag_law(mag_range, counts_slope)

    indices = np.arange(start, start + n, dtype=np.int64)
    labels = class_labels(indices, seed=seed, class_fractions=fractions)
    images = {d: np.empty((n, 3, size, size), dtype=np.float32) for d in depths}
    params = [None] * n

    # a worker costs a few seconds to start (imports): give each at least _MIN_PER_WORKER
    n_jobs = max(1, min(n_jobs, n // _MIN_PER_WORKER))
    chunk = max(1, min(16, math.ceil(n / max(1, 4 * n_jobs))))
    starts = list(range(0, n, chunk))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="simulate", unit="gal")

    def _store(s, result):
        imgs, pars = result
        for d in depths:
            images[d][s:s + len(pars)] = imgs[d]
        params[s:s + len(pars)] = pars
        if bar is not None:
            bar.update(len(pars))

    t0 = time.perf_counter()
    try:
        if n_jobs == 1 or len(starts) <= 1:
            for s in starts:
                _store(s, _render_chunk(seed, indices[s:s + chunk], labels[s:s + chunk],
                                        size, depths, mag_law))
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                    max_workers=n_jobs, mp_context=ctx, initializer=_worker_init) as pool:
                # workers start during the submissions: they inherit one-thread settings
                with _single_thread_env():
                    futs = {pool.submit(_render_chunk, seed, indices[s:s + chunk],
                                        labels[s:s + chunk], size, depths, mag_law): s
                            for s in starts}
                for fut in concurrent.futures.as_completed(futs):
                    _store(futs[fut], fut.result())
    finally:
        if bar is not None:
            bar.close()
    logger.info("rendered %d galaxies (seed %d, from index %d) at %s in %.1f s with %d process(es)",
                n, seed, start, "+".join(depths), time.perf_counter() - t0, n_jobs)

    out = {}
    for d in depths:
        p = depth_params(d)
        meta = Table()
        meta["index"] = indices
        meta["id"] = indices
        meta["label"] = labels
        meta["class"] = np.array([CLASSES[k] for k in labels], dtype="U10")
        meta["depth"] = np.full(n, d.upper(), dtype="U3")
        meta["gain"] = np.tile(p["gain"], (n, 1))
        meta["exptime"] = np.tile(p["exptime"], (n, 1))
        meta["sky"] = np.tile(p["sky"], (n, 1))
        meta["zeropoint"] = np.tile(p["zeropoint"], (n, 1))
        meta["seeing"] = np.array([q["seeing"] for q in params]).reshape(n, 3)
        meta["mag"] = np.array([q["mag"] for q in params]).reshape(n, 3)
        for col in _PARAM_COLUMNS:
            meta[col] = np.array([float(q.get(col, np.nan)) for q in params])
        meta["n_neighbours"] = meta["n_neighbours"].astype(np.int64)
        meta["tidal_features"] = np.array([q.get("tidal_features", "") for q in params],
                                          dtype="U40")
        meta.meta.update({"seed": seed, "depth": d.upper(), "bands": ",".join(BANDS),
                          "pixscale": PIXEL_SCALE, "rmag_lo": mag_law[0][0],
                          "rmag_hi": mag_law[0][1], "counts_slope": mag_law[1]})
        out[d] = SimData(images=images[d], labels=labels.copy(), meta=meta, depth=d, seed=seed)
    return out


# --------------------------------------------------------------------------------------------
# FITS output
# --------------------------------------------------------------------------------------------

def _common_header(simdata):
    from astropy.io import fits

    from . import __version__

    hdr = fits.Header()
    hdr["BUNIT"] = ("electron/s", "sky-subtracted flux")
    hdr["BANDS"] = (",".join(BANDS), "band of each plane")
    hdr["PIXSCALE"] = (PIXEL_SCALE, "arcsec per pixel")
    hdr["DEPTH"] = (simdata.depth.upper(), "LSST coadd depth (Y10: 10 years, Y1: 1 year)")
    hdr["SIMSEED"] = (int(simdata.seed), "galguard.sim seed")
    p = depth_params(simdata.depth)
    for k, band in enumerate(BANDS, start=1):
        hdr[f"FILTER{k}"] = (band, f"band of plane {k}")
        hdr[f"GAIN{k}"] = (float(p["gain"][k - 1]), "e- per data unit (= coadd exptime)")
        hdr[f"SKYLEV{k}"] = (float(p["sky"][k - 1]), "subtracted sky, data units per pixel")
        hdr[f"MAGZP{k}"] = (float(p["zeropoint"][k - 1]), "AB mag of one data unit")
        hdr[f"EXPTIM{k}"] = (float(p["exptime"][k - 1]), "total coadd exposure time (s)")
    hdr["ORIGIN"] = ("galguard.sim", "simulated LSST-like cutout")
    hdr["GGVERS"] = (str(__version__), "galguard version")
    return hdr


def _galaxy_header(simdata, i):
    hdr = _common_header(simdata)
    row = simdata.meta[i]
    for k in range(1, 4):
        hdr[f"SEEING{k}"] = (round(float(row["seeing"][k - 1]), 4), "PSF FWHM (arcsec)")
    hdr["OBJID"] = (int(row["id"]), "object id (= SIMINDEX)")
    hdr["TRUELAB"] = (int(row["label"]), "0 spiral, 1 elliptical, 2 merger")
    hdr["TRUECLAS"] = (str(row["class"]), "true class")
    hdr["SIMINDEX"] = (int(row["index"]), "galguard.sim galaxy index")
    for k, band in enumerate(BANDS, start=1):
        hdr[f"TRUEMAG{k}"] = (round(float(row["mag"][k - 1]), 4), f"true total {band} AB mag")
    return hdr


def _write_hdul(hdul, path, overwrite):
    return atomic_write(path, lambda tmp: hdul.writeto(tmp, overwrite=True,
                                                       output_verify="exception"),
                        overwrite=overwrite, name="path")


def _image_hdus(data, header, compress, dither_seed):
    from astropy.io import fits

    if not compress:
        return fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    tile = (1,) * (data.ndim - 2) + data.shape[-2:]  # one tile per image plane
    comp = fits.CompImageHDU(data=data, header=header, compression_type="RICE_1",
                             quantize_level=16.0, quantize_method=1,
                             dither_seed=int(dither_seed), tile_shape=tile)
    return fits.HDUList([fits.PrimaryHDU(), comp])


def write_fits(simdata, outdir, *, stack=False, overwrite=False, compress=False):
    """Write simulated cutouts as FITS files with the headers of ``docs/contracts.md``.

    Parameters
    ----------
    simdata : SimData
        One depth of the output of `simulate`.
    outdir : str or os.PathLike
        Directory (created if missing).
    stack : bool, optional
        False: one file per galaxy, ``gal_{index:07d}.fits``, primary HDU (3, H, W).
        True: one file ``stack_{first:07d}_{n}.fits`` with the (N, 3, H, W) cube and a
        ``CATALOG`` binary table (ID, TRUELAB, TRUECLAS, GAIN, SKYLEV, MAGZP, EXPTIME, SEEING).
    overwrite : bool, optional
        Replace existing files. Without it nothing is written if any target exists.
    compress : bool, optional
        Tile-compress the images (RICE_1, quantize_level 16, subtractive dither with a fixed
        seed so files are reproducible); the image then lies in HDU 1 and files end in
        ``.fits.fz``.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    FileExistsError
        If a target exists and ``overwrite`` is False.
    GalguardValueError
        If ``simdata`` is not a `SimData`.
    """
    from astropy.io import fits

    if not isinstance(simdata, SimData):
        raise GalguardValueError(f"simdata must be a SimData, got {type(simdata).__name__}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ext = ".fits.fz" if compress else ".fits"
    idx = np.asarray(simdata.meta["index"], dtype=np.int64)
    if stack:
        first = int(idx[0]) if len(idx) else 0
        targets = [outdir / f"stack_{first:07d}_{len(idx)}{ext}"]
    else:
        targets = [outdir / f"gal_{int(i):07d}{ext}" for i in idx]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(f"{t} exists; pass overwrite=True to replace it")
    if stack:
        hdr = _common_header(simdata)
        hdus = _image_hdus(simdata.images, hdr, compress, 1)
        m = simdata.meta
        cols = [
            fits.Column("ID", "K", array=np.asarray(m["id"], dtype=np.int64)),
            fits.Column("TRUELAB", "K", array=np.asarray(m["label"], dtype=np.int64)),
            fits.Column("TRUECLAS", "10A", array=np.asarray(m["class"]).astype("S10")),
        ]
        for name, col in (("GAIN", "gain"), ("SKYLEV", "sky"), ("MAGZP", "zeropoint"),
                          ("EXPTIME", "exptime"), ("SEEING", "seeing"), ("TRUEMAG", "mag")):
            cols.append(fits.Column(name, "3D", array=np.asarray(m[col], dtype=np.float64)))
        hdus.append(fits.BinTableHDU.from_columns(cols, name="CATALOG"))
        _write_hdul(hdus, targets[0], overwrite)
        return targets
    logger.debug("writing %d file(s) to %s", len(targets), outdir)
    for i, t in enumerate(targets):
        hdus = _image_hdus(simdata.images[i], _galaxy_header(simdata, i), compress,
                           1 + int(idx[i]) % 10000)
        _write_hdul(hdus, t, overwrite)
    return targets


# --------------------------------------------------------------------------------------------
# Shipped sample
# --------------------------------------------------------------------------------------------

def sample_path(depth="y10"):
    """Directory of the sample shipped in the package (33 galaxies, compressed FITS).

    Parameters
    ----------
    depth : {'y10', 'y1'}

    Returns
    -------
    pathlib.Path
        Directory holding ``gal_{index:07d}.fits.fz`` files (index 0..32, seed 2022).
    """
    depth = _validate_depth(depth)
    return Path(str(importlib.resources.files("galguard").joinpath("data", "sample", depth)))


# --------------------------------------------------------------------------------------------
# Mosaic
# --------------------------------------------------------------------------------------------

def _rgb(img, zp, stretch):
    from astropy.visualization import make_lupton_rgb

    # common flux unit across bands (r-band zero point), then i, r, g -> R, G, B
    scaled = [img[k] * 10.0 ** (0.4 * (zp[1] - zp[k])) for k in range(3)]
    return make_lupton_rgb(scaled[2], scaled[1], scaled[0], stretch=stretch, Q=10, minimum=0.0)


def make_mosaic(sims, path, *, max_per_class=6, dpi=100):
    """Write a PNG grid of colour composites (Lupton et al. 2004), labelled by class.

    Parameters
    ----------
    sims : SimData or dict of depth -> SimData
        With several depths, each galaxy is shown at every depth side by side.
    path : str or os.PathLike
        Output PNG.
    max_per_class : int, optional
        Galaxies per class (the first ones of each class).
    dpi : int, optional

    Returns
    -------
    pathlib.Path

    Raises
    ------
    GalguardValueError
        If ``sims`` is not a `SimData` or a dict of them, or ``max_per_class`` < 1.

    Notes
    -----
    Bands are brought to a common AB flux unit, then i, r, g are shown as red, green, blue
    with an arcsinh stretch (Q = 10) set from each galaxy's first-depth r-band image, so the
    depths of one galaxy share a display scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(sims, SimData):
        sims = {sims.depth: sims}
    if not isinstance(sims, dict) or not sims or not all(isinstance(s, SimData)
                                                         for s in sims.values()):
        raise GalguardValueError(
            f"sims must be a SimData or a dict of SimData, got {type(sims).__name__}")
    max_per_class = _validate_int("max_per_class", max_per_class, minimum=1)
    depths = [d for d in DEPTHS if d in sims]
    ref = sims[depths[0]]
    zp = depth_params(depths[0])["zeropoint"]
    chosen = []
    for c in range(3):
        chosen += [int(i) for i in np.flatnonzero(ref.labels == c)[:max_per_class]]
    chosen.sort(key=lambda i: (ref.labels[i], i))
    ncols = max(1, min(max_per_class, 6)) * len(depths)
    panels = [(i, d) for i in chosen for d in depths]
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, d) in zip(axes.ravel(), panels):
        img = sims[d].images[i]
        # stretch from the noiseless-ish Y10 image so both depths share one display scale
        r = sims[depths[0]].images[i][1]
        stretch = max(float(np.percentile(r, 99.5)) / 12.0, 1e-6)
        ax.imshow(_rgb(img, zp, stretch), origin="lower")
        idx = int(sims[d].meta["index"][i])
        ax.set_title(f"{CLASSES[int(sims[d].labels[i])]} #{idx} {d.upper()}", fontsize=7)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

"""Galaxy models: GalSim profiles and numpy patterns (arms, knots, tidal features), neighbours and PSF.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import GalguardValueError
from ._survey import OVERSAMPLE, PIXEL_SCALE, STREAM_NEIGHBOUR

# --------------------------------------------------------------------------------------------
# Numpy pattern helpers (on the oversampled grid, coordinates in arcsec from the stamp centre)
# --------------------------------------------------------------------------------------------

class Grid:
    def __init__(self, size):
        self.size = size
        self.os = OVERSAMPLE
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


def colour(rng, key):
    (gr, sgr), (ri, sri) = _COLOURS[key]
    return rng.normal(gr, sgr), rng.normal(ri, sri)


#: Default r-magnitude law of `simulate`: uniform in 18.5-22.5 (bright, well-resolved galaxies).
R_MAG_RANGE = (18.5, 22.5)


def draw_r_mag(rng, mag_range, counts_slope):
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


MAKERS = (_make_spiral, _make_elliptical, _make_merger)


def neighbours(seed, index, width):
    """Unrelated faint field galaxies in the stamp (any class, 25% of stamps).

    Returns components whose weights are fluxes relative to the main galaxy's r-band flux.
    They come from their own random stream, so they do not change the main galaxy.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, STREAM_NEIGHBOUR]))
    comps = []
    if rng.uniform() >= 0.25:
        return comps
    for _ in range(int(rng.choice([1, 1, 2]))):
        rad = rng.uniform(3.5, 9.0)
        phi = rng.uniform(0, 2 * math.pi)
        weight = 10.0 ** (-0.4 * rng.uniform(1.5, 4.0))
        comps.append(("gs", colour(rng, "field"), weight,
                      _sersic(_round_n(rng.uniform(1.0, 4.0)), rng.uniform(0.25, 0.8),
                              rng.uniform(0.4, 1.0), rng.uniform(0, math.pi),
                              rad * math.cos(phi), rad * math.sin(phi), width=width)))
    return comps


def make_psf(fwhm, e1, e2):
    import galsim

    return galsim.Kolmogorov(fwhm=fwhm).shear(e1=e1, e2=e2)


def validate_mag_law(mag_range, counts_slope):
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

"""Rendering one galaxy, observing it at a depth, and the batch driver `simulate`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import time

import numpy as np

from .._validate import validate_int
from ..errors import GalguardValueError
from ._morphology import (MAKERS, R_MAG_RANGE, Grid, colour, draw_r_mag, make_psf, neighbours,
                          validate_mag_law)
from ._survey import (BAND_PARAMS, BANDS, CLASSES, DEPTH_CODE, DEPTHS, MIN_PER_WORKER, PIXEL_SCALE,
                      STREAM_GALAXY, STREAM_NOISE, class_labels, depth_params, validate_depths,
                      validate_fractions)

logger = logging.getLogger(__name__)


def render_galaxy(seed, index, label, size, mag_law=(R_MAG_RANGE, 0.0)):
    """Noiseless (3, size, size) image in electron/s and the galaxy's parameters."""
    import galsim
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(np.random.SeedSequence([seed, index, STREAM_GALAXY]))
    grid = Grid(size)
    mag_r = draw_r_mag(rng, *mag_law)
    comps, params = MAKERS[label](rng, grid, mag_r)
    # colour (g - r, r - i) of each component of the galaxy, then its unrelated neighbours
    comps = [(kind, colour(rng, ckey), weight, obj, True) for kind, ckey, weight, obj in comps]
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
              neighbours(seed, index, grid.width)]
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
        psf = make_psf(seeing[bi], *psf_e[bi])
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


def observe(noiseless, depth, seed, index):
    """One noisy realisation of a noiseless (3, H, W) image at ``depth``.

    Returns sky-subtracted electron/s: ``k / gain - sky`` with ``k ~ Poisson(gain * (f + sky))``
    drawn from the stream keyed on ``(seed, index, depth)``.
    """
    p = depth_params(depth)
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, index, STREAM_NOISE, DEPTH_CODE[depth]]))
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
        noiseless, par = render_galaxy(seed, int(index), int(label), size, mag_law)
        for d in depths:
            imgs[d][k] = observe(noiseless, d, seed, int(index))
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

    n = validate_int("n", n, minimum=0)
    seed = validate_int("seed", seed, minimum=0, maximum=2**63 - 1)
    start = validate_int("start", start, minimum=0)
    size = validate_int("size", size, minimum=16)
    n_jobs = validate_int("n_jobs", n_jobs, minimum=-1)
    if n_jobs == 0:
        raise GalguardValueError("n_jobs must be >= 1 or -1 (all cores), got 0")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    depths = validate_depths(depths)
    fractions = validate_fractions(class_fractions)
    mag_law = validate_mag_law(mag_range, counts_slope)

    indices = np.arange(start, start + n, dtype=np.int64)
    labels = class_labels(indices, seed=seed, class_fractions=fractions)
    images = {d: np.empty((n, 3, size, size), dtype=np.float32) for d in depths}
    params = [None] * n

    # a worker costs a few seconds to start (imports): give each at least MIN_PER_WORKER
    n_jobs = max(1, min(n_jobs, n // MIN_PER_WORKER))
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

"""Simulated training sets: galaxies dimmed and observed at a depth, cached on disk (keyed by the
simulator's code).
"""

import logging
from pathlib import Path
import time

import numpy as np

from .._files import atomic_write
from ..errors import GalguardValueError
from ._morphology import R_MAG_RANGE, validate_mag_law
from ._render import simulate
from ._survey import depth_params

log = logging.getLogger(__name__)


def sim_fingerprint():
    """First 10 hex digits of a sha256 of the galguard.sim package's code (keys the simulation
    cache).

    Taken over the syntax tree without docstrings, so that comments, formatting and
    documentation do not invalidate a cache, while any change to the code does."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(_code_dump(path).encode())
    return digest.hexdigest()[:10]


def _code_dump(path):
    """The syntax tree of a Python file without its docstrings, as text."""
    import ast

    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _to_file(path, save, *args, **kwargs):
    """numpy's ``save(file, ...)`` into an open file (so no suffix is added to ``path``)."""
    with open(path, "wb") as fh:
        save(fh, *args, **kwargs)


# ------------------------------------------------------------------------------------------------
# Simulated data, cached
# ------------------------------------------------------------------------------------------------
_STREAM_DIM = 0x6D31  # random stream of the dimming (magnitude shift and photon draws)
_DEPTH_CODE = {"y10": 10, "y1": 1}


def dim_and_observe(images_y10, indices, *, seed, dm_range, depth, gain_y10, gain, sky):
    r"""Make galaxies fainter by a random magnitude shift and observe them at a depth, exactly.

    From a Y10 image in the counts model of ``docs/contracts.md`` (``k = g10 (f + s)``
    electrons, Poisson), galaxy ``i`` is made fainter by ``dm_i`` magnitudes
    (``a_i = 10^(-0.4 dm_i)``) and observed at a depth of gain (exposure) ``g <= g10``:

    .. math::

        k' = \mathrm{Binomial}(k, a g / g_{10}) + \mathrm{Poisson}(g (1 - a) s),\qquad
        f' = k' / g - s,

    which is exactly ``Poisson(g (a f + s))``: the same galaxy, ``dm`` magnitudes fainter, under
    the same sky, at the new depth. (Y1 photons are a subset of the Y10 photons, as in a real
    survey whose first-year coadd is part of the ten-year one.)

    Parameters
    ----------
    images_y10 : numpy.ndarray (N, C, H, W)
        Y10 images, sky-subtracted electron/s. Not modified.
    indices : array-like of int (N,)
        Global galaxy indices: the shift and the photon draws of galaxy ``i`` come from
        ``numpy.random.SeedSequence([seed, i, stream, depth])`` and do not depend on batching.
    seed : int
    dm_range : (float, float)
        ``dm`` is uniform in this range (the same ``dm`` for a galaxy at every depth).
    depth : {"y10", "y1"}
    gain_y10, gain, sky : array-like (C,)
        Y10 gain, target-depth gain (electrons per data unit) and sky (data units) per band.

    Returns
    -------
    (numpy.ndarray float32 (N, C, H, W), numpy.ndarray float64 (N,) the shifts dm)
    """
    x = np.asarray(images_y10)
    g10 = np.asarray(gain_y10, float)[:, None, None]
    g = np.asarray(gain, float)[:, None, None]
    s = np.asarray(sky, float)[:, None, None]
    if np.any(g > g10):
        raise GalguardValueError(f"gain must be <= gain_y10 in every band, got {g.ravel()} and "
                                 f"{g10.ravel()}")
    lo, hi = map(float, dm_range)
    if not 0 <= lo <= hi:
        raise GalguardValueError(f"dm_range must satisfy 0 <= lo <= hi, got {dm_range!r}")
    out = np.empty(x.shape, np.float32)
    dms = np.empty(x.shape[0])
    for j, idx in enumerate(np.asarray(indices, dtype=np.int64)):
        dm = np.random.default_rng(
            np.random.SeedSequence([seed, int(idx), _STREAM_DIM])).uniform(lo, hi)
        a = 10.0 ** (-0.4 * dm)
        rng = np.random.default_rng(
            np.random.SeedSequence([seed, int(idx), _STREAM_DIM, _DEPTH_CODE[depth]]))
        k = np.clip(np.rint(g10 * (x[j].astype(np.float64) + s)), 0, None).astype(np.int64)
        kk = rng.binomial(k, np.broadcast_to(a * g / g10, k.shape))
        kk = kk + rng.poisson(np.broadcast_to(g * (1.0 - a) * s, k.shape))
        out[j] = kk / g - s
        dms[j] = dm
    return out, dms


def load_sim_split(*, seed, start, n, depth, size=100, cache_dir=None, n_jobs=1, progress=False,
                   dm_range=None, mag_range=None, counts_slope=0.0):
    """Images and labels of simulated galaxies ``start .. start + n - 1`` at one depth.

    Calls :func:`galguard.sim.simulate` (at both depths, so that one rendering serves both) and,
    when ``cache_dir`` is given, keeps the result in
    ``cache_dir/sim_s{seed}_a{start}_n{n}_px{size}.npz`` so that a later call reads it back.
    ``mag_range`` and ``counts_slope`` set the simulator's r-magnitude law (see
    :func:`galguard.sim.simulate`; None: its default).
    With ``dm_range`` the galaxies are made fainter by a random shift in that range and observed
    at ``depth`` from their Y10 images (see :func:`dim_and_observe`; not cached).

    Returns
    -------
    (numpy.ndarray (n, 3, size, size) float32, numpy.ndarray (n,) int64)
    """
    depth = str(depth).lower()
    if depth not in ("y10", "y1"):
        raise GalguardValueError(f"depth must be 'y10' or 'y1', got {depth!r}")
    # the simulator's code is part of the key: a cache made by another version is never reused
    mag_key = f"_v{sim_fingerprint()}"
    if mag_range is not None or counts_slope:

        (mlo, mhi), slope = validate_mag_law(
            R_MAG_RANGE if mag_range is None else mag_range, counts_slope)
        if ((mlo, mhi), slope) != (tuple(R_MAG_RANGE), 0.0):
            mag_key += f"_r{mlo:g}-{mhi:g}_b{slope:g}"
        mag_range, counts_slope = (mlo, mhi), slope
    else:
        mag_range, counts_slope = None, 0.0
    if dm_range is not None and tuple(map(float, dm_range)) != (0.0, 0.0):
        lo, hi = map(float, dm_range)
        x10, labels = load_sim_split(seed=seed, start=start, n=n, depth="y10", size=size,
                                     cache_dir=cache_dir, n_jobs=n_jobs, progress=progress,
                                     mag_range=mag_range, counts_slope=counts_slope)
        cpath = None
        if cache_dir is not None:
            cpath = Path(cache_dir) / (f"sim_s{seed}_a{start}_n{n}_px{size}{mag_key}"
                                       f"_dm{lo:g}-{hi:g}_{depth}.npy")
            if cpath.exists():
                return np.load(cpath, allow_pickle=False), labels
        p10, pd = depth_params("y10"), depth_params(depth)
        x, _ = dim_and_observe(x10, np.arange(start, start + n), seed=seed, dm_range=(lo, hi),
                               depth=depth, gain_y10=p10["gain"], gain=pd["gain"], sky=pd["sky"])
        if cpath is not None:
            cpath.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cpath, lambda tmp: _to_file(tmp, np.save, x), name="cache file")
        return x, labels
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sim_s{seed}_a{start}_n{n}_px{size}{mag_key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                return f[f"images_{depth}"], f["labels"]
    t0 = time.time()
    law = {} if mag_range is None else {"mag_range": mag_range, "counts_slope": counts_slope}
    out = simulate(n, seed=seed, start=start, depths=("y10", "y1"), size=size,
                       n_jobs=n_jobs, progress=progress, **law)
    log.info("simulated %d galaxies (seed %d, start %d) in %.0f s", n, seed, start,
             time.time() - t0)
    arrays = {f"images_{d}": np.ascontiguousarray(out[d].images, dtype=np.float32)
              for d in ("y10", "y1")}
    labels = np.asarray(out["y10"].labels, dtype=np.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _to_file(tmp, np.savez, labels=labels, **arrays),
                     name="cache file")
    return arrays[f"images_{depth}"], labels

"""Survey constants, argument validation, observing conditions and class labels of the simulator.
"""

from __future__ import annotations

import numpy as np

from .._validate import validate_int
from ..errors import GalguardValueError

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
DEPTH_CODE = {"y10": 10, "y1": 1}

#: Class fractions of the DeepAdversaries data set (spiral 43%, elliptical 24%, merger 33%).
PAPER_CLASS_FRACTIONS = (0.43, 0.24, 0.33)

MIN_PER_WORKER = 32  # fewer galaxies per worker process are rendered in this process
OVERSAMPLE = 3  # numpy patterns are drawn on a grid this many times finer than the pixels
STREAM_GALAXY = 0
STREAM_NOISE = 1
_STREAM_LABEL = 2
STREAM_NEIGHBOUR = 3


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------

def validate_depths(depths):
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


def validate_depth(depth):
    key = str(depth).lower() if isinstance(depth, str) else None
    if key not in _DEPTH_FRACTION:
        raise GalguardValueError(f"depth must be 'y10' or 'y1', got {depth!r}")
    return key


def validate_fractions(class_fractions):
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
    depth = validate_depth(depth)
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
    seed = validate_int("seed", seed, minimum=0, maximum=2**63 - 1)
    fractions = validate_fractions(class_fractions)
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

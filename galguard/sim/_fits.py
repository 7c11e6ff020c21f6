"""Writing simulated cutouts as FITS files and the shipped sample.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import GalguardValueError
from ._render import SimData
from ._survey import BANDS, PIXEL_SCALE, depth_params, validate_depth

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# FITS output
# --------------------------------------------------------------------------------------------

def _common_header(simdata):
    from astropy.io import fits

    from .. import __version__

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


#: the mask-plane bits of `write_fits(planes=True)` files, as Rubin's MP_ cards name them
MASK_PLANES = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5}


def variance_of(simdata):
    """The variance plane of simulated cutouts as Rubin's ISR computes it from the observed
    image: ``max(f + s, 0) / g`` (data units squared), float32 (N, 3, H, W)."""
    p = depth_params(simdata.depth)
    g = np.asarray(p["gain"], np.float64)[None, :, None, None]
    s = np.asarray(p["sky"], np.float64)[None, :, None, None]
    return (np.maximum(simdata.images.astype(np.float64) + s, 0.0) / g).astype(np.float32)


def _strip_noise_keywords(hdr):
    for key in list(hdr.keys()):
        if key.startswith(("GAIN", "SKYLEV")):
            del hdr[key]
    return hdr


def _plane_hdus(image, variance, header, bands_axis):
    """Primary (the header, no data) + IMAGE, MASK, VARIANCE per band (bands_axis False: one
    extension of each for the whole (N, 3, H, W) stack)."""
    from astropy.io import fits

    prim = fits.PrimaryHDU(header=header)
    hdus = [prim]
    mhdr = fits.Header()
    for name, bit in MASK_PLANES.items():
        mhdr[f"HIERARCH MP_{name}"] = (bit, f"mask plane bit {bit}")
    if not bands_axis:
        mask = np.zeros(image.shape, np.int32)
        hdus += [fits.ImageHDU(image, name="IMAGE"), fits.ImageHDU(mask, mhdr, name="MASK"),
                 fits.ImageHDU(variance, name="VARIANCE")]
        return fits.HDUList(hdus)
    for k, band in enumerate(BANDS):
        bh = fits.Header()
        bh["FILTER"] = (band, "band of this plane")
        mh = mhdr.copy()
        mh["FILTER"] = band
        hdus += [fits.ImageHDU(image[k], bh, name="IMAGE"),
                 fits.ImageHDU(np.zeros(image.shape[1:], np.int32), mh, name="MASK"),
                 fits.ImageHDU(variance[k], bh.copy(), name="VARIANCE")]
    return fits.HDUList(hdus)


def write_fits(simdata, outdir, *, stack=False, overwrite=False, compress=False, planes=False,
               noise_keywords=True, label_keywords=True):
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
    planes : bool, optional
        Write Rubin-like multi-extension files: an empty primary HDU with the header, then per
        band an ``IMAGE``, ``MASK`` (int32, no bit set, ``MP_*`` cards of `MASK_PLANES`) and
        ``VARIANCE`` extension (`variance_of`: computed from the observed image as Rubin's ISR
        does) with FILTER; a stack has one (N, 3, H, W) extension of each. Not with
        ``compress``.
    noise_keywords : bool, optional
        False leaves out the GAIN and SKYLEV keywords (and catalog columns), as most survey
        cutouts do.
    label_keywords : bool, optional
        False leaves out the true class (TRUELAB, TRUECLAS keywords and catalog columns), as
        in a survey's files, whose labels live in a separate catalog.

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
    if planes and compress:
        raise GalguardValueError("planes=True and compress=True exclude each other")
    def strip(hdr):
        if not noise_keywords:
            _strip_noise_keywords(hdr)
        if not label_keywords:
            for key in ("TRUELAB", "TRUECLAS"):
                hdr.remove(key, ignore_missing=True)
        return hdr

    variance = variance_of(simdata) if planes else None
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
        hdr = strip(_common_header(simdata))
        hdus = (_plane_hdus(simdata.images, variance, hdr, False) if planes
                else _image_hdus(simdata.images, hdr, compress, 1))
        m = simdata.meta
        cols = [fits.Column("ID", "K", array=np.asarray(m["id"], dtype=np.int64))]
        if label_keywords:
            cols += [fits.Column("TRUELAB", "K", array=np.asarray(m["label"], dtype=np.int64)),
                     fits.Column("TRUECLAS", "10A", array=np.asarray(m["class"]).astype("S10"))]
        for name, col in (("GAIN", "gain"), ("SKYLEV", "sky"), ("MAGZP", "zeropoint"),
                          ("EXPTIME", "exptime"), ("SEEING", "seeing"), ("TRUEMAG", "mag")):
            if not noise_keywords and name in ("GAIN", "SKYLEV"):
                continue
            cols.append(fits.Column(name, "3D", array=np.asarray(m[col], dtype=np.float64)))
        hdus.append(fits.BinTableHDU.from_columns(cols, name="CATALOG"))
        _write_hdul(hdus, targets[0], overwrite)
        return targets
    logger.debug("writing %d file(s) to %s", len(targets), outdir)
    for i, t in enumerate(targets):
        hdr = strip(_galaxy_header(simdata, i))
        hdus = (_plane_hdus(simdata.images[i], variance[i], hdr, True) if planes else
                _image_hdus(simdata.images[i], hdr, compress, 1 + int(idx[i]) % 10000))
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
    depth = validate_depth(depth)
    return Path(str(importlib.resources.files("galguard").joinpath("data", "sample", depth)))

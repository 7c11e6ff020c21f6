"""Cutouts from a large image: at catalog positions, or at sources detected with photutils."""

import logging
import math
import os
import warnings

import numpy as np

from ..errors import GalguardValueError
from ..flags import Flag
from ._estimate import DEFAULT_GAIN
from ._header import HeaderView, header_dict, plane_info
from ._blocks import Block
from ._finish import State, finish_block, materialise
from ._options import make_opts

__all__ = ["cutouts_from_image", "detect_sources", "default_npixels"]

log = logging.getLogger(__name__)

_X_COLS = (("x", "y"), ("x_centroid", "y_centroid"), ("xcentroid", "ycentroid"),
           ("xcen", "ycen"), ("x_image", "y_image"))
_RA_COLS = (("ra", "dec"), ("alpha_j2000", "delta_j2000"), ("raj2000", "dej2000"),
            ("ra_deg", "dec_deg"))
_ID_COLS = ("id", "objid", "label", "number", "source_id")


def _planes_of_hdulist(hdul, hdu, mask_bits):
    """(image HDU, variance or None, mask or None) of an HDUList: the IMAGE/SCI/DATA extension
    (or ``hdu``, or the first image HDU with data) and its VARIANCE/IVAR and MASK planes, by
    EXTNAME as in `read_cutouts`."""
    from astropy.io import fits

    from ._planes import ROLES, _mask_plane, mask_bitmask

    images = [x for x in hdul if isinstance(x, (fits.PrimaryHDU, fits.ImageHDU,
                                                fits.CompImageHDU)) and x.data is not None]
    role = {id(x): ROLES.get(str(x.header.get("EXTNAME", "")).strip().upper()) for x in images}
    if hdu is not None:
        img = hdul[hdu]
    else:
        named = [x for x in images if role[id(x)] == "image"]
        plain = [x for x in images if role[id(x)] is None]
        if not (named or plain):
            raise GalguardValueError("image holds no image HDU with data")
        img = (named or plain)[0]
    variance = mask = None
    for x in images:
        r = role[id(x)]
        if r in ("variance", "ivar", "mask") and x.data.shape != img.data.shape:
            raise GalguardValueError(f"image: the {r} plane has shape {x.data.shape}, the image "
                                     f"{img.data.shape}")
        if r == "variance":
            variance = np.asarray(x.data, np.float64)
        elif r == "ivar" and variance is None:
            iv = np.asarray(x.data, np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                variance = np.where(iv > 0, 1.0 / iv, np.inf)
        elif r == "mask":
            bitmask, problem = mask_bitmask(mask_bits, header_dict(x.header))
            if problem:
                raise GalguardValueError(f"image: {problem}")
            mask = _mask_plane(x.data, bitmask)
    return img, variance, mask


def _load_image(image, hdu, mask_bits=None):
    """Return (data ndarray, mask or None, variance or None, header dict, wcs or None, label)."""
    from astropy.io import fits
    from astropy.nddata import NDData
    from astropy.wcs import WCS

    def wcs_of(hdr):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = WCS(hdr)
            return w if w.has_celestial else None
        except Exception:  # a header without a usable WCS
            return None

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise GalguardValueError(f"image must be an array, HDU, NDData or an existing FITS "
                                     f"file, got the missing path {path!r}")
        with fits.open(path, memmap=True) as hdul:
            d, m, v, h, w, _ = _load_image(hdul, hdu, mask_bits)
            return np.array(d), m, v, h, w, path
    if isinstance(image, fits.HDUList):
        x, variance, mask = _planes_of_hdulist(image, hdu, mask_bits)
        hdr = header_dict(image[0].header)
        hdr.update(header_dict(x.header))
        return x.data, mask, variance, hdr, wcs_of(x.header), image.filename() or "<image>"
    if isinstance(image, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return image.data, None, None, header_dict(image.header), wcs_of(image.header), "<image>"
    if isinstance(image, NDData):
        from astropy.nddata import VarianceUncertainty

        w = image.wcs if image.wcs is not None and getattr(image.wcs, "has_celestial", False) else None
        variance = None
        if image.uncertainty is not None:
            variance = np.asarray(image.uncertainty.represent_as(VarianceUncertainty).array,
                                  np.float64)
        return image.data, image.mask, variance, header_dict(image.meta), w, "<image>"
    if isinstance(image, np.ndarray):
        if isinstance(image, np.ma.MaskedArray):
            return image.data, np.ma.getmaskarray(image), None, {}, None, "<image>"
        return image, None, None, {}, None, "<image>"
    raise GalguardValueError(f"image must be a 2-D or (C, H, W) array, an HDU/HDUList, NDData or "
                             f"a FITS path, got {type(image).__name__}")


def detect_sources(image, *, nsigma=2.0, npixels=10, box_size=None, smooth_fwhm=3.0,
                   deblend=True, mask=None, psf_fwhm=None):
    """Detect sources in a 2-D image with photutils.

    Background and its RMS from `photutils.background.Background2D` (sigma-clipped median,
    ``box_size`` default ``max(16, min(H, W) // 8)``, 3 x 3 median filter), a Gaussian smoothing
    kernel of FWHM ``smooth_fwhm`` pixels, `photutils.segmentation.SourceFinder` (connected
    pixels above ``nsigma`` x RMS, at least ``npixels``, deblended) and
    `photutils.segmentation.SourceCatalog`.

    Parameters
    ----------
    image : ndarray (H, W)
    nsigma, npixels, box_size, smooth_fwhm, deblend, mask
        See above; ``mask`` True pixels are ignored.
    psf_fwhm : float, optional
        PSF FWHM in pixels. With it, the ``point_source`` column is True for sources whose
        second-moment FWHM is below 1.5 x ``psf_fwhm`` and whose ellipticity is below 0.3.

    Returns
    -------
    `~astropy.table.Table`
        ``id``, ``x``, ``y`` (0-based pixel centroids), ``fwhm`` (pixels), ``ellipticity``,
        ``area`` (pixels), ``flux`` (background-subtracted segment flux), ``point_source``.
        Empty when nothing is detected.
    """
    from astropy.convolution import convolve
    from astropy.stats import SigmaClip, sigma_clipped_stats
    from astropy.table import Table
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import SourceCatalog, SourceFinder, make_2dgaussian_kernel

    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise GalguardValueError(f"image must be 2-D (H, W), got shape {data.shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    h, w = data.shape
    if box_size is None:
        box_size = max(16, min(h, w) // 8)
    if min(h, w) >= 2 * box_size:
        bkg = Background2D(data, box_size, mask=bad, filter_size=(3, 3),
                           sigma_clip=SigmaClip(sigma=3.0), bkg_estimator=MedianBackground())
        back, rms = bkg.background, bkg.background_rms
    else:
        _, med, std = sigma_clipped_stats(data[~bad], sigma=3.0)
        back, rms = np.full_like(data, med), np.full_like(data, std)
    sub = np.where(bad, 0.0, data - back)
    kernel = make_2dgaussian_kernel(smooth_fwhm, size=max(3, 2 * int(round(smooth_fwhm)) + 1))
    conv = convolve(sub, kernel, mask=bad)
    finder = SourceFinder(npixels, deblend=deblend, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segm = finder(conv, nsigma * rms, mask=bad)
    names = ("id", "x", "y", "fwhm", "ellipticity", "area", "flux", "point_source")
    if segm is None:
        return Table(names=names, dtype=(np.int64, float, float, float, float, float, float, bool))
    cat = SourceCatalog(sub, segm, convolved_data=conv, mask=bad)
    fwhm = np.asarray(getattr(cat.fwhm, "value", cat.fwhm), dtype=float)
    ell = np.asarray(getattr(cat.ellipticity, "value", cat.ellipticity), dtype=float)
    t = Table()
    t["id"] = np.asarray(cat.label, dtype=np.int64)
    t["x"] = np.asarray(cat.x_centroid, dtype=float)
    t["y"] = np.asarray(cat.y_centroid, dtype=float)
    t["fwhm"] = fwhm
    t["ellipticity"] = ell
    t["area"] = np.asarray(getattr(cat.area, "value", cat.area), dtype=float)
    t["flux"] = np.asarray(cat.segment_flux, dtype=float)
    if psf_fwhm is not None:
        t["point_source"] = (fwhm < 1.5 * float(psf_fwhm)) & (ell < 0.3)
    else:
        t["point_source"] = np.zeros(len(t), dtype=bool)
    return t


def _catalog_positions(catalog, wcs):
    """Return (x, y, ids or None) 0-based pixel positions from a catalog."""
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    def world(coord):
        if wcs is None:
            raise GalguardValueError("catalog gives sky positions (RA/Dec), so wcs is needed "
                                     "(pass wcs= or an image whose header has a celestial WCS)")
        x, y = wcs.celestial.world_to_pixel(coord)
        return np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))

    if isinstance(catalog, SkyCoord):
        x, y = world(catalog)
        return x, y, None
    if isinstance(catalog, Table):
        low = {c.lower(): c for c in catalog.colnames}
        ids = None
        for c in _ID_COLS:
            if c in low and np.asarray(catalog[low[c]]).dtype.kind in "iu":
                ids = np.asarray(catalog[low[c]], dtype=np.int64)
                break
        for cx, cy in _X_COLS:
            if cx in low and cy in low:
                x = np.asarray(getattr(catalog[low[cx]], "value", catalog[low[cx]]), float)
                y = np.asarray(getattr(catalog[low[cy]], "value", catalog[low[cy]]), float)
                if cx == "x_image":  # SExtractor positions are 1-based
                    x, y = x - 1.0, y - 1.0
                return x, y, ids
        for c in catalog.colnames:
            if isinstance(catalog[c], SkyCoord):
                x, y = world(catalog[c])
                return x, y, ids
        for cr, cd in _RA_COLS:
            if cr in low and cd in low:
                import astropy.units as u

                ra, dec = catalog[low[cr]], catalog[low[cd]]
                ra = ra.quantity if getattr(ra, "unit", None) is not None else np.asarray(ra) * u.deg
                dec = dec.quantity if getattr(dec, "unit", None) is not None else np.asarray(dec) * u.deg
                x, y = world(SkyCoord(ra, dec))
                return x, y, ids
        raise GalguardValueError(f"catalog must have x/y or ra/dec columns (or a SkyCoord column), "
                                 f"got columns {catalog.colnames}")
    arr = np.asarray(catalog, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise GalguardValueError(f"catalog as an array must have shape (N, 2) of x, y pixel "
                                 f"positions, got {arr.shape}")
    return arr[:, 0], arr[:, 1], None


def default_npixels(size):
    """The default minimum source area of `cutouts_from_image` (pixels): ``(min(size) / 5)**2``,
    at least 10 (400 for 100-pixel cutouts): a source whose 2-sigma isophote covers less than a
    fifth of the cutout's side squared is too small to classify its morphology. On the Hubble
    XDF (``skimage.data.hubble_deep_field()``, ``size=100``) this gives 47 sources, where the
    former npixels=10 gave 1643 (mostly noise peaks and deblended fragments); photutils' own
    segmentation finds about 45 large galaxies there."""
    h, w = (size, size) if np.ndim(size) == 0 else size
    return max(10, int(round(min(int(h), int(w)) ** 2 / 25.0)))


def cutouts_from_image(image, catalog=None, *, size, wcs=None, hdu=None, bands=None,
                       detect_band=None, nsigma=2.0, npixels=None, deblend=True,
                       exclude_point_sources=False, psf_fwhm=None, estimate=True, border=None,
                       subtract_sky="auto", default_gain=DEFAULT_GAIN, fill=None,
                       variance=None, mask=None, mask_bits=None):
    """Cut galaxies out of a large image.

    Parameters
    ----------
    image : ndarray (H, W) or (C, H, W), HDU, HDUList, NDData/CCDData or FITS path
        The parent image. Header keywords (GAIN, SKYLEVEL, EXPTIME, FILTERn ...) are read as in
        `read_cutouts`; NDData masks and uncertainties are used; in an HDUList or file the
        ``IMAGE``/``SCI``/``DATA`` extension is cut with its ``VARIANCE`` (or ``IVAR``...) and
        ``MASK`` planes (EXTNAMEs as in `read_cutouts`).
    catalog : Table, SkyCoord or array (N, 2), optional
        Positions: a SkyCoord, a Table with a SkyCoord column or ``ra``/``dec`` (degrees unless
        the columns carry units) through ``wcs``, or pixel columns ``x``/``y`` (also
        ``x_centroid``/``y_centroid``, ``xcentroid``/``ycentroid``, 1-based SExtractor
        ``X_IMAGE``/``Y_IMAGE``), 0-based, preferred over ra/dec when both exist; or an (N, 2)
        array of x, y. An integer ``id``/``objid``/``label``/``number`` column gives the ids.
        Default: sources detected with `detect_sources`.
    size : int or (int, int)
        Cutout height and width in pixels (required).
    wcs : `~astropy.wcs.WCS`, optional
        For sky positions; default: the image header's or NDData's WCS.
    hdu : int or str, optional
        HDU of an HDUList or path (default: the first image HDU with data).
    bands : sequence of str, optional
        Names of the image planes (or a selection of named planes), as in `read_cutouts`.
    detect_band : int, optional
        Plane used for detection (default: the sum of all planes).
    nsigma, npixels, deblend
        Detection settings (see `detect_sources`). ``npixels`` default: `default_npixels` of
        ``size`` (400 for 100-pixel cutouts).
    exclude_point_sources : bool, optional
        Drop detected sources that look like point sources (see `detect_sources`); needs
        ``psf_fwhm`` or a header SEEING (arcsec) with PIXSCALE or a WCS pixel scale.
    psf_fwhm : float, optional
        PSF FWHM in pixels.
    estimate, border, subtract_sky, default_gain, fill, mask_bits
        As in `read_cutouts`.
    variance, mask : ndarray, optional
        Variance and bad-pixel mask of the parent image (the shape of the image, or (H, W) for
        every plane), overriding the ones the image carries.

    Returns
    -------
    Cutouts
        One row per catalog entry (or kept detection), in order, with extra meta columns ``x``,
        ``y`` (0-based centre in the parent image), with a WCS ``ra``, ``dec`` (degrees), and
        for detections ``fwhm`` (pixels) and ``ellipticity`` from `detect_sources`; ``id`` is
        the catalog's id column or the photutils label where given.
        A cutout that extends past the image edge is filled with 0, masked there and flagged
        PARTIAL_OVERLAP; a position entirely off the image (or non-finite) gives a BAD_INPUT row.

    Raises
    ------
    GalguardValueError
        For invalid arguments or a catalog without usable columns.

    Notes
    -----
    `astropy.nddata.Cutout2D` (``mode='partial'``) gives the overlap of each cutout with the
    parent image; every plane is cut with the same slices.
    """
    from astropy.nddata import Cutout2D
    from astropy.nddata.utils import NoOverlapError

    if size is None:
        raise GalguardValueError("size must be given (pixels), got None")
    opts = make_opts(None, bands, size, 1 << 30, "cube", estimate, border, subtract_sky,
                      default_gain, fill, "astropy", False, None, mask_bits)
    data, own_mask, own_var, hdr, hwcs, label = _load_image(image, hdu, opts.mask_bits)
    mask = own_mask if mask is None else mask
    variance = own_var if variance is None else variance
    data = np.asarray(data)
    if data.dtype.kind not in "iuf":
        raise GalguardValueError(f"image must be numeric, got dtype {data.dtype}")
    if data.ndim == 2:
        data3 = data[None]
    elif data.ndim == 3:
        data3 = data
    else:
        raise GalguardValueError(f"image must be 2-D (H, W) or 3-D (C, H, W), got shape {data.shape}")
    if min(data3.shape) == 0:
        raise GalguardValueError(f"image must not be empty, got shape {data.shape}")
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, bool), data3.shape) if np.ndim(mask) == 2 \
            else np.asarray(mask, bool).reshape(data3.shape)
    if variance is not None:
        variance = np.asarray(variance, np.float64)
        if variance.shape not in (data3.shape, data3.shape[1:]):
            raise GalguardValueError(f"variance must have the image's shape {data.shape}, got "
                                     f"{variance.shape}")
        variance = np.broadcast_to(variance, data3.shape)
    if npixels is None:
        npixels = default_npixels(opts.size)
    if wcs is None:
        wcs = hwcs
    c = data3.shape[0]
    hv = HeaderView(hdr)
    pinfo = plane_info(hv, c)
    if opts.bands is not None and not any(pinfo["bands"]) and len(opts.bands) == c:
        pinfo["bands"] = [str(b) for b in opts.bands]
    hh, ww = opts.size
    extra = {}
    if catalog is None:
        if detect_band is None:
            det = np.nansum(data3.astype(np.float64), axis=0)
            det[~np.isfinite(data3).any(axis=0)] = np.nan
        else:
            if not isinstance(detect_band, (int, np.integer)) or not 0 <= detect_band < c:
                raise GalguardValueError(f"detect_band must be a plane index in [0, {c}), got {detect_band!r}")
            det = data3[detect_band].astype(np.float64)
        dmask = None if mask is None else mask.any(axis=0)
        if exclude_point_sources and psf_fwhm is None:
            psf_fwhm = _psf_from_header(hv, wcs)
            if psf_fwhm is None:
                raise GalguardValueError("exclude_point_sources needs psf_fwhm (pixels), or SEEING "
                                         "(arcsec) and PIXSCALE or a WCS in the header; got none")
        found = detect_sources(det, nsigma=nsigma, npixels=npixels, deblend=deblend, mask=dmask,
                               psf_fwhm=psf_fwhm)
        if exclude_point_sources:
            n0 = len(found)
            found = found[~np.asarray(found["point_source"], bool)]
            log.info("%s: %d sources detected, %d point sources excluded", label, n0, n0 - len(found))
        xs, ys, ids = np.asarray(found["x"]), np.asarray(found["y"]), np.asarray(found["id"])
        extra["fwhm"] = np.asarray(found["fwhm"], float)
        extra["ellipticity"] = np.asarray(found["ellipticity"], float)
    else:
        xs, ys, ids = _catalog_positions(catalog, wcs)
    n = len(xs)
    state = State(opts)
    blocks = []
    for i in range(n):
        x, y = float(xs[i]), float(ys[i])
        if not (math.isfinite(x) and math.isfinite(y)):
            b = Block(1, source=label, rows=[i], error=f"{label}: row {i}: non-finite position ({x}, {y})")
        else:
            try:
                cut = Cutout2D(data3[0], (x, y), (hh, ww), mode="partial", fill_value=np.nan, copy=False)
            except NoOverlapError:
                cut = None
            if cut is None:
                b = Block(1, source=label, rows=[i],
                           error=f"{label}: row {i}: position ({x:.1f}, {y:.1f}) is outside the "
                                 f"image of shape {data3.shape[1:]}")
            else:
                so, sc = cut.slices_original, cut.slices_cutout
                arr = np.zeros((1, c, hh, ww), dtype=np.float32)  # off-image: 0, masked
                arr[0][(slice(None),) + sc] = data3[(slice(None),) + so]
                inside = np.zeros((hh, ww), dtype=bool)
                inside[sc] = True
                um = np.broadcast_to(~inside, (1, c, hh, ww)).copy()
                if mask is not None:
                    um[0][(slice(None),) + sc] |= mask[(slice(None),) + so]
                var = None
                if variance is not None:
                    var = np.full((1, c, hh, ww), np.nan)
                    var[0][(slice(None),) + sc] = variance[(slice(None),) + so]
                b = Block(1, source=label, rows=[i], data=arr, mask=um, owned=True,
                           bands=pinfo["bands"], info=pinfo, variance=var)
                if not inside.all():
                    b.flags |= int(Flag.PARTIAL_OVERLAP)
        if ids is not None:
            b.ids[:] = ids[i]
        b = finish_block(b, opts, state)
        blocks.append(b)
    if state.c is None:
        state.c = c
        state.bands = tuple(pinfo["bands"])
    out = materialise(blocks, state)
    out.meta["x"] = np.asarray(xs, float)
    out.meta["y"] = np.asarray(ys, float)
    if wcs is not None and n:
        sky = wcs.celestial.pixel_to_world(np.asarray(xs, float), np.asarray(ys, float))
        out.meta["ra"] = np.atleast_1d(sky.icrs.ra.deg)
        out.meta["dec"] = np.atleast_1d(sky.icrs.dec.deg)
    for k, v in extra.items():
        out.meta[k] = v
    out.meta["source"] = [label] * n if n else np.zeros(0, "U1")
    return out


def _psf_from_header(hv, wcs):
    seeing = hv.get("SEEING") or hv.get("SEEING1") or hv.get("PSF_FWHM")
    try:
        seeing = float(seeing)
    except (TypeError, ValueError):
        return None
    scale = hv.get("PIXSCALE")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = None
    if scale is None and wcs is not None:
        from astropy.wcs.utils import proj_plane_pixel_scales

        scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
    if not scale or not seeing > 0:
        return None
    return seeing / scale

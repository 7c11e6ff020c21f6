"""read_cutouts / iter_cutouts: FITS files, HDUs, NDData and arrays to `Cutouts`.
"""

import os

import numpy as np

from ..errors import GalguardValueError
from ._cutouts import Cutouts
from ._estimate import DEFAULT_GAIN
from ._finish import generate
from ._options import DEFAULT_CHUNK_SIZE, make_opts
from ._paths import expand_item
from ._sources import as_array

__all__ = ["read_cutouts", "iter_cutouts"]


def iter_cutouts(source, *, chunk_size=DEFAULT_CHUNK_SIZE, hdu=None, bands=None, size=None,
                 layout="auto", meta=None, estimate=True, border=None, subtract_sky="auto",
                 default_gain=DEFAULT_GAIN, fill=None, backend="auto", recursive=False,
                 mask_bits=None):
    """Read cutouts in chunks of at most ``chunk_size`` rows (bounded memory).

    Takes the same arguments as `read_cutouts`, plus ``chunk_size``. Paths are listed lazily
    (a directory or glob is listed by name only, then sorted) and a big stack is read
    ``chunk_size`` rows at a time, so memory stays at about two chunks however many cutouts
    the source holds.

    Parameters
    ----------
    source
        See `read_cutouts`.
    chunk_size : int, optional
        Rows per chunk (default 1024). Every chunk but the last has exactly this many rows.

    Yields
    ------
    Cutouts
        Consecutive chunks; ``meta['index']`` continues across chunks, so the concatenation of
        the chunks equals ``read_cutouts(source, ...)``. An empty source yields one empty chunk.

    Raises
    ------
    GalguardValueError
        At call time, for an invalid argument, a glob that matches nothing, a directory with no
        FITS file or an unsupported top-level source type.
    """
    opts = make_opts(hdu, bands, size, chunk_size, layout, estimate, border, subtract_sky,
                      default_gain, fill, backend, recursive, meta, mask_bits)
    _check_source(source, opts)
    return generate(source, opts)


def _check_source(source, opts):
    from astropy.io import fits
    from astropy.nddata import NDData

    source = as_array(source)
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if not s:
            raise GalguardValueError("source must be a path, glob, directory, list, array, HDU or "
                                     "NDData, got an empty string")
        expand_item(s, recursive=opts.recursive, name="source")  # raises early: empty glob...
        return
    if isinstance(source, (np.ndarray, Cutouts, fits.HDUList, NDData, fits.PrimaryHDU,
                           fits.ImageHDU, fits.CompImageHDU)):
        return
    if isinstance(source, (list, tuple)) or (hasattr(source, "__iter__") and not isinstance(source, (dict, bytes))):
        return
    raise GalguardValueError(
        "source must be a path, glob, directory, '@listfile', a list of these, a numpy array, an "
        f"astropy HDUList/HDU, NDData/CCDData or Cutouts, got {type(source).__name__}")


def read_cutouts(source, *, hdu=None, bands=None, size=None, layout="auto", meta=None,
                 estimate=True, border=None, subtract_sky="auto", default_gain=DEFAULT_GAIN,
                 fill=None, backend="auto", recursive=False, chunk_size=None, mask_bits=None):
    """Read galaxy cutouts into a `Cutouts` batch: float32 (N, C, H, W), mask and metadata.

    Parameters
    ----------
    source : path, glob, directory, '@listfile', list, array, HDU, NDData or Cutouts
        - a FITS path (``.fits``, ``.fits.gz``, tile-compressed ``.fz``); a missing or
          unreadable path gives a BAD_INPUT row;
        - a glob (``"dir/*.fits"``) or a directory (its FITS files, sorted by name); one that
          matches nothing raises;
        - ``"@paths.txt"``: a text file with one path per line (relative to the list file;
          blank lines and ``#`` comments skipped);
        - a list or other iterable of any of these and of the objects below, read in order;
        - an astropy ``HDUList``, ``PrimaryHDU``, ``ImageHDU`` or ``CompImageHDU``;
        - ``NDData`` / ``CCDData``: its mask, uncertainty (as a variance, used to estimate a
          missing gain), unit (BUNIT) and meta (header keywords) are used;
        - a numpy array (2-D, 3-D or 4-D; masked arrays' masks are used) with optional ``meta``;
        - a `Cutouts` (copied; ``bands`` and ``size`` apply).
    hdu : int, str or list, optional
        HDU number or EXTNAME to read; a list reads one band per listed extension. Default:
        a file with variance or mask planes (EXTNAME ``VARIANCE``/``VAR``, ``IVAR``/``INVVAR``/
        ``WEIGHT``/``WHT``, ``MASK``/``BITMASK``/``DQ``/``FLAGS``) is one cutout (or stack)
        per image HDU (``IMAGE``/``SCI``/``DATA``, or the other image HDUs) with its planes,
        or one band per image extension paired with its planes by FILTER/BAND or by order
        (see "Planes" below); otherwise the primary HDU when it holds data; otherwise the one
        image extension; otherwise, when all image extensions are 2-D of one shape, one band
        per extension (band names from FILTER, BAND or a non-generic EXTNAME); otherwise each
        image extension is its own item.
    bands : str or sequence, optional
        Band names (``"g,r,i"`` or ``("g", "r", "i")``) or plane indices to keep, in this order.
        Named bands are matched against the source's band names; a source with unnamed planes
        of the same count takes these names. A source lacking a band gives a BAD_INPUT row.
        Default: all planes; the first good item fixes the bands of the collection, and a later
        item with other band names or another plane count is a BAD_INPUT row.
    size : int or (int, int), optional
        Cutout height and width. Other sizes are centre-cropped or padded (padding masked) and
        flagged RESIZED. Default: the size of the first good item.
    layout : {'auto', 'cube', 'stack'}, optional
        How to read 3-D data: a band cube (C, H, W) or a stack of single-band cutouts
        (N, H, W). The 'auto' rule, first match wins: the header describes bands (BANDS with
        NAXIS3 names, FILTER1..FILTERn, or a per-plane keyword such as GAIN2/SKYLEV2) -> cube; a
        CATALOG extension (or ``meta`` Table) with NAXIS3 rows -> stack; the header names one band
        (scalar FILTER/BAND only) -> stack; ``bands`` has one entry -> stack, NAXIS3 entries ->
        cube; otherwise cube when NAXIS3 <= `MAX_CUBE_BANDS` (10), else stack.
    meta : dict or astropy Table, optional
        Metadata for a numpy array source. A dict works like a header: keys are FITS keywords
        (``GAIN``, ``SKYLEVEL``, ``EXPTIME``, ``MAGZP``, ``FILTER``, ``BUNIT``, ``OBJID``,
        ``TRUELAB``...) or the meta column names (``gain``, ``sky``, ``exptime``,
        ``zeropoint``, ``bands``, ``id``, ``true_label``); a list value gives one value per band.
        A Table gives one row per cutout (columns ``id``, ``true_label``, ``gain``, ``sky``,
        ``exptime``, ``zeropoint``, ``seeing``, scalars or (C,) arrays).
    estimate : bool, optional
        Estimate a missing sky level and gain (default). With False they stay NaN and the row is
        flagged HEADER_INCOMPLETE.
    border : int, optional
        Width of the border frame used for estimates (default ``max(2, min(H, W) // 8)``).
    subtract_sky : {'auto', True, False}, optional
        What to do when the sky level is missing and the border is clearly above zero (more than
        3 per-pixel noise sigmas): with 'auto' (default) or True the image is taken to still hold
        its sky, the border level is subtracted from the data and recorded as ``sky`` (column
        ``sky_removed`` is True for that plane); True subtracts whatever the level; False never
        subtracts.
    default_gain : float, optional
        Gain (e- per data unit) used where none is given and none can be estimated (1.0).
    fill : dict, optional
        Values used where the source gives none, without an "estimated" flag, e.g.
        ``{"gain": 2.0, "exptime": [30, 30, 30]}`` (keys gain, sky, exptime, zeropoint, seeing).
    backend : {'auto', 'fitsio', 'astropy'}, optional
        'auto' reads files with fitsio and falls back on astropy on any fitsio error.
    recursive : bool, optional
        List directories recursively (and let ``**`` in globs recurse).
    chunk_size : int, optional
        Rows read at a time from a stack; default: a stack is read whole (the fastest, and the
        result holds everything anyway). Use `iter_cutouts` to bound memory.
    mask_bits : str, int or sequence, optional
        Which bits of a mask plane mark bad pixels: bit numbers (0-based) or names looked up in
        the mask header's ``MP_<NAME>`` cards (Rubin, HSC), e.g. ``"BAD,SAT,CR,NO_DATA"`` or
        ``[0, 1, 3]``. Default: every set bit is bad (for Rubin masks, whose DETECTED bit covers
        every source, name the bits).

    Returns
    -------
    Cutouts
        ``data`` float32 (N, C, H, W) native byte order, sky-subtracted; ``mask`` bool;
        ``variance`` float32 (N, C, H, W) where the source has a variance, inverse-variance or
        NDData uncertainty, else None; ``meta`` one row per input cutout in input order (see
        `galguard.io.META_COLUMNS`).

    Raises
    ------
    GalguardValueError
        For invalid arguments, a glob matching nothing, a directory without FITS files, or an
        unsupported top-level source type. A bad item never raises: it becomes a row flagged
        BAD_INPUT with an ``error`` naming the source and the problem, zero data and an
        all-True mask.

    Notes
    -----
    Header keywords (per plane n, then the scalar, then the primary header):
    ``FILTERn``/``BANDS``/``FILTER``/``BAND``; ``GAINn``/``GAIN`` (e- per data unit, taken as
    given: for data in ADU/s put the effective gain); ``SKYLEVn``/``SKYLEVEL``/``SKYLEV``/
    ``SKY``/``BACKGND``/``MDRIZSKY`` (sky level that was subtracted); ``MAGZPn``/``MAGZP``/
    ``ZEROPT``/``PHOTZP`` (or PHOTFLAM and PHOTPLAM); ``EXPTIMn``/``EXPTIME``/``EXPOSURE``;
    ``SEEINGn``/``SEEING``; ``BUNIT``; ``OBJID``; ``TRUELAB``. A stack's ``CATALOG`` table
    (``ID``, ``TRUELAB``, ``GAIN``, ``SKYLEV``, ``MAGZP``, ``EXPTIME``, ``SEEING``) overrides
    the header row by row. BSCALE/BZERO are applied; big-endian data become native float32.

    Missing sky and gain (flags SKY_ESTIMATED, GAIN_ESTIMATED), from the border frame's
    sigma-clipped median level :math:`b` and biweight variance :math:`v` (photutils):

    - data that still hold their sky (see ``subtract_sky``): :math:`s = b`, subtracted from the
      data, and a missing gain :math:`g = b / v` (Poisson: variance = mean / gain);
    - sky known, gain missing: :math:`g = (b + s) / v`; with an NDData variance map the median
      of :math:`(f + s) / \\sigma^2` over the pixels is used instead;
    - no usable estimate: ``default_gain``;
    - sky-subtracted data with no sky value: :math:`s = g v - b`, so that the noise model
      :math:`k = g (f + s)` reproduces the observed background variance.

    Planes: a variance plane gives the gain and, where the header lacks it, the sky level,
    from the Poisson relation :math:`\\sigma^2 = (f + s) / g` fitted over the unmasked pixels
    (see `galguard.io.variance_gain`; the flags SKY_ESTIMATED/GAIN_ESTIMATED are not set for
    values measured this way). Mask-plane pixels join ``mask``. Pixels whose variance is not
    finite or not positive (inverse variance 0: no data) are masked and the row is flagged
    VARIANCE_INVALID.

    Read noise is ignored (it biases the gain estimate low by a factor
    :math:`1 + \\sigma_{rn}^2 / (g s)`). NaN/inf pixels are masked, set to 0 and flagged
    NONFINITE_MASKED; a cutout whose pixels are all non-finite or masked is BAD_INPUT.
    EXPTIME missing: NaN and EXPTIME_MISSING. Input files and arrays are never modified.

    Examples
    --------
    >>> import numpy as np
    >>> from galguard.io import read_cutouts
    >>> cut = read_cutouts(np.ones((2, 3, 16, 16), np.float32),
    ...                    meta={"bands": ["g", "r", "i"], "gain": 2.0, "sky": 100.0,
    ...                          "exptime": 30.0})
    >>> cut.data.shape, cut.bands, cut.meta["gain"][0].tolist()
    ((2, 3, 16, 16), ('g', 'r', 'i'), [2.0, 2.0, 2.0])
    """
    if chunk_size is None:
        chunk_size = 1 << 62
    chunks = list(iter_cutouts(source, chunk_size=chunk_size, hdu=hdu, bands=bands, size=size,
                               layout=layout, meta=meta, estimate=estimate, border=border,
                               subtract_sky=subtract_sky, default_gain=default_gain, fill=fill,
                               backend=backend, recursive=recursive, mask_bits=mask_bits))
    if len(chunks) == 1:
        return chunks[0]
    out = Cutouts.concatenate(chunks)
    return out

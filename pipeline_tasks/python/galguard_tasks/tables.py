"""The ``galguard_cutouts`` table layout, free of the Butler and of lsst.

A cutout table has one row per cutout:

===========  ===================  ================================================================
column       shape, dtype         meaning
===========  ===================  ================================================================
``id``       (N,) int or str      cutout identifier, carried into the flag table (optional;
                                  ``0 .. N-1`` when absent)
``image``    (N, C, H, W) float   sky-subtracted flux (stored as float32)
``gain``     (N,) or (N, C)       electrons per data unit (optional)
``sky``      (N,) or (N, C)       sky level that was subtracted, in data units (optional)
``exptime``  (N,) or (N, C)       exposure time in seconds (optional)
``band``     (N,) str             comma-separated band names of the C planes, e.g. ``"g,r,i"``
                                  (optional)
===========  ===================  ================================================================

The same layout is written to and read from FITS cutout stacks (primary HDU (N, C, H, W) plus a
``CATALOG`` binary table, the format of ``galguard.sim.write_fits(..., stack=True)``) by
`write_cutout_stack` and `read_cutout_stack`, which the Butler formatter
``galguard_tasks.formatters.CutoutStackFitsFormatter`` wraps.
"""

import logging

import numpy as np
from astropy.io import fits
from astropy.table import Table

from galguard.errors import GalguardValueError

__all__ = [
    "IMAGE_COLUMN",
    "ID_COLUMN",
    "PER_BAND_COLUMNS",
    "BAND_COLUMN",
    "CutoutRows",
    "make_cutouts_table",
    "split_cutouts_table",
    "write_cutout_stack",
    "read_cutout_stack",
]

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
ID_COLUMN = "id"
BAND_COLUMN = "band"
PER_BAND_COLUMNS = ("gain", "sky", "exptime")

# FITS CATALOG column for each per-band table column (the galguard.sim stack format).
_FITS_COLUMNS = {"gain": "GAIN", "sky": "SKYLEV", "exptime": "EXPTIME"}


class CutoutRows:
    """A cutout table split into arrays, with per-row problems recorded instead of raised.

    Attributes
    ----------
    ids : numpy.ndarray
        (N,) cutout identifiers, in table order.
    images : numpy.ndarray
        (N, C, H, W) float32, native byte order; rows with an error hold zeros.
    per_band : dict of str to numpy.ndarray
        ``gain``, ``sky``, ``exptime`` present in the table, each (N, C) float64.
    bands : tuple of str or None
        Band names of the C planes, or None when the table has no ``band`` column.
    errors : numpy.ndarray
        (N,) str; empty where the row is usable, otherwise why it is not.
    mask : numpy.ndarray
        (N, C, H, W) bool, True for pixels masked in a masked ``image`` column.
    """

    def __init__(self, ids, images, per_band, bands, errors, mask=None):
        self.ids = ids
        self.images = images
        self.per_band = per_band
        self.bands = bands
        self.errors = errors
        self.mask = np.zeros(images.shape, bool) if mask is None else mask

    def __len__(self):
        return len(self.ids)

    @property
    def good(self):
        """(N,) bool: rows without an error."""
        return self.errors == ""

    def check_input(self):
        """The arguments that give `galguard.check` these cutouts.

        Returns
        -------
        images : numpy.ma.MaskedArray
            (N, C, H, W) float32; the rows with an error are fully masked, which
            `galguard.io.read_cutouts` turns into ``BAD_INPUT`` rows.
        read_kwargs : dict
            ``meta`` (a Table with ``id`` = row position and the per-band columns present) and
            ``bands`` where known, for ``galguard.check(images, read_kwargs=read_kwargs)``.

        Notes
        -----
        Going through `galguard.io.read_cutouts` gives the table the same policy as any other
        galguard input: non-finite pixels are masked and flagged, a missing sky level or gain
        is estimated from the cutout border and flagged, a cutout of another size than the
        model's is centre-cropped or padded and flagged ``RESIZED``.
        """
        n = len(self)
        mask = self.mask.copy()
        mask[~self.good] = True
        meta = Table()
        meta["id"] = np.arange(n, dtype=np.int64)
        for name, values in self.per_band.items():
            meta[name] = values
        read_kwargs = {"meta": meta}
        if self.bands is not None:
            read_kwargs["bands"] = ",".join(self.bands)
        return np.ma.MaskedArray(self.images, mask=mask), read_kwargs


def _per_band_array(name, values, n, channels):
    """Broadcast a scalar-per-cutout or per-band column to (N, C) float64."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GalguardValueError(
            f"cutouts[{name!r}] must be numeric with shape (N,) or (N, C), got {exc}") from None
    if arr.shape == (n,):
        arr = np.repeat(arr[:, None], channels, axis=1)
    elif arr.shape != (n, channels):
        raise GalguardValueError(
            f"cutouts[{name!r}] must have shape (N,) or (N, C) = ({n},) or ({n}, {channels}), "
            f"got {arr.shape}")
    return arr


def _image_rows(column, n):
    """Convert the ``image`` column to (N, C, H, W) float32 plus one error string per row.

    A fixed-shape column must be 4-D. A variable-shape (object) column is converted row by row:
    a row that is not a numeric 3-D array of the most common shape becomes an error row.
    """
    errors = np.full(n, "", dtype=object)
    data = np.asarray(column)
    if data.dtype != object:
        if data.ndim != 4:
            raise GalguardValueError(
                f"cutouts['image'] must have shape (N, C, H, W), got {data.shape}")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
            raise GalguardValueError(
                f"cutouts['image'] must hold numbers, got dtype {data.dtype}")
        # Always a copy: callers zero bad rows in place.
        images = np.array(data, dtype=np.float32, order="C", copy=True)
        mask = np.ma.getmaskarray(column) if np.ma.isMaskedArray(column) else None
        return images, errors, mask

    rows = [None] * n
    shapes = {}
    for i, value in enumerate(data):
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            errors[i] = f"image is not numeric: {exc}"
            continue
        if arr.ndim != 3:
            errors[i] = f"image must have shape (C, H, W), got {arr.shape}"
            continue
        rows[i] = arr
        shapes[arr.shape] = shapes.get(arr.shape, 0) + 1
    if not shapes:
        return np.zeros((n, 1, 1, 1), np.float32), errors, None
    # The most common shape; on a tie, the one seen first (dicts keep insertion order).
    shape = max(shapes, key=shapes.get)
    images = np.zeros((n, *shape), np.float32)
    for i, arr in enumerate(rows):
        if arr is None:
            continue
        if arr.shape != shape:
            errors[i] = f"image has shape {arr.shape}, expected {shape} like the other cutouts"
            continue
        images[i] = arr
    return images, errors, None


def split_cutouts_table(table):
    """Split a ``galguard_cutouts`` table into arrays, recording per-row problems.

    Parameters
    ----------
    table : astropy.table.Table
        The cutout table (see the module docstring). It is not modified.

    Returns
    -------
    CutoutRows
        The arrays; a cutout that cannot be used gets an error message and zero pixels.

    Raises
    ------
    GalguardValueError
        If the table as a whole does not have the layout: no ``image`` column, an ``image``
        column that is not 4-D, or a per-band or ``band`` column of the wrong shape.
    """
    if not isinstance(table, Table):
        raise GalguardValueError(
            f"cutouts must be an astropy Table, got {type(table).__name__}")
    if IMAGE_COLUMN not in table.colnames:
        raise GalguardValueError(
            f"cutouts must have an 'image' column, got columns {table.colnames}")
    n = len(table)
    images, errors, mask = _image_rows(table[IMAGE_COLUMN], n)
    channels = images.shape[1]
    # With no usable image the plane count is unknown: nothing to check the other columns
    # against, and every row is already an error row.
    any_good = bool(np.any(errors == ""))

    if ID_COLUMN in table.colnames:
        ids = np.array(table[ID_COLUMN])
        if ids.ndim != 1:
            raise GalguardValueError(f"cutouts['id'] must have shape (N,), got {ids.shape}")
    else:
        ids = np.arange(n, dtype=np.int64)

    per_band = {}
    for name in PER_BAND_COLUMNS:
        if name in table.colnames:
            values = table[name]
            if getattr(values, "mask", None) is not None and np.any(values.mask):
                values = values.filled(np.nan)
            if any_good:
                per_band[name] = _per_band_array(name, values, n, channels)

    bands = None
    if BAND_COLUMN in table.colnames:
        values = [str(v).strip() for v in np.asarray(table[BAND_COLUMN]).reshape(-1)]
        if len(values) != n:
            raise GalguardValueError(
                f"cutouts['band'] must have one string per cutout, got {len(values)} for {n}")
        distinct = sorted(set(values))
        if len(distinct) > 1:
            # Mixed bands in one table: the first value wins, the others are error rows.
            for i, v in enumerate(values):
                if v != values[0]:
                    errors[i] = (f"band {v!r} differs from {values[0]!r} of the first cutout; "
                                 "put cutouts of different bands in separate datasets")
        if values and any_good:
            bands = tuple(b.strip() for b in values[0].split(",") if b.strip())
            if len(bands) != channels:
                raise GalguardValueError(
                    f"cutouts['band'] must name one band per image plane ({channels}), "
                    f"got {values[0]!r}")

    for i in np.flatnonzero(errors != ""):
        images[i] = 0.0
    return CutoutRows(ids, images, per_band, bands, errors.astype(str), mask=mask)


def make_cutouts_table(images, *, ids=None, gain=None, sky=None, exptime=None, bands=None):
    """Build a ``galguard_cutouts`` table from arrays.

    Parameters
    ----------
    images : array_like
        (N, C, H, W) sky-subtracted flux; stored as float32. Not modified.
    ids : array_like, optional
        (N,) identifiers; default ``0 .. N-1``.
    gain, sky, exptime : array_like, optional
        Scalar, (N,) or (N, C) values (see the module docstring).
    bands : str or sequence of str, optional
        Band names of the C planes: ``("g", "r", "i")``, ``"g,r,i"`` or, for one-letter names,
        ``"gri"``.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    GalguardValueError
        If ``images`` is not 4-D or a per-band value has the wrong shape.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise GalguardValueError(f"images must have shape (N, C, H, W), got {images.shape}")
    n, channels = images.shape[:2]
    table = Table()
    table[ID_COLUMN] = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if len(table[ID_COLUMN]) != n:
        raise GalguardValueError(f"ids must have shape ({n},), got {np.shape(ids)}")
    table[IMAGE_COLUMN] = np.array(images, dtype=np.float32)
    for name, value in (("gain", gain), ("sky", sky), ("exptime", exptime)):
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full((n, channels), float(arr))
        table[name] = _per_band_array(name, arr, n, channels)
    if bands is not None:
        if isinstance(bands, str):
            bands = bands.split(",") if "," in bands else list(bands)
        bands = tuple(str(b).strip() for b in bands)
        if len(bands) != channels:
            raise GalguardValueError(
                f"bands must name one band per image plane ({channels}), got {bands}")
        table[BAND_COLUMN] = np.array([",".join(bands)] * n)
    return table


def write_cutout_stack(table, path, *, overwrite=False):
    """Write a cutout table as a FITS cutout stack.

    The primary HDU holds the (N, C, H, W) float32 images; a ``CATALOG`` binary table holds
    ``ID`` and the per-band ``GAIN``, ``SKYLEV`` and ``EXPTIME`` arrays; the band names go to
    the ``BANDS`` and ``FILTERn`` header keywords. This is the stack layout that
    ``galguard.sim.write_fits(..., stack=True)`` writes and ``galguard.io`` reads.

    Parameters
    ----------
    table : astropy.table.Table
        A ``galguard_cutouts`` table. Not modified.
    path : str or os.PathLike
        Output file.
    overwrite : bool, optional
        Replace an existing file.

    Raises
    ------
    GalguardValueError
        If the table does not have the layout, or a row is unusable (a stack is written whole).
    """
    rows = split_cutouts_table(table)
    if not rows.good.all():
        i = int(np.flatnonzero(~rows.good)[0])
        raise GalguardValueError(f"table row {i} cannot be written to a stack: {rows.errors[i]}")
    header = fits.Header()
    if rows.bands is not None:
        header["BANDS"] = ",".join(rows.bands)
        for k, band in enumerate(rows.bands, start=1):
            header[f"FILTER{k}"] = band
    header["BUNIT"] = str(table.meta.get("bunit", "electron/s"))
    primary = fits.PrimaryHDU(rows.images, header=header)
    ids = rows.ids
    if ids.dtype.kind in "US":
        ids = ids.astype(str)
        width = max([1] + [len(s) for s in ids])
        id_col = fits.Column("ID", format=f"{width}A", array=ids)
    else:
        id_col = fits.Column("ID", format="K", array=ids.astype(np.int64))
    cols = [id_col]
    channels = rows.images.shape[1]
    for name, arr in rows.per_band.items():
        cols.append(fits.Column(_FITS_COLUMNS[name], format=f"{channels}D", array=arr))
    catalog = fits.BinTableHDU.from_columns(cols, name="CATALOG")
    fits.HDUList([primary, catalog]).writeto(path, overwrite=overwrite)


def read_cutout_stack(path):
    """Read a FITS cutout stack into a ``galguard_cutouts`` table.

    Parameters
    ----------
    path : str or os.PathLike
        A stack: primary HDU (N, C, H, W), optional ``CATALOG`` binary table with ``ID`` and
        per-band ``GAIN``, ``SKYLEV``, ``EXPTIME`` columns. Where a catalog column is missing
        the header keywords ``GAINn``/``GAIN``, ``SKYLEVn``/``SKYLEVEL``, ``EXPTIMn``/``EXPTIME``
        are used; ``BANDS`` or ``FILTERn`` name the planes.

    Returns
    -------
    astropy.table.Table

    Raises
    ------
    GalguardValueError
        If the primary HDU does not hold an (N, C, H, W) or (C, H, W) image.
    """
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        data = hdul[0].data
        if data is None or data.ndim not in (3, 4):
            shape = None if data is None else data.shape
            raise GalguardValueError(
                f"{path}: the primary HDU must hold an (N, C, H, W) cutout stack, got {shape}")
        if data.ndim == 3:
            data = data[None]
        images = np.asarray(data, dtype=np.float32)
        n, channels = images.shape[:2]
        catalog = hdul["CATALOG"].data if "CATALOG" in hdul else None
        cat_names = [] if catalog is None else [c.upper() for c in catalog.columns.names]

        bands = None
        if "BANDS" in header:
            bands = tuple(b.strip() for b in str(header["BANDS"]).split(",") if b.strip())
        elif all(f"FILTER{k}" in header for k in range(1, channels + 1)):
            bands = tuple(str(header[f"FILTER{k}"]).strip() for k in range(1, channels + 1))
        elif channels == 1 and "FILTER" in header:
            bands = (str(header["FILTER"]).strip(),)

        table = Table()
        if "ID" in cat_names:
            ids = np.asarray(catalog["ID"])
            table[ID_COLUMN] = ids.astype(str) if ids.dtype.kind in "US" else ids.astype(np.int64)
        else:
            table[ID_COLUMN] = np.arange(n, dtype=np.int64)
        table[IMAGE_COLUMN] = images
        keywords = {"gain": ("GAIN", "GAIN"), "sky": ("SKYLEV", "SKYLEVEL"),
                    "exptime": ("EXPTIM", "EXPTIME")}
        for name, fits_name in _FITS_COLUMNS.items():
            if fits_name in cat_names:
                table[name] = _per_band_array(name, np.asarray(catalog[fits_name], np.float64),
                                              n, channels)
                continue
            per_plane, scalar = keywords[name]
            values = [header.get(f"{per_plane}{k}", header.get(scalar))
                      for k in range(1, channels + 1)]
            if all(v is not None for v in values):
                table[name] = np.tile(np.asarray(values, np.float64), (n, 1))
        if bands is not None and len(bands) == channels:
            table[BAND_COLUMN] = np.array([",".join(bands)] * n)
        if "BUNIT" in header:
            table.meta["bunit"] = str(header["BUNIT"])
    log.debug("read %d cutouts of shape %s from %s", n, images.shape[1:], path)
    return table

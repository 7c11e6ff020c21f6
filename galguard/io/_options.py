"""Options of `read_cutouts` / `iter_cutouts`: constants and argument validation.
"""

import math

import numpy as np

from ..errors import GalguardValueError

#: file names a directory listing picks up (case-insensitive)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz",
                 ".fits.bz2")

#: a 3-D array with no band information is a band cube when its first axis is at most this
MAX_CUBE_BANDS = 10

DEFAULT_CHUNK_SIZE = 1024

_FILL_KEYS = ("gain", "sky", "exptime", "zeropoint", "seeing")
PLANE_FIELDS = ("gain", "sky", "exptime", "zeropoint", "seeing", "saturation")

# per-row columns recognised in a CATALOG table or a metadata Table, mapped to meta names
ROW_COLUMNS = {
    "ID": "id", "OBJID": "id",
    "TRUELAB": "true_label", "TRUE_LABEL": "true_label",
    "GAIN": "gain", "SKYLEV": "sky", "SKY": "sky", "SKYLEVEL": "sky",
    "MAGZP": "zeropoint", "ZEROPOINT": "zeropoint",
    "EXPTIME": "exptime", "SEEING": "seeing",
    "SATURATE": "saturation", "SATURATION": "saturation",
}


# ----------------------------------------------------------------------------------------------
# options and argument validation
# ----------------------------------------------------------------------------------------------
class _Opts:
    pass


#: The largest cutout side `read_cutouts` makes (pixels): beyond it a cutout is an image.
MAX_SIZE = 8192


def _validate_size(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        vals = (int(size), int(size))
    else:
        try:
            vals = tuple(int(v) for v in size)
            ok = len(vals) == 2 and all(float(v) == int(v) for v in size)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise GalguardValueError(f"size must be a positive int or a pair (height, width), got {size!r}")
    if min(vals) < 1:
        raise GalguardValueError(f"size must be a positive int or a pair (height, width), got {size!r}")
    if max(vals) > MAX_SIZE:
        raise GalguardValueError(f"size must be at most {MAX_SIZE} pixels a side, got {size!r}")
    return vals


def _validate_bands(bands):
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",")]
    try:
        vals = list(bands)
    except TypeError:
        raise GalguardValueError(f"bands must be a sequence of band names or plane indices, "
                                 f"got {bands!r}") from None
    if not vals:
        raise GalguardValueError("bands must name at least one band, got an empty sequence")
    out = []
    for v in vals:
        if isinstance(v, str) and v.strip():
            out.append(v.strip())
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0:
            out.append(int(v))
        else:
            raise GalguardValueError(f"bands must hold band names (non-empty str) or plane indices "
                                     f"(int >= 0), got {v!r} in {bands!r}")
    if len(set(out)) != len(out):
        raise GalguardValueError(f"bands must not repeat a band, got {bands!r}")
    return tuple(out)


def _validate_hdu(hdu):
    if hdu is None:
        return None
    def one(h):
        if isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 0:
            return int(h)
        if isinstance(h, str) and h.strip():
            return h.strip().upper()
        raise GalguardValueError(f"hdu must be an HDU number >= 0, an EXTNAME or a list of them, "
                                 f"got {hdu!r}")
    if isinstance(hdu, (list, tuple)):
        if not hdu:
            raise GalguardValueError("hdu must not be an empty list")
        return [one(h) for h in hdu]
    return one(hdu)


def _validate_fill(fill):
    if fill is None:
        return {}
    if not isinstance(fill, dict):
        raise GalguardValueError(f"fill must be a dict such as {{'gain': 2.0}}, got {type(fill).__name__}")
    out = {}
    for k, v in fill.items():
        if k not in _FILL_KEYS:
            raise GalguardValueError(f"fill keys must be among {_FILL_KEYS}, got {k!r}")
        a = np.atleast_1d(np.asarray(v, dtype=np.float64))
        if a.ndim != 1 or not np.isfinite(a).all():
            raise GalguardValueError(f"fill[{k!r}] must be a finite number or one per band, got {v!r}")
        out[k] = a
    return out


def make_opts(hdu, bands, size, chunk_size, layout, estimate, border, subtract_sky,
               default_gain, fill, backend, recursive, meta, mask_bits=None):
    from ._planes import validate_mask_bits

    o = _Opts()
    o.mask_bits = validate_mask_bits(mask_bits)
    o.hdu = _validate_hdu(hdu)
    o.bands = _validate_bands(bands)
    o.size = _validate_size(size)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise GalguardValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    o.chunk_size = int(chunk_size)
    if layout not in ("auto", "cube", "stack"):
        raise GalguardValueError(f"layout must be 'auto', 'cube' or 'stack', got {layout!r}")
    o.layout = layout
    o.estimate = bool(estimate)
    if border is not None and (not isinstance(border, (int, np.integer)) or border < 1):
        raise GalguardValueError(f"border must be a positive int (pixels), got {border!r}")
    o.border = border
    if subtract_sky not in ("auto", True, False):
        raise GalguardValueError(f"subtract_sky must be 'auto', True or False, got {subtract_sky!r}")
    o.subtract_sky = subtract_sky
    try:
        g = float(default_gain)
    except (TypeError, ValueError):
        g = math.nan
    if not (g > 0 and math.isfinite(g)):
        raise GalguardValueError(f"default_gain must be a positive number, got {default_gain!r}")
    o.default_gain = g
    o.fill = _validate_fill(fill)
    if backend not in ("auto", "fitsio", "astropy"):
        raise GalguardValueError(f"backend must be 'auto', 'fitsio' or 'astropy', got {backend!r}")
    o.backend = backend
    o.recursive = bool(recursive)
    o.meta = meta
    return o

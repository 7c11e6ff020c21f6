"""read_cutouts / iter_cutouts: FITS files, HDUs, NDData and arrays to `Cutouts`."""

import glob
import logging
import math
import os
import stat

import numpy as np

from ..errors import GalguardValueError
from ..flags import Flag
from ._cutouts import Cutouts, empty_meta
from ._estimate import DEFAULT_GAIN, RAW_SKY_NSIGMA, border_background, default_border
from ._fits import AstropyAccess, FitsioAccess
from ._header import HeaderView, has_band_info, header_dict, names_single_band, plane_info

__all__ = ["read_cutouts", "iter_cutouts", "FITS_SUFFIXES", "MAX_CUBE_BANDS", "DEFAULT_CHUNK_SIZE"]

log = logging.getLogger(__name__)

#: file names a directory listing picks up (case-insensitive)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz",
                 ".fits.bz2")

#: a 3-D array with no band information is a band cube when its first axis is at most this
MAX_CUBE_BANDS = 10

DEFAULT_CHUNK_SIZE = 1024

_FILL_KEYS = ("gain", "sky", "exptime", "zeropoint", "seeing")
_PLANE_FIELDS = ("gain", "sky", "exptime", "zeropoint", "seeing")

# per-row columns recognised in a CATALOG table or a metadata Table, mapped to meta names
_ROW_COLUMNS = {
    "ID": "id", "OBJID": "id",
    "TRUELAB": "true_label", "TRUE_LABEL": "true_label",
    "GAIN": "gain", "SKYLEV": "sky", "SKY": "sky", "SKYLEVEL": "sky",
    "MAGZP": "zeropoint", "ZEROPOINT": "zeropoint",
    "EXPTIME": "exptime", "SEEING": "seeing",
}


# ----------------------------------------------------------------------------------------------
# options and argument validation
# ----------------------------------------------------------------------------------------------
class _Opts:
    pass


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


def _make_opts(hdu, bands, size, chunk_size, layout, estimate, border, subtract_sky,
               default_gain, fill, backend, recursive, meta):
    o = _Opts()
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


# ----------------------------------------------------------------------------------------------
# blocks: a run of rows from one source, before they are put into chunks
# ----------------------------------------------------------------------------------------------
class _Block:
    """Rows of one source. ``data is None`` marks a bad block (every row BAD_INPUT)."""

    def __init__(self, n, *, source, hdu="", rows=None, data=None, mask=None, owned=False,
                 bands=None, info=None, error="", variance=None):
        self.n = n
        self.source = source
        self.hdu = hdu
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.data = data
        self.mask = mask
        self.owned = owned
        self.variance = variance
        c = 0 if data is None else data.shape[1]
        self.bands = list(bands) if bands is not None else [""] * c
        self.flags = np.zeros(n, dtype=np.int64)
        self.errors = np.full(n, error, dtype=object)
        if data is None:
            self.flags[:] = Flag.BAD_INPUT
        self.ids = np.full(n, -1, dtype=np.int64)
        self.labels = np.full(n, -1, dtype=np.int64)
        self.bunit = ""
        self.sky_removed = None
        for f in _PLANE_FIELDS:
            setattr(self, f, np.full((n, c), np.nan))
        if info is not None:
            self.apply_info(info)

    def apply_info(self, info):
        """Broadcast per-plane header values (from `plane_info`) to every row."""
        c = len(self.bands)
        for f in _PLANE_FIELDS:
            v = np.asarray(info[f], dtype=np.float64)
            if v.shape == (c,):
                getattr(self, f)[:] = v[None, :]
        self.bunit = info.get("bunit", "")
        if info.get("id", -1) >= 0 and self.n == 1:
            self.ids[:] = info["id"]
        if info.get("true_label", -1) >= 0 and self.n == 1:
            self.labels[:] = info["true_label"]

    def apply_rows(self, cols):
        """Per-row values (dict of arrays of length n, or (n, C) for plane fields)."""
        c = len(self.bands)
        for name, arr in cols.items():
            a = np.asarray(arr)
            if a.shape[:1] != (self.n,):
                continue
            if name in ("id", "true_label"):
                if a.dtype.kind in "iuf":
                    v = np.where(np.isfinite(a.astype(np.float64)), a, -1).astype(np.int64)
                    (self.ids if name == "id" else self.labels)[:] = v
            elif name in _PLANE_FIELDS and a.dtype.kind in "iuf":
                a = a.astype(np.float64)
                if a.ndim == 1:
                    a = np.repeat(a[:, None], c, axis=1)
                if a.shape == (self.n, c):
                    getattr(self, name)[:] = np.where(np.isfinite(a), a, np.nan)

    def take(self, i0, i1):
        b = _Block.__new__(_Block)
        b.n = i1 - i0
        b.source, b.hdu, b.bands, b.bunit, b.owned = self.source, self.hdu, self.bands, self.bunit, self.owned
        for name in ("rows", "flags", "errors", "ids", "labels", "data", "mask", "variance",
                     "sky_removed") + _PLANE_FIELDS:
            v = getattr(self, name)
            setattr(b, name, None if v is None else v[i0:i1])
        for extra in ("sources", "hdus"):
            if hasattr(self, extra):
                setattr(b, extra, getattr(self, extra)[i0:i1])
        return b


def _bad(source, msg, *, hdu="", n=1, rows=None):
    label = f"{source}" + (f"[hdu {hdu}]" if hdu != "" else "")
    return _Block(n, source=source, hdu=hdu, rows=rows, error=f"{label}: {msg}")


def _numeric_f32(arr, fresh=False):
    """Native float32, copied only if needed; returns (array, owned).

    ``fresh``: ``arr`` was just read from a file and belongs to nobody else.
    """
    a = np.asarray(arr)
    out = a.astype(np.float32, copy=False)
    if out.dtype.byteorder not in ("=", "|"):
        out = out.astype(np.float32)
    owned = fresh or (not np.shares_memory(out, a) if out.size else True)
    return out, owned


# ----------------------------------------------------------------------------------------------
# from an opened FITS file / HDU list to blocks
# ----------------------------------------------------------------------------------------------
def _hdu_names(acc):
    return ", ".join(f"{x.idx}:{x.extname or ('PRIMARY' if x.idx == 0 else '')}({x.kind}"
                     f"{'' if x.kind != 'image' else ' ' + 'x'.join(map(str, x.shape)) if x.shape else ' empty'})"
                     for x in acc.infos)


def _find_hdu(acc, key):
    if isinstance(key, int):
        return acc.infos[key] if key < len(acc.infos) else None
    for x in acc.infos:
        if x.extname == key:
            return x
    return None


def _access_blocks(acc, label, opts):
    infos = acc.infos
    if not infos:
        yield _bad(label, "no HDU in the file")
        return
    primary = acc.header(0)
    catalog = next((x for x in infos if x.kind == "table" and x.extname == "CATALOG"), None)
    if opts.hdu is None:
        if infos[0].kind == "image" and infos[0].shape:
            yield from _image_blocks(acc, infos[0], primary, catalog, label, opts)
            return
        imgs = [x for x in infos if x.kind == "image" and x.shape]
        if not imgs:
            yield _bad(label, f"no image data (non-numeric or empty HDUs: {_hdu_names(acc)})")
            return
        if len(imgs) == 1:
            yield from _image_blocks(acc, imgs[0], primary, catalog, label, opts)
        elif all(len(x.shape) == 2 and x.shape == imgs[0].shape for x in imgs):
            yield from _band_ext_blocks(acc, imgs, primary, label, opts)
        else:
            for x in imgs:
                yield from _image_blocks(acc, x, primary, None, label, opts)
        return
    keys = opts.hdu if isinstance(opts.hdu, list) else [opts.hdu]
    sel = []
    for k in keys:
        x = _find_hdu(acc, k)
        if x is None:
            yield _bad(label, f"hdu={k!r} is not in the file (HDUs: {_hdu_names(acc)})")
            return
        if x.kind != "image" or not x.shape:
            yield _bad(label, f"hdu={k!r} holds no image data (non-numeric or empty; HDUs: "
                              f"{_hdu_names(acc)})", hdu=str(x.idx))
            return
        sel.append(x)
    if isinstance(opts.hdu, list):
        yield from _band_ext_blocks(acc, sel, primary, label, opts)
    else:
        yield from _image_blocks(acc, sel[0], primary, catalog, label, opts)


def _dim_problem(shape):
    if any(s == 0 for s in shape) or not shape:
        return f"zero-size data of shape {shape}"
    if len(shape) not in (2, 3, 4):
        return (f"wrong dimension: {len(shape)}-D data of shape {shape}; expected (H, W), "
                f"(C, H, W), (N, H, W) or (N, C, H, W)")
    return None


def _layout3(n3, hv, opts, nrows_meta):
    if opts.layout != "auto":
        return opts.layout
    if has_band_info(hv, n3):
        return "cube"
    if nrows_meta == n3:
        return "stack"
    if names_single_band(hv):
        return "stack"
    if opts.bands is not None:
        if len(opts.bands) == 1:
            return "stack"
        if len(opts.bands) == n3:
            return "cube"
    return "cube" if n3 <= MAX_CUBE_BANDS else "stack"


def _image_blocks(acc, info, primary, catalog, label, opts):
    hdustr = str(info.idx)
    shape = info.shape
    prob = _dim_problem(shape)
    if prob:
        yield _bad(label, prob, hdu=hdustr)
        return
    hv = HeaderView(acc.header(info.idx) if info.idx else primary, primary if info.idx else None)
    nd = len(shape)
    ncat = catalog.nrows if catalog is not None else -1
    if nd == 2 or (nd == 3 and _layout3(shape[0], hv, opts, ncat) == "cube"):
        raw = acc.read_image(info.idx)
        data, owned = _numeric_f32(raw, acc.fresh)
        data = data.reshape((1, 1) + shape) if nd == 2 else data[None]
        c = data.shape[1]
        pi = plane_info(hv, c)
        yield _Block(1, source=label, hdu=hdustr, data=data, owned=owned, bands=pi["bands"], info=pi)
        return
    # a stack: (N, H, W) single band or (N, C, H, W)
    n = shape[0]
    c = 1 if nd == 3 else shape[1]
    pi = plane_info(hv, c)
    use_cat = catalog is not None and catalog.nrows == n
    if catalog is not None and not use_cat:
        log.warning("%s: CATALOG has %d rows for %d cutouts; using header values only",
                    label, catalog.nrows, n)
    step = opts.chunk_size
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        raw = acc.read_image(info.idx, i0, i1)
        data, owned = _numeric_f32(raw, acc.fresh)
        data = data.reshape((i1 - i0, c) + shape[-2:])
        b = _Block(i1 - i0, source=label, hdu=hdustr, rows=np.arange(i0, i1), data=data,
                   owned=owned, bands=pi["bands"], info=pi)
        if use_cat:
            cols = acc.read_table(catalog.idx, i0, i1)
            b.apply_rows({_ROW_COLUMNS[k]: v for k, v in cols.items() if k in _ROW_COLUMNS})
        yield b


_GENERIC_EXTNAMES = {"", "PRIMARY", "SCI", "IMAGE", "COMPRESSED_IMAGE", "DATA"}


def _band_ext_blocks(acc, sel, primary, label, opts):
    hdustr = ",".join(str(x.idx) for x in sel)
    shape0 = sel[0].shape
    for x in sel:
        if len(x.shape) != 2 or x.shape != shape0:
            yield _bad(label, f"one band per extension needs 2-D planes of one shape; HDU {x.idx} "
                              f"has shape {x.shape}, HDU {sel[0].idx} {shape0}", hdu=hdustr)
            return
    planes, bands, infos = [], [], []
    for x in sel:
        own = header_dict(acc.header(x.idx)) if x.idx else primary
        hv = HeaderView(own, primary if x.idx else None)
        pi = plane_info(hv, 1)
        name = next((str(own[k]).strip() for k in ("FILTER", "BAND") if own.get(k)), "")
        if not name and x.extname not in _GENERIC_EXTNAMES:
            name = x.extname
        bands.append(name)
        infos.append(pi)
        planes.append(_numeric_f32(acc.read_image(x.idx))[0])
    data = np.stack(planes)[None]
    info = {f: np.array([pi[f][0] for pi in infos]) for f in _PLANE_FIELDS}
    info["bunit"] = infos[0]["bunit"]
    info["id"] = plane_info(HeaderView(primary), 1)["id"]
    info["true_label"] = plane_info(HeaderView(primary), 1)["true_label"]
    yield _Block(1, source=label, hdu=hdustr, data=data, owned=True, bands=bands, info=info)


def _one_line(e, limit=300):
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _path_blocks(path, opts):
    label = path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield _bad(label, "file not found")
        return
    except OSError as e:
        yield _bad(label, f"unreadable: {e}")
        return
    if stat.S_ISDIR(st.st_mode):
        yield _bad(label, "is a directory (inside a list of sources)")
        return
    if st.st_size == 0:
        yield _bad(label, "empty file (0 bytes), not FITS")
        return
    first_err = None
    if opts.backend in ("auto", "fitsio"):
        acc = None
        produced = 0
        try:
            acc = FitsioAccess(path, st.st_size)
            for b in _access_blocks(acc, label, opts):
                produced += b.n
                yield b
            return
        except Exception as e:  # any fitsio problem: fall back on astropy (or report)
            first_err = f"fitsio: {type(e).__name__}: {_one_line(e)}"
            if produced:
                yield _bad(label, f"read failed after {produced} cutouts: {first_err}")
                return
        finally:
            if acc is not None:
                acc.close()
        if opts.backend == "fitsio":
            yield _bad(label, f"unreadable or not FITS ({first_err})")
            return
        log.debug("%s: fitsio failed (%s); trying astropy", label, first_err)
    acc = None
    produced = 0
    try:
        acc = AstropyAccess(None, path=path)
        for b in _access_blocks(acc, label, opts):
            produced += b.n
            yield b
    except Exception as e:
        msg = f"astropy: {type(e).__name__}: {_one_line(e)}"
        if first_err:
            msg = f"{first_err}; {msg}"
        if produced:
            yield _bad(label, f"read failed after {produced} cutouts: {msg}")
        else:
            yield _bad(label, f"unreadable, truncated or not FITS ({msg})")
    finally:
        if acc is not None:
            try:
                acc.close()
            except Exception:  # closing a broken file must not lose the row
                pass


# ----------------------------------------------------------------------------------------------
# in-memory sources
# ----------------------------------------------------------------------------------------------
def _meta_parts(meta, n_first):
    """Split array metadata into a header-like dict and per-row columns."""
    from astropy.table import Table

    if meta is None:
        return {}, {}
    if isinstance(meta, Table):
        rows = {}
        for name in meta.colnames:
            key = name.upper()
            if key in _ROW_COLUMNS:
                rows[_ROW_COLUMNS[key]] = np.asarray(meta[name])
            elif name in _PLANE_FIELDS or name in ("id", "true_label"):
                rows[name] = np.asarray(meta[name])
        hdr = header_dict(meta.meta)
        return hdr, rows
    if isinstance(meta, dict) or hasattr(meta, "items"):
        hdr = {}
        for k, v in meta.items():
            key = str(k).upper()
            if isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, str):
                vals = list(np.asarray(v).ravel())
                alias = {"GAIN": "GAIN{n}", "SKY": "SKYLEV{n}", "SKYLEV": "SKYLEV{n}",
                         "ZEROPOINT": "MAGZP{n}", "MAGZP": "MAGZP{n}", "EXPTIME": "EXPTIM{n}",
                         "SEEING": "SEEING{n}", "BANDS": "FILTER{n}", "FILTER": "FILTER{n}"}
                if key in alias:
                    for i, val in enumerate(vals, 1):
                        hdr[alias[key].format(n=i)] = val.item() if hasattr(val, "item") else val
                    if key == "BANDS":
                        hdr["BANDS"] = ",".join(str(x) for x in vals)
                continue
            hdr[{"SKY": "SKYLEVEL", "ZEROPOINT": "MAGZP", "ID": "OBJID", "TRUE_LABEL": "TRUELAB",
                 "UNIT": "BUNIT"}.get(key, key)] = v
        return hdr, {}
    raise GalguardValueError(f"meta must be a dict or an astropy Table, got {type(meta).__name__}")


def _array_blocks(arr, label, opts, *, meta=None, user_mask=None, variance=None, bunit=None):
    a = arr
    if isinstance(a, np.ma.MaskedArray):
        m = np.ma.getmaskarray(a)
        user_mask = m if user_mask is None else (np.asarray(user_mask, bool) | m)
        a = a.data
    a = np.asarray(a)
    if a.dtype.kind not in "iuf":
        yield _bad(label, f"non-numeric data of dtype {a.dtype}")
        return
    prob = _dim_problem(a.shape)
    if prob:
        yield _bad(label, prob)
        return
    hdr, rowcols = _meta_parts(meta, a.shape[0])
    if bunit:
        hdr["BUNIT"] = bunit
    hv = HeaderView(hdr)
    nd = a.ndim
    if user_mask is not None:
        user_mask = np.asarray(user_mask, dtype=bool)
        if user_mask.shape != a.shape:
            yield _bad(label, f"mask has shape {user_mask.shape}, data {a.shape}")
            return
    nrows = len(next(iter(rowcols.values()))) if rowcols else -1
    if nd == 2 or (nd == 3 and _layout3(a.shape[0], hv, opts, nrows) == "cube"):
        view = a.reshape((1, 1) + a.shape) if nd == 2 else a[None]
        um = None if user_mask is None else user_mask.reshape(view.shape)
        var = None if variance is None else np.asarray(variance, np.float64).reshape(view.shape)
        pi = plane_info(hv, view.shape[1])
        b = _Block(1, source=label, data=view, mask=um, owned=False, bands=pi["bands"], info=pi,
                   variance=var)
        b.apply_rows(rowcols)
        yield b
        return
    n = a.shape[0]
    c = 1 if nd == 3 else a.shape[1]
    pi = plane_info(hv, c)
    for i0 in range(0, n, opts.chunk_size):
        i1 = min(n, i0 + opts.chunk_size)
        shp = (i1 - i0, c) + a.shape[-2:]
        view = a[i0:i1].reshape(shp)
        um = None if user_mask is None else user_mask[i0:i1].reshape(shp)
        var = None if variance is None else np.asarray(variance[i0:i1], np.float64).reshape(shp)
        b = _Block(i1 - i0, source=label, rows=np.arange(i0, i1), data=view, mask=um, owned=False,
                   bands=pi["bands"], info=pi, variance=var)
        b.apply_rows({k: np.asarray(v)[i0:i1] for k, v in rowcols.items() if len(v) == n})
        yield b


def _nddata_blocks(nd, label, opts):
    from astropy.nddata import VarianceUncertainty

    variance = None
    if nd.uncertainty is not None:
        try:
            variance = np.asarray(nd.uncertainty.represent_as(VarianceUncertainty).array, np.float64)
        except Exception as e:  # an uncertainty type that cannot become a variance
            log.info("%s: uncertainty ignored (%s)", label, e)
    bunit = None if nd.unit is None else nd.unit.to_string()
    meta = nd.meta if nd.meta else None
    yield from _array_blocks(nd.data, label, opts, meta=meta, user_mask=nd.mask,
                             variance=variance, bunit=bunit)


def _cutouts_blocks(cut, label, opts):
    n = len(cut)
    m = cut.meta
    for i0 in range(0, n, opts.chunk_size):
        i1 = min(n, i0 + opts.chunk_size)
        b = _Block(i1 - i0, source=label, rows=np.arange(i0, i1), data=cut.data[i0:i1],
                   mask=cut.mask[i0:i1], owned=False, bands=cut.bands)
        cols = {k: np.asarray(m[k][i0:i1]) for k in ("id", "true_label") + _PLANE_FIELDS
                if k in m.colnames}
        b.apply_rows(cols)
        if "bunit" in m.colnames and n:
            b.bunit = str(m["bunit"][i0])
        if "source" in m.colnames:
            b.sources = np.asarray(m["source"][i0:i1]).astype(object)
        if "hdu" in m.colnames:
            b.hdus = np.asarray(m["hdu"][i0:i1]).astype(object)
        if "row" in m.colnames:
            b.rows = np.asarray(m["row"][i0:i1], np.int64)
        if "flags" in m.colnames:
            b.flags = np.asarray(m["flags"][i0:i1], np.int64).copy()
        if "error" in m.colnames:
            b.errors = np.asarray(m["error"][i0:i1]).astype(object)
        if "sky_removed" in m.colnames:
            b.sky_removed = np.asarray(m["sky_removed"][i0:i1], bool).copy()
        yield b


# ----------------------------------------------------------------------------------------------
# expanding a source into units, lazily
# ----------------------------------------------------------------------------------------------
def _is_fits_name(name):
    low = name.lower()
    return low.endswith(FITS_SUFFIXES)


def _list_dir(d, recursive):
    out = []
    if recursive:
        for root, dirs, files in os.walk(d):
            dirs.sort()
            out.extend(os.path.join(root, f) for f in files if _is_fits_name(f))
    else:
        with os.scandir(d) as it:
            out = [e.path for e in it if e.is_file() and _is_fits_name(e.name)]
    return sorted(out)


def _expand_string(s, opts, name="source"):
    """Return an iterable of paths for one string source (raises for an empty glob/dir)."""
    if s.startswith("@"):
        lst = s[1:]
        if not os.path.isfile(lst):
            raise GalguardValueError(f"{name} {s!r}: the list file {lst!r} does not exist")

        def lines():
            base = os.path.dirname(lst)
            with open(lst, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield line if os.path.isabs(line) else os.path.join(base, line)
        return lines()
    if os.path.isdir(s):
        paths = _list_dir(s, opts.recursive)
        if not paths:
            raise GalguardValueError(f"{name} {s!r} is a directory with no FITS files "
                                     f"({', '.join(FITS_SUFFIXES)})")
        return paths
    if not os.path.exists(s) and glob.has_magic(s):
        paths = sorted(p for p in glob.iglob(s, recursive=opts.recursive) if not os.path.isdir(p))
        if not paths:
            raise GalguardValueError(f"{name} {s!r}: the glob matched no files")
        return paths
    return [s]


def _units(source, opts):
    """Yield ('path', str) or ('obj', object, label) units in input order."""
    from astropy.io import fits
    from astropy.nddata import NDData

    if isinstance(source, (str, os.PathLike)):
        for p in _expand_string(os.fspath(source), opts):
            yield ("path", p)
        return
    if isinstance(source, (np.ndarray, Cutouts, fits.HDUList, NDData,
                           fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        yield ("obj", source, None)
        return
    for i, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            s = os.fspath(item)
            if glob.has_magic(s) and not os.path.exists(s) or os.path.isdir(s) or s.startswith("@"):
                for p in _expand_string(s, opts, name=f"source[{i}]"):
                    yield ("path", p)
            else:
                yield ("path", s)
        else:
            yield ("obj", item, i)


def _unit_blocks(unit, opts):
    from astropy.io import fits
    from astropy.nddata import NDData

    if unit[0] == "path":
        yield from _path_blocks(unit[1], opts)
        return
    obj, pos = unit[1], unit[2]
    suffix = "" if pos is None else f" {pos}"
    try:
        if isinstance(obj, Cutouts):
            yield from _cutouts_blocks(obj, f"<Cutouts{suffix}>", opts)
        elif isinstance(obj, fits.HDUList):
            fn = obj.filename() if hasattr(obj, "filename") else None
            yield from _access_blocks(AstropyAccess(obj), fn or f"<HDUList{suffix}>", opts)
        elif isinstance(obj, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            yield from _access_blocks(AstropyAccess([obj]), f"<{type(obj).__name__}{suffix}>", opts)
        elif isinstance(obj, NDData):
            yield from _nddata_blocks(obj, f"<{type(obj).__name__}{suffix}>", opts)
        elif isinstance(obj, np.ndarray):
            meta = opts.meta if pos is None else None
            yield from _array_blocks(obj, f"<ndarray{suffix}>", opts, meta=meta)
        elif isinstance(obj, (list, tuple)) and obj and all(np.isscalar(v) for v in np.ravel(obj)[:1]):
            yield from _array_blocks(np.asarray(obj), f"<array{suffix}>", opts)
        else:
            yield _bad(f"<item{suffix}>", f"unsupported source type {type(obj).__name__}")
    except Exception as e:
        yield _bad(f"<{type(obj).__name__}{suffix}>", f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------
# finishing blocks: bands, size, non-finite pixels, sky and gain; then chunks
# ----------------------------------------------------------------------------------------------
class _State:
    def __init__(self, opts):
        self.bands = None if opts.bands is None or any(isinstance(b, int) for b in opts.bands) \
            else tuple(opts.bands)
        self.c = None if opts.bands is None else len(opts.bands)
        self.size = opts.size
        self.index = 0
        self.known = False


def _make_bad(b, msg):
    out = _Block(b.n, source=b.source, hdu=b.hdu, rows=b.rows, error=f"{b.source}"
                 + (f"[hdu {b.hdu}]" if b.hdu else "") + f": {msg}")
    for extra in ("sources", "hdus"):
        if hasattr(b, extra):
            setattr(out, extra, getattr(b, extra))
    out.ids = b.ids
    out.labels = b.labels
    return out


def _select_bands(b, opts, state):
    if opts.bands is None:
        return b, None
    want = opts.bands
    idx = []
    names = []
    c = len(b.bands)
    have = b.bands
    for w in want:
        if isinstance(w, int):
            if w >= c:
                return None, f"bands={want!r}: plane {w} requested, the data have {c} planes"
            idx.append(w)
            names.append(have[w])
        elif w in have:
            idx.append(have.index(w))
            names.append(w)
        elif not any(have) and c == len(want):
            idx = list(range(c))
            names = list(want)
            break
        else:
            return None, (f"bands={want!r}: band {w!r} is not in the data's bands "
                          f"{tuple(have)}" if any(have) else
                          f"bands={want!r}: the data have {c} unnamed planes")
    if idx == list(range(c)):
        b.bands = names
        return b, None
    b.data = b.data[:, idx]
    b.owned = b.owned and True
    if b.mask is not None:
        b.mask = b.mask[:, idx]
    if b.variance is not None:
        b.variance = b.variance[:, idx]
    for f in _PLANE_FIELDS:
        setattr(b, f, getattr(b, f)[:, idx])
    if b.sky_removed is not None:
        b.sky_removed = b.sky_removed[:, idx]
    b.bands = names
    return b, None


def _resize(arr, mask, h, w, fill=0):
    """Centre-crop or pad the last two axes to (h, w); returns (arr, mask) new arrays."""
    n, c, ah, aw = arr.shape
    out = np.full((n, c, h, w), fill, dtype=arr.dtype)
    om = np.ones((n, c, h, w), dtype=bool)
    def spans(cur, tgt):
        if cur >= tgt:
            s = (cur - tgt) // 2
            return slice(s, s + tgt), slice(0, tgt)
        s = (tgt - cur) // 2
        return slice(0, cur), slice(s, s + cur)
    (sy, dy), (sx, dx) = spans(ah, h), spans(aw, w)
    out[:, :, dy, dx] = arr[:, :, sy, sx]
    om[:, :, dy, dx] = mask[:, :, sy, sx]
    return out, om


_ONES = {}


def _ones(n):
    v = _ONES.get(n)
    if v is None:
        if len(_ONES) > 8:
            _ONES.clear()
        v = _ONES[n] = np.ones(n, dtype=np.float32)
    return v


def _finish(b, opts, state):
    """Bands, size, non-finite pixels, per-row badness, sky and gain. Returns a block."""
    if b.data is None:
        return b
    orig = b
    b, err = _select_bands(b, opts, state)
    if err:
        return _make_bad(orig, err)
    c = len(b.bands)
    if state.c is None:
        state.c = c
    if c != state.c:
        return _make_bad(b, f"{c} planes (bands {tuple(b.bands)}), the collection has {state.c} "
                            f"(bands {state.bands}); pass bands= to select planes")
    if state.bands is None:
        state.bands = tuple(b.bands)
    elif any(x and y and x != y for x, y in zip(state.bands, b.bands)):
        return _make_bad(b, f"bands {tuple(b.bands)} differ from the collection's {state.bands}; "
                            f"pass bands= to select and order them")
    elif not all(state.bands) and all(b.bands):
        state.bands = tuple(x or y for x, y in zip(state.bands, b.bands))
    h, w = b.data.shape[-2:]
    if state.size is None:
        state.size = (h, w)
    state.known = True
    data = b.data if b.owned else b.data.copy()
    bad = np.zeros(data.shape, dtype=bool)
    anybad = False
    if data.size:
        # one BLAS pass: a row sum is finite unless the row holds NaN/inf (or overflows, which
        # only costs the exact check below)
        flat = data.reshape(b.n, -1)
        if data.size < (1 << 16):
            suspect = ~np.isfinite(flat).all(axis=1)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                rowsum = flat @ _ones(flat.shape[1])
            suspect = ~np.isfinite(rowsum)
        if suspect.any():
            rows_bad = ~np.isfinite(data[suspect])
            bad[suspect] = rows_bad
            anybad = bool(rows_bad.any())
    mask = bad if b.mask is None else (bad | b.mask)
    if anybad:
        data[bad] = 0.0
        b.flags[bad.reshape(b.n, -1).any(axis=1)] |= int(Flag.NONFINITE_MASKED)
    if (h, w) != state.size:
        data, mask = _resize(data, mask, *state.size)
        if b.variance is not None:
            b.variance, _ = _resize(b.variance, np.zeros(b.variance.shape, bool), *state.size, fill=np.nan)
        b.flags |= int(Flag.RESIZED)
    b.data, b.mask, b.owned = data, mask, True
    if anybad or b.mask is not None and mask.any():
        allbad = mask.reshape(b.n, -1).all(axis=1)
    else:
        allbad = np.zeros(b.n, dtype=bool)
    if allbad.any():
        for i in np.nonzero(allbad)[0]:
            if b.flags[i] & int(Flag.BAD_INPUT) and b.errors[i]:
                continue  # already bad (a Cutouts source keeps its message)
            what = "all pixels are NaN/inf" if bad[i].all() else "all pixels are masked"
            b.errors[i] = f"{b.source}" + (f"[hdu {b.hdu}]" if b.hdu else "") + \
                f"{'' if b.n == 1 else f' row {int(b.rows[i])}'}: {what}"
            b.flags[i] |= int(Flag.BAD_INPUT)
        data[allbad] = 0.0
        mask[allbad] = True
    if b.sky_removed is None:
        b.sky_removed = np.zeros((b.n, c), dtype=bool)
    for k, v in opts.fill.items():
        arr = getattr(b, k)
        if v.size not in (1, c):
            return _make_bad(b, f"fill[{k!r}] has {v.size} values for {c} bands")
        miss = np.isnan(arr)
        if miss.any():
            arr[miss] = np.broadcast_to(v, (b.n, c))[miss]
    _sky_gain(b, opts, ~allbad)
    miss_t = np.isnan(b.exptime).any(axis=1) & ~allbad
    b.flags[miss_t] |= int(Flag.EXPTIME_MISSING)
    return b


def _sky_gain(b, opts, good):
    """Fill missing sky and gain (see `read_cutouts` Notes)."""
    need_s = np.isnan(b.sky) & good[:, None]
    need_g = np.isnan(b.gain) & good[:, None]
    rows = (need_s | need_g).any(axis=1)
    if not rows.any():
        return
    if not opts.estimate:
        b.flags[rows] |= int(Flag.HEADER_INCOMPLETE)
        return
    idx = np.nonzero(rows)[0]
    h, w = b.data.shape[-2:]
    border = opts.border or default_border(h, w)
    level, var = border_background(b.data[idx], mask=b.mask[idx], border=border)
    ns, ng = need_s[idx], need_g[idx]
    sky, gain = b.sky[idx], b.gain[idx]
    sd = np.sqrt(var)
    valid = np.isfinite(level) & np.isfinite(var) & (var > 0)
    if opts.subtract_sky is True:
        raw = ns & np.isfinite(level)
    elif opts.subtract_sky is False:
        raw = np.zeros_like(ns)
    else:
        raw = ns & valid & (level > RAW_SKY_NSIGMA * sd)
    # 1. images that still hold their sky: the border level is the sky; subtract it
    if raw.any():
        ri, ci = np.nonzero(raw)
        b.data[idx[ri], ci] -= level[ri, ci].astype(np.float32)[:, None, None]
        b.data[idx[ri], ci] *= ~b.mask[idx[ri], ci]  # keep masked pixels at 0
        b.sky_removed[idx[ri], ci] = True
        sky[raw] = level[raw]
        g_raw = np.where(valid, level / np.where(valid, var, 1.0), np.nan)
        take = raw & ng & np.isfinite(g_raw) & (g_raw > 0)
        gain[take] = g_raw[take]
    resid = np.where(raw, 0.0, level)
    # 2a. a variance map (NDData uncertainty) gives the gain pixel by pixel (preferred)
    if b.variance is not None:
        for r, cc in zip(*np.nonzero(ng & ~np.isnan(sky))):
            v = b.variance[idx[r], cc]
            f = b.data[idx[r], cc] + sky[r, cc]
            ok = (v > 0) & np.isfinite(v) & ~b.mask[idx[r], cc] & (f > 0)
            if ok.sum() >= 16:
                gain[r, cc] = float(np.median(f[ok] / v[ok]))
    # 2. gain where the sky is known: var = (level + sky) / gain
    g_known = (resid + sky) / np.where(valid, var, np.nan)
    take = ng & np.isnan(gain) & ~ns & np.isfinite(g_known) & (g_known > 0)
    gain[take] = g_known[take]
    # 3. no way to estimate: the default gain
    dflt = ng & ~(np.isfinite(gain) & (gain > 0))
    gain[dflt] = opts.default_gain
    # 4. sky-subtracted data with no sky value: the Poisson variance gives it, sky = g var - level
    s_est = gain * var - resid
    take = ns & ~raw & np.isfinite(s_est)
    sky[take] = np.maximum(s_est[take], 0.0)
    b.sky[idx], b.gain[idx] = sky, gain
    fl = b.flags[idx]
    fl[ns.any(axis=1)] |= int(Flag.SKY_ESTIMATED)
    fl[ng.any(axis=1)] |= int(Flag.GAIN_ESTIMATED)
    fl[(np.isnan(sky) | np.isnan(gain)).any(axis=1)] |= int(Flag.HEADER_INCOMPLETE)
    b.flags[idx] = fl


def _materialise(blocks, state):
    """Build a Cutouts from finished blocks (bad blocks get zero data and an all-True mask)."""
    n = sum(b.n for b in blocks)
    c = state.c or 0
    h, w = state.size or (0, 0)
    bands = state.bands if state.bands is not None else ("",) * c
    single = len(blocks) == 1 and blocks[0].data is not None
    data = np.zeros((0 if single else n, c, h, w), dtype=np.float32)
    mask = np.ones((0 if single else n, c, h, w), dtype=bool)
    meta = empty_meta(n, c)
    cols = {k: [] for k in ("source", "hdu", "row", "bands", "bunit", "flags", "error", "id",
                            "true_label")}
    planes = {k: np.full((n, c), np.nan) for k in _PLANE_FIELDS}
    skyrem = np.zeros((n, c), dtype=bool)
    band_str = ",".join(bands)
    i = 0
    for b in blocks:
        j = i + b.n
        if b.data is not None:
            if single:
                data, mask = b.data, b.mask  # one block: no copy
            else:
                data[i:j] = b.data
                mask[i:j] = b.mask
            for k in _PLANE_FIELDS:
                planes[k][i:j] = getattr(b, k)
            skyrem[i:j] = b.sky_removed
            cols["bands"].append(np.full(b.n, ",".join(b.bands) if b.bands else band_str, dtype=object))
        else:
            cols["bands"].append(np.full(b.n, band_str, dtype=object))
        cols["source"].append(getattr(b, "sources", None) if hasattr(b, "sources")
                              else np.full(b.n, b.source, dtype=object))
        cols["hdu"].append(getattr(b, "hdus", None) if hasattr(b, "hdus")
                           else np.full(b.n, b.hdu, dtype=object))
        cols["row"].append(b.rows)
        cols["bunit"].append(np.full(b.n, b.bunit, dtype=object))
        cols["flags"].append(b.flags)
        cols["error"].append(b.errors)
        cols["id"].append(b.ids)
        cols["true_label"].append(b.labels)
        i = j
    index = np.arange(state.index, state.index + n, dtype=np.int64)
    state.index += n
    meta["index"] = index
    for k in ("source", "hdu", "bands", "bunit", "error"):
        arr = np.concatenate(cols[k]) if cols[k] else np.zeros(0, object)
        meta[k] = arr.astype(str) if n else np.zeros(0, dtype="U1")
    for k in ("row", "flags", "id", "true_label"):
        meta[k] = np.concatenate(cols[k]).astype(np.int64) if cols[k] else np.zeros(0, np.int64)
    ids = np.asarray(meta["id"])
    meta["id"] = np.where(ids >= 0, ids, index)
    for k in _PLANE_FIELDS:
        meta[k] = planes[k]
    meta["sky_removed"] = skyrem
    return Cutouts(data, mask, meta, bands=bands)


def _generate(source, opts):
    state = _State(opts)
    pending, count = [], 0
    emitted = False
    for unit in _units(source, opts):
        for blk in _unit_blocks(unit, opts):
            try:
                blk = _finish(blk, opts, state)
            except Exception as e:  # a bug-proof guard: one block must not stop the batch
                log.exception("finishing %s failed", blk.source)
                blk = _make_bad(blk, f"{type(e).__name__}: {e}")
            pending.append(blk)
            count += blk.n
            while state.known and count >= opts.chunk_size:
                take, rest, k = [], [], 0
                for p in pending:
                    if k >= opts.chunk_size:
                        rest.append(p)
                    elif k + p.n <= opts.chunk_size:
                        take.append(p)
                        k += p.n
                    else:
                        cut = opts.chunk_size - k
                        take.append(p.take(0, cut))
                        rest.append(p.take(cut, p.n))
                        k += cut
                pending, count = rest, count - k
                emitted = True
                yield _materialise(take, state)
    if pending or not emitted:
        yield _materialise(pending, state)


def iter_cutouts(source, *, chunk_size=DEFAULT_CHUNK_SIZE, hdu=None, bands=None, size=None,
                 layout="auto", meta=None, estimate=True, border=None, subtract_sky="auto",
                 default_gain=DEFAULT_GAIN, fill=None, backend="auto", recursive=False):
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
    opts = _make_opts(hdu, bands, size, chunk_size, layout, estimate, border, subtract_sky,
                      default_gain, fill, backend, recursive, meta)
    _check_source(source, opts)
    return _generate(source, opts)


def _check_source(source, opts):
    from astropy.io import fits
    from astropy.nddata import NDData

    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if not s:
            raise GalguardValueError("source must be a path, glob, directory, list, array, HDU or "
                                     "NDData, got an empty string")
        _expand_string(s, opts)  # raises early for an empty glob or directory
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
                 fill=None, backend="auto", recursive=False, chunk_size=None):
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
        the primary HDU when it holds data; otherwise the one image extension; otherwise, when
        all image extensions are 2-D of one shape, one band per extension (band names from
        FILTER, BAND or a non-generic EXTNAME); otherwise each image extension is its own item.
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

    Returns
    -------
    Cutouts
        ``data`` float32 (N, C, H, W) native byte order, sky-subtracted; ``mask`` bool; ``meta``
        one row per input cutout in input order (see `galguard.io.META_COLUMNS`).

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
                               backend=backend, recursive=recursive))
    if len(chunks) == 1:
        return chunks[0]
    out = Cutouts.concatenate(chunks)
    return out

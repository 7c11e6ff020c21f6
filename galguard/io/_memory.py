"""Blocks from in-memory sources: arrays, NDData, Cutouts.
"""

import logging

import numpy as np

from ..errors import GalguardValueError
from ._blocks import Block, bad
from ._fits_blocks import dim_problem, layout3
from ._header import HeaderView, header_dict, plane_info
from ._options import PLANE_FIELDS, ROW_COLUMNS

log = logging.getLogger(__name__)


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
            if key in ROW_COLUMNS:
                rows[ROW_COLUMNS[key]] = np.asarray(meta[name])
            elif name in PLANE_FIELDS or name in ("id", "true_label"):
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


def array_blocks(arr, label, opts, *, meta=None, user_mask=None, variance=None, bunit=None):
    a = arr
    if isinstance(a, np.ma.MaskedArray):
        m = np.ma.getmaskarray(a)
        user_mask = m if user_mask is None else (np.asarray(user_mask, bool) | m)
        a = a.data
    a = np.asarray(a)
    if a.dtype.kind not in "iuf":
        yield bad(label, f"non-numeric data of dtype {a.dtype}")
        return
    prob = dim_problem(a.shape)
    if prob:
        yield bad(label, prob)
        return
    hdr, rowcols = _meta_parts(meta, a.shape[0])
    if bunit:
        hdr["BUNIT"] = bunit
    hv = HeaderView(hdr)
    nd = a.ndim
    if user_mask is not None:
        user_mask = np.asarray(user_mask, dtype=bool)
        if user_mask.shape != a.shape:
            yield bad(label, f"mask has shape {user_mask.shape}, data {a.shape}")
            return
    nrows = len(next(iter(rowcols.values()))) if rowcols else -1
    if nd == 2 or (nd == 3 and layout3(a.shape[0], hv, opts, nrows) == "cube"):
        view = a.reshape((1, 1) + a.shape) if nd == 2 else a[None]
        um = None if user_mask is None else user_mask.reshape(view.shape)
        var = None if variance is None else np.asarray(variance, np.float64).reshape(view.shape)
        pi = plane_info(hv, view.shape[1])
        b = Block(1, source=label, data=view, mask=um, owned=False, bands=pi["bands"], info=pi,
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
        b = Block(i1 - i0, source=label, rows=np.arange(i0, i1), data=view, mask=um, owned=False,
                   bands=pi["bands"], info=pi, variance=var)
        b.apply_rows({k: np.asarray(v)[i0:i1] for k, v in rowcols.items() if len(v) == n})
        yield b


def nddata_blocks(nd, label, opts):
    from astropy.nddata import VarianceUncertainty

    variance = None
    if nd.uncertainty is not None:
        try:
            variance = np.asarray(nd.uncertainty.represent_as(VarianceUncertainty).array, np.float64)
        except Exception as e:  # an uncertainty type that cannot become a variance
            log.info("%s: uncertainty ignored (%s)", label, e)
    bunit = None if nd.unit is None else nd.unit.to_string()
    meta = nd.meta if nd.meta else None
    yield from array_blocks(nd.data, label, opts, meta=meta, user_mask=nd.mask,
                             variance=variance, bunit=bunit)


def cutouts_blocks(cut, label, opts):
    n = len(cut)
    m = cut.meta
    for i0 in range(0, n, opts.chunk_size):
        i1 = min(n, i0 + opts.chunk_size)
        b = Block(i1 - i0, source=label, rows=np.arange(i0, i1), data=cut.data[i0:i1],
                   mask=cut.mask[i0:i1], owned=False, bands=cut.bands,
                   variance=None if cut.variance is None else cut.variance[i0:i1])
        cols = {k: np.asarray(m[k][i0:i1]) for k in ("id", "true_label") + PLANE_FIELDS
                if k in m.colnames}
        b.apply_rows(cols)
        if "id_given" in m.colnames:
            b.ids[~np.asarray(m["id_given"][i0:i1], bool)] = -1  # positions are renumbered
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

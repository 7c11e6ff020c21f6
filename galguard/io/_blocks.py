"""Blocks: runs of rows from one source, before they are put into chunks.
"""

import numpy as np

from ..flags import Flag
from ._options import PLANE_FIELDS


# ----------------------------------------------------------------------------------------------
# blocks: a run of rows from one source, before they are put into chunks
# ----------------------------------------------------------------------------------------------
class Block:
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
        for f in PLANE_FIELDS:
            setattr(self, f, np.full((n, c), np.nan))
        if info is not None:
            self.apply_info(info)

    def apply_info(self, info):
        """Broadcast per-plane header values (from `plane_info`) to every row."""
        c = len(self.bands)
        for f in PLANE_FIELDS:
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
                    f = a.astype(np.float64)
                    ok = np.isfinite(f) & (f >= -(2.0**63)) & (f < 2.0**63)  # int64 only
                    v = np.where(ok, a, -1).astype(np.int64)
                    (self.ids if name == "id" else self.labels)[:] = v
            elif name in PLANE_FIELDS and a.dtype.kind in "iuf":
                a = a.astype(np.float64)
                if a.ndim == 1:
                    a = np.repeat(a[:, None], c, axis=1)
                if a.shape == (self.n, c):
                    getattr(self, name)[:] = np.where(np.isfinite(a), a, np.nan)

    def take(self, i0, i1):
        b = Block.__new__(Block)
        b.n = i1 - i0
        b.source, b.hdu, b.bands, b.bunit, b.owned = self.source, self.hdu, self.bands, self.bunit, self.owned
        for name in ("rows", "flags", "errors", "ids", "labels", "data", "mask", "variance",
                     "sky_removed") + PLANE_FIELDS:
            v = getattr(self, name)
            setattr(b, name, None if v is None else v[i0:i1])
        for extra in ("sources", "hdus"):
            if hasattr(self, extra):
                setattr(b, extra, getattr(self, extra)[i0:i1])
        return b


def bad(source, msg, *, hdu="", n=1, rows=None):
    label = f"{source}" + (f"[hdu {hdu}]" if hdu != "" else "")
    return Block(n, source=source, hdu=hdu, rows=rows, error=f"{label}: {msg}")


def numeric_f32(arr, fresh=False):
    """Native float32, copied only if needed; returns (array, owned).

    ``fresh``: ``arr`` was just read from a file and belongs to nobody else.
    """
    a = np.asarray(arr)
    out = a.astype(np.float32, copy=False)
    if out.dtype.byteorder not in ("=", "|"):
        out = out.astype(np.float32)
    owned = fresh or (not np.shares_memory(out, a) if out.size else True)
    return out, owned

"""FITS access behind one small interface: fitsio (fast path) and astropy (everything else).

Both expose ``infos`` (one `HDUInfo` per HDU), ``header(i)`` (a dict), ``read_image(i, start,
stop)`` (rows ``start:stop`` of the first axis, or everything), ``read_table(i, start, stop)``
(dict of upper-case column name to array), ``close()`` and ``fresh`` (arrays read belong to
nobody else).
"""

import os
import warnings

import numpy as np

from ._header import header_dict, parse_header_bytes

__all__ = ["HDUInfo", "FitsioAccess", "AstropyAccess", "RAW_READ_MIN_BYTES"]

#: plain float images at least this large are read through a numpy memmap instead of cfitsio
RAW_READ_MIN_BYTES = 1 << 20

class HDUInfo:
    __slots__ = ("idx", "kind", "shape", "extname", "nrows", "compressed")

    def __init__(self, idx, kind, shape, extname, nrows=0, compressed=False):
        self.idx, self.kind, self.shape, self.extname = idx, kind, tuple(shape), extname
        self.nrows, self.compressed = nrows, compressed


_PLAIN = (".fits", ".fit", ".fts")


def _finfo(h):
    """fitsio's HDU info without the deep copy that ``get_info()`` makes (~100 us a call)."""
    info = getattr(h, "_info", None)
    return info if isinstance(info, dict) else h.get_info()


class FitsioAccess:
    def __init__(self, path, size=None):
        import fitsio

        self.path = path
        self.fresh = True
        self._headers = {}
        self.f = fitsio.FITS(path)
        self.infos = []
        for i, h in enumerate(self.f):
            et = h.get_exttype()
            name = (h.get_extname() or "").upper()
            if et == "IMAGE_HDU":
                dims = tuple(h.get_dims()) if h.has_data() else ()
                self.infos.append(HDUInfo(i, "image", dims, name, compressed=h.is_compressed()))
            elif et in ("BINARY_TBL", "ASCII_TBL"):
                self.infos.append(HDUInfo(i, "table", (), name, nrows=h.get_nrows()))
            else:
                self.infos.append(HDUInfo(i, "other", (), name))
        self._plain = path.lower().endswith(_PLAIN)
        if self._plain and self.infos:
            end = _finfo(self.f[len(self.infos) - 1]).get("data_end")
            have = size if size is not None else os.path.getsize(path)
            if end is not None and have < end:
                raise OSError(f"file truncated: {have} bytes, its headers need {end}")

    def header(self, i):
        if i in self._headers:
            return self._headers[i]
        self._headers[i] = h = self._header(i)
        return h

    def _header(self, i):
        info = self.infos[i]
        if self._plain and not info.compressed:
            # parsing the raw cards in Python is ~3x cheaper than fitsio's record list
            off = _finfo(self.f[i])
            start, stop = off.get("header_start"), off.get("data_start")
            if start is not None and stop is not None and 0 <= start < stop:
                with open(self.path, "rb") as fh:
                    fh.seek(start)
                    d, ok = parse_header_bytes(fh.read(stop - start))
                if ok:
                    return d
        return header_dict(self.f[i].read_header_list())

    def read_image(self, i, start=None, stop=None):
        raw = self._read_raw_float(i, start, stop)
        if raw is not None:
            return raw
        scaled = self._read_scaled_int(i, start, stop)
        if scaled is not None:
            return scaled
        h = self.f[i]
        if start is None:
            return h.read()
        nd = len(self.infos[i].shape)
        return h[(slice(start, stop),) + (slice(None),) * (nd - 1)]

    def _read_raw_float(self, i, start, stop):
        """Unscaled float images of a plain file: numpy reads the bytes and swaps them in place.

        cfitsio converts big-endian floats element by element; for large stacks a read-only
        numpy memmap and one byte-swapping copy is about twice as fast. Returns None where this
        does not apply (compressed, scaled or integer data, gzip files).
        """
        info = self.infos[i]
        fi = _finfo(self.f[i])
        if not self._plain or info.compressed or fi.get("img_type") not in (-32, -64):
            return None
        hdr = self.header(i)
        if hdr.get("BSCALE", 1) not in (1, 1.0) or hdr.get("BZERO", 0) not in (0, 0.0):
            return None
        shape = info.shape
        dtype = np.dtype(">f4" if fi["img_type"] == -32 else ">f8")
        row = 1
        for s in shape[1:]:
            row *= int(s)
        a, b = (0, shape[0]) if start is None else (start, stop)
        count = (b - a) * row
        if count * dtype.itemsize < RAW_READ_MIN_BYTES:
            return None  # small images: cfitsio is quicker than setting up a memmap
        offset = int(fi["data_start"]) + a * row * dtype.itemsize
        if offset + count * dtype.itemsize > os.path.getsize(self.path):
            raise OSError("file truncated: the data end past the end of the file")
        if count == 0:
            return np.zeros((b - a,) + shape[1:], dtype=np.float32)
        mm = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=(b - a,) + shape[1:])
        try:
            return mm.astype(dtype.newbyteorder("="))  # one pass: read, swap, copy
        finally:
            del mm

    def _read_scaled_int(self, i, start, stop):
        """Integer images with BLANK or BSCALE/BZERO, as astropy reads them: BLANK pixels become
        NaN (so they are masked and flagged NONFINITE_MASKED), and the scaling is done in
        float64 (cfitsio truncated scaled BITPIX=64 values to integers). None elsewhere."""
        info = self.infos[i]
        fi = _finfo(self.f[i])
        if info.compressed or fi.get("img_type") not in (8, 16, 32, 64):
            return None
        hdr = self.header(i)
        bscale, bzero = hdr.get("BSCALE", 1), hdr.get("BZERO", 0)
        blank = hdr.get("BLANK")
        if blank is None and bscale in (1, 1.0) and bzero in (0, 0.0):
            return None
        from astropy.io import fits

        with fits.open(self.path, do_not_scale_image_data=True, memmap=False,
                       lazy_load_hdus=True) as hdul:
            raw = hdul[i].data
            if start is not None:
                raw = raw[start:stop]
            out = raw.astype(np.float64)
            bad = (raw == int(blank)) if isinstance(blank, (int, np.integer)) else None
        out = out * float(bscale) + float(bzero)
        if bad is not None:
            out[bad] = np.nan
        return out

    def read_table(self, i, start=None, stop=None):
        h = self.f[i]
        rows = None if start is None else np.arange(start, stop)
        arr = h.read(rows=rows)
        return {n.upper(): arr[n] for n in arr.dtype.names}

    def close(self):
        self.f.close()


class AstropyAccess:
    def __init__(self, hdus, *, path=None):
        from astropy.io import fits

        self.path = path
        self.fresh = path is not None
        if path is not None:
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                self.hdul = fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=False)
            for w in rec:
                if "truncated" in str(w.message).lower():
                    self.hdul.close()
                    raise OSError(str(w.message))
            self.own = True
        else:
            self.hdul = hdus
            self.own = False
        self.infos = []
        for i, h in enumerate(self.hdul):
            name = str(h.header.get("EXTNAME", "") or "").upper()
            if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                shape = tuple(h.shape) if h.header.get("NAXIS", 0) or isinstance(h, fits.CompImageHDU) else ()
                if h.data is None and not isinstance(h, fits.CompImageHDU) and path is None:
                    shape = ()
                self.infos.append(HDUInfo(i, "image", shape, name,
                                           compressed=isinstance(h, fits.CompImageHDU)))
            elif isinstance(h, (fits.BinTableHDU, fits.TableHDU)):
                self.infos.append(HDUInfo(i, "table", (), name, nrows=int(h.header.get("NAXIS2", 0))))
            else:
                self.infos.append(HDUInfo(i, "other", (), name))

    def header(self, i):
        return header_dict(self.hdul[i].header)

    def _checked(self, fn):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = fn()
        for w in rec:
            if "truncated" in str(w.message).lower():
                raise OSError(str(w.message))
        return out

    def read_image(self, i, start=None, stop=None):
        h = self.hdul[i]
        if start is None:
            return self._checked(lambda: np.asarray(h.data))
        if self.path is not None:
            try:
                return self._checked(lambda: np.asarray(h.section[start:stop]))
            except (AttributeError, TypeError, ValueError):
                pass
        return self._checked(lambda: np.asarray(h.data[start:stop]))

    def read_table(self, i, start=None, stop=None):
        d = self.hdul[i].data
        if start is not None:
            d = d[start:stop]
        return {n.upper(): np.asarray(d[n]) for n in d.columns.names}

    def close(self):
        if self.own:
            self.hdul.close()

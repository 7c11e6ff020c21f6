"""Header conventions: which keywords galguard reads, per plane and as scalars.

See ``docs/contracts.md`` ("FITS written by galguard.sim"). For plane n = 1..C the per-plane
keyword wins; the scalar keywords (first one found, in the order listed) apply to every plane
where the per-plane one is missing. Extension headers fall back on the primary header.
"""

import logging
import math

import numpy as np

__all__ = ["PLANE_KEYS", "SCALAR_KEYS", "header_dict", "parse_header_bytes", "RawHeader", "HeaderView",
           "plane_info", "has_band_info", "names_single_band"]

log = logging.getLogger(__name__)

#: per-plane keyword templates ({n} = 1-based plane number)
PLANE_KEYS = {
    "band": "FILTER{n}",
    "gain": "GAIN{n}",
    "sky": "SKYLEV{n}",
    "zeropoint": "MAGZP{n}",
    "exptime": "EXPTIM{n}",
    "seeing": "SEEING{n}",
    "saturation": "SATUR{n}",
}

#: scalar keywords and their aliases, first found wins
SCALAR_KEYS = {
    "band": ("FILTER", "BAND", "FILTNAM1"),
    "gain": ("GAIN", "EGAIN"),
    "sky": ("SKYLEVEL", "SKYLEV", "SKY", "BACKGND", "BACKGRND", "MDRIZSKY"),
    "zeropoint": ("MAGZP", "MAGZPT", "MAGZERO", "ZEROPT", "PHOTZP", "ZP"),
    "exptime": ("EXPTIME", "EXPOSURE", "TEXPTIME"),
    "seeing": ("SEEING", "PSF_FWHM"),
    "saturation": ("SATURATE", "SATLEVEL", "SATURATN"),
}

_SKIP = {"COMMENT", "HISTORY", "", "CONTINUE", "END"}


def header_dict(header):
    """Return a plain ``{UPPER_KEY: value}`` dict from an astropy Header, a fitsio FITSHDR,
    a list of fitsio header records, or a mapping (keys upper-cased; COMMENT/HISTORY dropped)."""
    if header is None:
        return {}
    if isinstance(header, list):  # fitsio read_header_list()
        return {r["name"].upper(): r["value"] for r in header
                if r.get("name") and r["name"].upper() not in _SKIP}
    if hasattr(header, "records") and callable(header.records):  # fitsio FITSHDR
        return header_dict(header.records())
    try:
        items = header.items()
    except AttributeError:
        return {}
    out = {}
    for k, v in items:
        k = str(k).upper()
        if k not in _SKIP:
            out[k] = v
    return out


def _card_value(text):
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1:end + 2] == "'":  # '' is an escaped quote
            end = text.find("'", end + 2)
        body = text[1:] if end == -1 else text[1:end]
        return body.replace("''", "'").rstrip()
    tok = text.split("/", 1)[0].strip()
    if tok == "T":
        return True
    if tok == "F":
        return False
    if not tok:
        return None
    try:
        return int(tok)
    except ValueError:
        pass
    try:
        return float(tok.replace("D", "E").replace("d", "e"))
    except ValueError:
        return tok


class RawHeader(dict):
    """``{KEY: value}`` whose values are parsed from the raw card text on first access."""

    __slots__ = ()

    def __getitem__(self, key):
        v = dict.__getitem__(self, key)
        if type(v) is _Raw:
            v = _card_value(v.text)
            dict.__setitem__(self, key, v)
        return v

    def get(self, key, default=None):
        v = dict.get(self, key, default)
        if type(v) is _Raw:
            v = _card_value(v.text)
            dict.__setitem__(self, key, v)
        return v

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def parse_header_bytes(buf):
    """Parse raw FITS header cards (bytes, 80 characters per card) up to END.

    A small, fast reader for the keywords galguard needs: ``KEY = value / comment`` cards
    (strings, logicals, integers, floats) and HIERARCH cards, values parsed lazily on first
    access; CONTINUE and commentary cards are skipped. Returns ``(RawHeader, found_end)``.
    """
    out = RawHeader()
    text = buf.decode("ascii", "replace")
    for i in range(0, len(text) - 79, 80):
        key = text[i:i + 8].rstrip()
        if key == "END":
            return out, True
        if key == "HIERARCH":  # HIERARCH MP_DETECTED = 5 (Rubin's mask-plane cards)
            name, eq, value = text[i + 9:i + 80].partition("=")
            if eq and name.strip():
                dict.__setitem__(out, name.strip().upper(), _Raw(value))
            continue
        if text[i + 8:i + 10] != "= ":
            continue
        key = key.upper()
        if key in _SKIP:
            continue
        dict.__setitem__(out, key, _Raw(text[i + 10:i + 80]))
    return out, False


class HeaderView:
    """Keyword look-up in an extension header with a fall-back on the primary header."""

    def __init__(self, header=None, primary=None):
        self.h = header_dict(header) if not isinstance(header, dict) else header
        self.p = header_dict(primary) if not isinstance(primary, dict) else primary

    def get(self, key, default=None):
        v = self.h.get(key)
        if v is None or v == "":
            v = self.p.get(key) if self.p else None
            if v is None or v == "":
                return default
        return v

    def __contains__(self, key):
        return self.get(key) is not None


def _float(v):
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _bands_keyword(hv, n):
    """Band names from BANDS ("g,r,i") or from 0-based BAND0..BAND{n-1} (Legacy Survey
    cutouts)."""
    b = hv.get("BANDS")
    if isinstance(b, str):
        names = [s.strip() for s in b.replace(";", ",").split(",") if s.strip()]
        if len(names) == n:
            return names
    if n > 1:
        names = [hv.get(f"BAND{k}") for k in range(n)]
        if all(isinstance(v, str) and v.strip() for v in names) and hv.get(f"BAND{n}") is None:
            return [v.strip() for v in names]
    return None


def has_band_info(hv, n):
    """True when the header describes ``n`` planes as bands: BANDS with n names, FILTERn keys
    for every plane, or any per-plane keyword for a plane > 1."""
    if n < 1:
        return False
    if _bands_keyword(hv, n):
        return True
    if all(hv.get(f"FILTER{k}") is not None for k in range(1, n + 1)) and n > 1:
        return True
    if n > 1:
        for tmpl in PLANE_KEYS.values():
            if hv.get(tmpl.format(n=2)) is not None:
                return True
    return False


def names_single_band(hv):
    """True when the header names exactly one band (a scalar FILTER/BAND and no FILTER2/BANDS)."""
    if hv.get("FILTER2") is not None:
        return False
    b = hv.get("BANDS")
    if isinstance(b, str) and "," in b:
        return False
    return any(hv.get(k) is not None for k in SCALAR_KEYS["band"])


_KEYS_CACHE = {}


def _plane_keys(nplanes):
    keys = _KEYS_CACHE.get(nplanes)
    if keys is None:
        keys = {name: [tmpl.format(n=n) for n in range(1, nplanes + 1)]
                for name, tmpl in PLANE_KEYS.items()}
        if nplanes <= 64:
            _KEYS_CACHE[nplanes] = keys
    return keys


def plane_info(hv, nplanes):
    """Per-plane values from a header.

    Returns
    -------
    dict
        ``bands`` list of str ("" unknown), float arrays (nplanes,) ``gain``, ``sky``,
        ``zeropoint``, ``exptime``, ``seeing``, ``saturation`` (NaN where missing), ``bunit`` str,
        ``id`` int (-1 unknown), ``true_label`` int (-1 unknown).
    """
    out = {}
    get = hv.get
    keys = _plane_keys(nplanes)
    for name in PLANE_KEYS:
        vals = [get(k) for k in keys[name]]
        if None in vals:
            if name == "band":
                bnames = _bands_keyword(hv, nplanes)
                if bnames:
                    vals = [v if v is not None else bnames[k] for k, v in enumerate(vals)]
            scal = None
            for k in SCALAR_KEYS[name]:
                scal = get(k)
                if scal is not None:
                    break
            vals = [scal if v is None else v for v in vals]
        if name == "band":
            out["bands"] = ["" if v is None else str(v).strip() for v in vals]
        else:
            out[name] = np.array([_float(v) for v in vals], dtype=np.float64)
    # HST-style photometric keywords give an AB zero point when no MAGZP-like keyword exists
    zp = out["zeropoint"]
    if np.isnan(zp).any():
        flam, plam = _float(hv.get("PHOTFLAM")), _float(hv.get("PHOTPLAM"))
        if flam > 0 and plam > 0:
            zp[np.isnan(zp)] = -2.5 * math.log10(flam) - 5.0 * math.log10(plam) - 2.408
    bunit = hv.get("BUNIT")
    out["bunit"] = "" if bunit is None else str(bunit).strip()
    out["id"] = _int(hv.get("OBJID"))
    out["true_label"] = _int(hv.get("TRUELAB"))
    return out


_INT64 = (-(2**63), 2**63 - 1)


def _int(v):
    """An integer header value (OBJID, TRUELAB) or -1 (unknown). A value outside int64 (an id
    of another survey's scheme) is unknown too, with a warning: the row keeps its pixels and
    takes its position as id."""
    if v is None or isinstance(v, bool):
        return -1
    if isinstance(v, (int, np.integer)):
        out = int(v)
    else:
        f = _float(v)
        if not math.isfinite(f) or f != int(f):
            return -1
        out = int(f)
    if not _INT64[0] <= out <= _INT64[1]:
        log.warning("header integer %r is outside int64; the row's id is its position", v)
        return -1
    return out

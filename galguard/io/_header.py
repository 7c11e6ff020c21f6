"""Header conventions: which keywords galguard reads, per plane and as scalars.

See ``docs/contracts.md`` ("FITS written by galguard.sim"). For plane n = 1..C the per-plane
keyword wins; the scalar keywords (first one found, in the order listed) apply to every plane
where the per-plane one is missing. Extension headers fall back on the primary header.
"""

import math

import numpy as np

__all__ = ["PLANE_KEYS", "SCALAR_KEYS", "header_dict", "parse_header_bytes", "HeaderView",
           "plane_info", "has_band_info", "names_single_band"]

#: per-plane keyword templates ({n} = 1-based plane number)
PLANE_KEYS = {
    "band": "FILTER{n}",
    "gain": "GAIN{n}",
    "sky": "SKYLEV{n}",
    "zeropoint": "MAGZP{n}",
    "exptime": "EXPTIM{n}",
    "seeing": "SEEING{n}",
}

#: scalar keywords and their aliases, first found wins
SCALAR_KEYS = {
    "band": ("FILTER", "BAND", "FILTNAM1"),
    "gain": ("GAIN", "EGAIN"),
    "sky": ("SKYLEVEL", "SKYLEV", "SKY", "BACKGND", "BACKGRND", "MDRIZSKY"),
    "zeropoint": ("MAGZP", "MAGZPT", "MAGZERO", "ZEROPT", "PHOTZP", "ZP"),
    "exptime": ("EXPTIME", "EXPOSURE", "TEXPTIME"),
    "seeing": ("SEEING", "PSF_FWHM"),
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
        out, i = [], 1
        while i < len(text):
            ch = text[i]
            if ch == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(ch)
            i += 1
        return "".join(out).rstrip()
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


def parse_header_bytes(buf):
    """Parse raw FITS header cards (bytes, 80 characters per card) up to END into a dict.

    A small, fast reader for the keywords galguard needs: ``KEY = value / comment`` cards
    (strings, logicals, integers, floats); HIERARCH, CONTINUE and commentary cards are skipped.
    Returns ``(dict, found_end)``.
    """
    out = {}
    for i in range(0, len(buf) - 79, 80):
        card = buf[i:i + 80]
        key = card[:8].rstrip()
        if key == b"END":
            return out, True
        if card[8:10] != b"= ":
            continue
        k = key.decode("ascii", "replace").upper()
        if k in _SKIP:
            continue
        out[k] = _card_value(card[10:].decode("ascii", "replace"))
    return out, False


class HeaderView:
    """Keyword look-up in an extension header with a fall-back on the primary header."""

    def __init__(self, header=None, primary=None):
        self.h = header_dict(header) if not isinstance(header, dict) else header
        self.p = header_dict(primary) if not isinstance(primary, dict) else primary

    def get(self, key, default=None):
        v = self.h.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            v = self.p.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
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
    b = hv.get("BANDS")
    if isinstance(b, str):
        names = [s.strip() for s in b.replace(";", ",").split(",") if s.strip()]
        if len(names) == n:
            return names
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


def plane_info(hv, nplanes):
    """Per-plane values from a header.

    Returns
    -------
    dict
        ``bands`` list of str ("" unknown), float arrays (nplanes,) ``gain``, ``sky``,
        ``zeropoint``, ``exptime``, ``seeing`` (NaN where missing), ``bunit`` str,
        ``id`` int (-1 unknown), ``true_label`` int (-1 unknown).
    """
    out = {}
    bnames = _bands_keyword(hv, nplanes)
    for name, tmpl in PLANE_KEYS.items():
        scal = None
        for k in SCALAR_KEYS[name]:
            v = hv.get(k)
            if v is not None:
                scal = v
                break
        vals = []
        for n in range(1, nplanes + 1):
            v = hv.get(tmpl.format(n=n))
            if v is None and name == "band" and bnames:
                v = bnames[n - 1]
            if v is None:
                v = scal
            vals.append(v)
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


def _int(v):
    if v is None or isinstance(v, bool):
        return -1
    if isinstance(v, (int, np.integer)):
        return int(v)
    f = _float(v)
    return int(f) if not math.isnan(f) and f == int(f) else -1

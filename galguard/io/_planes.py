"""The planes of one cutout in a multi-extension FITS file: image, variance (or inverse
variance) and mask, recognised by EXTNAME, paired per band, and read row by row with the image.

=============  ==========================================================================
role           EXTNAME (case-insensitive)
=============  ==========================================================================
image          ``IMAGE``, ``SCI``, ``DATA`` (or, where none is so named, the image HDUs that
               are not one of the planes below)
variance       ``VARIANCE``, ``VAR``
inverse var.   ``IVAR``, ``INVVAR``, ``WEIGHT``, ``WHT`` (converted: var = 1 / ivar; ivar <= 0
               means no data: the pixel is masked)
mask           ``MASK``, ``BITMASK``, ``DQ``, ``FLAGS`` (integer bit planes)
=============  ==========================================================================

With several image HDUs (one band per extension) a plane is paired with the image of the same
FILTER/BAND keyword in its own header, or, where the planes carry no band, by order (the k-th
variance with the k-th image).
"""

import numpy as np

from ..errors import GalguardValueError

__all__ = ["ROLES", "plane_groups", "read_planes", "mask_bitmask", "validate_mask_bits"]

ROLES = {"IMAGE": "image", "SCI": "image", "DATA": "image",
         "VARIANCE": "variance", "VAR": "variance",
         "IVAR": "ivar", "INVVAR": "ivar", "WEIGHT": "ivar", "WHT": "ivar",
         "MASK": "mask", "BITMASK": "mask", "DQ": "mask", "FLAGS": "mask"}
_AUX = ("variance", "ivar", "mask")


class PlaneGroup:
    """One image HDU and the HDUs of its planes (``HDUInfo`` or None)."""

    __slots__ = ("image", "variance", "ivar", "mask")

    def __init__(self, image):
        self.image, self.variance, self.ivar, self.mask = image, None, None, None

    @property
    def has_planes(self):
        return any(getattr(self, r) is not None for r in _AUX)

    def describe(self):
        parts = [f"image HDU {self.image.idx}"]
        parts += [f"{r} HDU {getattr(self, r).idx}" for r in _AUX if getattr(self, r) is not None]
        return ", ".join(parts)


def _band(acc, info):
    h = acc.header(info.idx) if info.idx else {}
    for k in ("FILTER", "BAND"):
        v = h.get(k)
        if v not in (None, ""):
            return str(v).strip()
    return ""


def plane_groups(acc, imgs):
    """Group image HDUs into cutouts with their planes.

    Parameters
    ----------
    acc : FitsioAccess or AstropyAccess
    imgs : list of HDUInfo
        The image HDUs that hold data.

    Returns
    -------
    (groups, problem)
        ``groups`` is None when the file has no plane HDU (no EXTNAME of the table above), else
        one `PlaneGroup` per image HDU; ``problem`` a message ("" when the planes pair up).
    """
    aux = [x for x in imgs if ROLES.get(x.extname) in _AUX]
    if not aux:
        return None, ""
    images = [x for x in imgs if ROLES.get(x.extname) == "image"]
    if not images:
        images = [x for x in imgs if x not in aux]
    if not images:
        return [], "the file has variance or mask planes but no image HDU"
    groups = [PlaneGroup(x) for x in images]
    bands = [_band(acc, x) for x in images]
    for role in _AUX:
        planes = [x for x in aux if ROLES[x.extname] == role]
        if not planes:
            continue
        if len(groups) == 1:
            if len(planes) > 1:
                return groups, (f"{len(planes)} {role} HDUs ({', '.join(str(x.idx) for x in planes)})"
                                f" for one image HDU")
            groups[0].__setattr__(role, planes[0])
            continue
        pb = [_band(acc, x) for x in planes]
        if all(pb) and all(bands):
            for x, b in zip(planes, pb):
                if b not in bands:
                    return groups, (f"{role} HDU {x.idx} has band {b!r}, no image HDU has it "
                                    f"(image bands {bands})")
                setattr(groups[bands.index(b)], role, x)
        elif len(planes) == len(groups):
            for g, x in zip(groups, planes):
                setattr(g, role, x)
        else:
            return groups, (f"{len(planes)} {role} HDUs for {len(groups)} image HDUs, and their "
                            f"FILTER/BAND keywords do not pair them")
    for g in groups:
        for role in _AUX:
            x = getattr(g, role)
            if x is not None and x.shape != g.image.shape:
                return groups, (f"{role} HDU {x.idx} has shape {x.shape}, its image HDU "
                                f"{g.image.idx} {g.image.shape}")
    return groups, ""


def validate_mask_bits(mask_bits):
    """``None`` (every set bit is bad), or a tuple of bit numbers (int 0..62) and names (str,
    upper-cased, without a leading ``MP_``)."""
    if mask_bits is None:
        return None
    if isinstance(mask_bits, str):
        mask_bits = [s for s in mask_bits.replace(";", ",").split(",") if s.strip()]
    elif isinstance(mask_bits, (int, np.integer)) and not isinstance(mask_bits, bool):
        mask_bits = [mask_bits]
    try:
        vals = list(mask_bits)
    except TypeError:
        raise GalguardValueError(f"mask_bits must be bit numbers or names such as 'SAT,CR', got "
                                 f"{mask_bits!r}") from None
    if not vals:
        raise GalguardValueError("mask_bits must name at least one bit, got an empty sequence")
    out = []
    for v in vals:
        if isinstance(v, str) and v.strip():
            s = v.strip().upper()
            if s.isdigit():
                v = int(s)
            else:
                out.append(s[3:] if s.startswith("MP_") else s)
                continue
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 62:
            out.append(int(v))
        else:
            raise GalguardValueError(f"mask_bits must hold bit numbers 0..62 or bit names, got "
                                     f"{v!r} in {mask_bits!r}")
    return tuple(out)


def mask_bitmask(mask_bits, header):
    """The integer bitmask of ``mask_bits`` for a mask plane with this header.

    Names are looked up in the header's ``MP_<NAME>`` cards (the bit number, as Rubin's and
    HSC's mask planes record them). Returns ``(bitmask, problem)``; ``bitmask`` -1 means every
    bit.
    """
    if mask_bits is None:
        return -1, ""
    value = 0
    for b in mask_bits:
        if isinstance(b, str):
            bit = header.get(f"MP_{b}")
            if not isinstance(bit, (int, np.integer)) or isinstance(bit, bool) or not 0 <= bit <= 62:
                names = sorted(k[3:] for k in header if str(k).startswith("MP_"))
                return 0, (f"mask_bits={list(mask_bits)!r}: the mask plane has no MP_{b} card "
                           f"(its bit names: {names or 'none'}); give bit numbers instead")
            b = int(bit)
        value |= 1 << b
    return value, ""


def _mask_plane(raw, bitmask):
    a = np.asarray(raw)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        ints = np.where(bad, 0, a).astype(np.int64)
        return ((ints & bitmask) != 0) | bad
    if a.dtype.kind == "b":
        return a.copy()
    return (a.astype(np.int64) & bitmask) != 0


def read_planes(acc, group, start, stop, mask_bits):
    """The variance (float64, or None) and mask (bool, or None) of rows ``start:stop`` (None:
    everything) of one group. Returns ``(variance, mask, problem)``."""
    variance = mask = None
    if group.variance is not None:
        variance = np.asarray(acc.read_image(group.variance.idx, start, stop), np.float64)
    elif group.ivar is not None:
        ivar = np.asarray(acc.read_image(group.ivar.idx, start, stop), np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = np.where(ivar > 0, 1.0 / ivar, np.inf)
        variance[~np.isfinite(ivar)] = np.nan
    if group.mask is not None:
        bitmask, problem = mask_bitmask(mask_bits, acc.header(group.mask.idx))
        if problem:
            return None, None, problem
        mask = _mask_plane(acc.read_image(group.mask.idx, start, stop), bitmask)
    return variance, mask, ""

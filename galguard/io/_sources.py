"""Expanding a source (path, directory, glob, list, HDU, array) into units, lazily.
"""

import glob
import os
import numpy as np
from ..errors import GalguardValueError
from ._cutouts import Cutouts
from ._fits import AstropyAccess

from ._blocks import bad
from ._fits_blocks import access_blocks, path_blocks
from ._memory import array_blocks, cutouts_blocks, nddata_blocks
from ._options import FITS_SUFFIXES


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


def expand_string(s, opts, name="source"):
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


def units(source, opts):
    """Yield ('path', str) or ('obj', object, label) units in input order."""
    from astropy.io import fits
    from astropy.nddata import NDData

    if isinstance(source, (str, os.PathLike)):
        for p in expand_string(os.fspath(source), opts):
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
                for p in expand_string(s, opts, name=f"source[{i}]"):
                    yield ("path", p)
            else:
                yield ("path", s)
        else:
            yield ("obj", item, i)


def unit_blocks(unit, opts):
    from astropy.io import fits
    from astropy.nddata import NDData

    if unit[0] == "path":
        yield from path_blocks(unit[1], opts)
        return
    obj, pos = unit[1], unit[2]
    suffix = "" if pos is None else f" {pos}"
    try:
        if isinstance(obj, Cutouts):
            yield from cutouts_blocks(obj, f"<Cutouts{suffix}>", opts)
        elif isinstance(obj, fits.HDUList):
            fn = obj.filename() if hasattr(obj, "filename") else None
            yield from access_blocks(AstropyAccess(obj), fn or f"<HDUList{suffix}>", opts)
        elif isinstance(obj, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            yield from access_blocks(AstropyAccess([obj]), f"<{type(obj).__name__}{suffix}>", opts)
        elif isinstance(obj, NDData):
            yield from nddata_blocks(obj, f"<{type(obj).__name__}{suffix}>", opts)
        elif isinstance(obj, np.ndarray):
            meta = opts.meta if pos is None else None
            yield from array_blocks(obj, f"<ndarray{suffix}>", opts, meta=meta)
        elif isinstance(obj, (list, tuple)) and obj and all(np.isscalar(v) for v in np.ravel(obj)[:1]):
            yield from array_blocks(np.asarray(obj), f"<array{suffix}>", opts)
        else:
            yield bad(f"<item{suffix}>", f"unsupported source type {type(obj).__name__}")
    except Exception as e:
        yield bad(f"<{type(obj).__name__}{suffix}>", f"{type(e).__name__}: {e}")

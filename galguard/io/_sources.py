"""Expanding a source (path, directory, glob, list, HDU, array) into units, lazily.
"""

import os
import sys

import numpy as np

from ._blocks import bad
from ._cutouts import Cutouts
from ._fits import AstropyAccess
from ._fits_blocks import access_blocks, path_blocks
from ._memory import array_blocks, cutouts_blocks, nddata_blocks
from ._paths import expand_item


# ----------------------------------------------------------------------------------------------
# expanding a source into units, lazily
# ----------------------------------------------------------------------------------------------
def as_array(obj):
    """A torch tensor (CPU or CUDA) as a numpy array, read like one; anything else as it is."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    return obj


def units(source, opts):
    """Yield ('path', str) or ('obj', object, label) units in input order."""
    from astropy.io import fits
    from astropy.nddata import NDData

    source = as_array(source)
    if isinstance(source, (str, os.PathLike)):
        for p in expand_item(os.fspath(source), recursive=opts.recursive, name="source"):
            yield ("path", p)
        return
    if isinstance(source, (np.ndarray, Cutouts, fits.HDUList, NDData,
                           fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        yield ("obj", source, None)
        return
    for i, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            for p in expand_item(os.fspath(item), recursive=opts.recursive,
                                 name=f"source[{i}]"):
                yield ("path", p)
        else:
            yield ("obj", as_array(item), i)


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

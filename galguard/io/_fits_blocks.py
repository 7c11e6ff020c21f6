"""From an opened FITS file or HDU list to blocks.
"""

import logging
import os
import stat

import numpy as np

from ._blocks import Block, bad, numeric_f32
from ._fits import AstropyAccess, FitsioAccess
from ._header import HeaderView, has_band_info, header_dict, names_single_band, plane_info
from ._options import MAX_CUBE_BANDS, PLANE_FIELDS, ROW_COLUMNS
from ._planes import plane_groups, read_planes

log = logging.getLogger(__name__)


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


def access_blocks(acc, label, opts):
    infos = acc.infos
    if not infos:
        yield bad(label, "no HDU in the file")
        return
    primary = acc.header(0)
    catalog = next((x for x in infos if x.kind == "table" and x.extname == "CATALOG"), None)
    imgs = [x for x in infos if x.kind == "image" and x.shape]
    groups, problem = plane_groups(acc, imgs)
    if problem:
        yield bad(label, f"cannot pair the image, variance and mask planes: {problem} "
                         f"(HDUs: {_hdu_names(acc)})")
        return
    if opts.hdu is None:
        if groups is not None:
            yield from _group_blocks(acc, groups, primary, catalog, label, opts)
            return
        if infos[0].kind == "image" and infos[0].shape:
            yield from _image_blocks(acc, infos[0], primary, catalog, label, opts)
            return
        if not imgs:
            yield bad(label, f"no image data (non-numeric or empty HDUs: {_hdu_names(acc)})")
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
            yield bad(label, f"hdu={k!r} is not in the file (HDUs: {_hdu_names(acc)})")
            return
        if x.kind != "image" or not x.shape:
            yield bad(label, f"hdu={k!r} holds no image data (non-numeric or empty; HDUs: "
                              f"{_hdu_names(acc)})", hdu=str(x.idx))
            return
        sel.append(x)
    by_image = {g.image.idx: g for g in groups or ()}
    chosen = [by_image.get(x.idx) for x in sel]
    if isinstance(opts.hdu, list):
        yield from _band_ext_blocks(acc, sel, primary, label, opts, chosen)
    else:
        yield from _image_blocks(acc, sel[0], primary, catalog, label, opts, chosen[0])


def _group_blocks(acc, groups, primary, catalog, label, opts):
    """A file with variance or mask planes: one cutout (or stack) per image HDU, or one band
    per image extension when all images are 2-D of one shape."""
    images = [g.image for g in groups]
    if len(groups) == 1:
        yield from _image_blocks(acc, images[0], primary, catalog, label, opts, groups[0])
    elif all(len(x.shape) == 2 and x.shape == images[0].shape for x in images):
        yield from _band_ext_blocks(acc, images, primary, label, opts, groups)
    else:
        for g in groups:
            yield from _image_blocks(acc, g.image, primary, None, label, opts, g)


def dim_problem(shape):
    if any(s == 0 for s in shape) or not shape:
        return f"zero-size data of shape {shape}"
    if len(shape) not in (2, 3, 4):
        return (f"wrong dimension: {len(shape)}-D data of shape {shape}; expected (H, W), "
                f"(C, H, W), (N, H, W) or (N, C, H, W)")
    return None


def layout3(n3, hv, opts, nrows_meta):
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


def _planes_of(acc, group, start, stop, opts, label, hdustr):
    """(variance, mask, bad block or None) of rows start:stop of a plane group."""
    if group is None or not group.has_planes:
        return None, None, None
    variance, mask, problem = read_planes(acc, group, start, stop, opts.mask_bits)
    if problem:
        return None, None, bad(label, problem, hdu=hdustr)
    return variance, mask, None


def _image_blocks(acc, info, primary, catalog, label, opts, group=None):
    hdustr = str(info.idx)
    shape = info.shape
    prob = dim_problem(shape)
    if prob:
        yield bad(label, prob, hdu=hdustr)
        return
    hv = HeaderView(acc.header(info.idx) if info.idx else primary, primary if info.idx else None)
    nd = len(shape)
    ncat = catalog.nrows if catalog is not None else -1
    if nd == 2 or (nd == 3 and layout3(shape[0], hv, opts, ncat) == "cube"):
        raw = acc.read_image(info.idx)
        data, owned = numeric_f32(raw, acc.fresh)
        data = data.reshape((1, 1) + shape) if nd == 2 else data[None]
        variance, mask, fail = _planes_of(acc, group, None, None, opts, label, hdustr)
        if fail is not None:
            yield fail
            return
        c = data.shape[1]
        pi = plane_info(hv, c)
        yield Block(1, source=label, hdu=hdustr, data=data, owned=owned, bands=pi["bands"],
                    info=pi, mask=None if mask is None else mask.reshape(data.shape),
                    variance=None if variance is None else variance.reshape(data.shape))
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
        data, owned = numeric_f32(raw, acc.fresh)
        data = data.reshape((i1 - i0, c) + shape[-2:])
        variance, mask, fail = _planes_of(acc, group, i0, i1, opts, label, hdustr)
        if fail is not None:
            yield fail
            return
        b = Block(i1 - i0, source=label, hdu=hdustr, rows=np.arange(i0, i1), data=data,
                   owned=owned, bands=pi["bands"], info=pi,
                   mask=None if mask is None else mask.reshape(data.shape),
                   variance=None if variance is None else variance.reshape(data.shape))
        if use_cat:
            cols = acc.read_table(catalog.idx, i0, i1)
            b.apply_rows({ROW_COLUMNS[k]: v for k, v in cols.items() if k in ROW_COLUMNS})
        yield b


_GENERIC_EXTNAMES = {"", "PRIMARY", "SCI", "IMAGE", "COMPRESSED_IMAGE", "DATA"}


def _band_ext_blocks(acc, sel, primary, label, opts, groups=None):
    hdustr = ",".join(str(x.idx) for x in sel)
    groups = list(groups) if groups is not None else [None] * len(sel)
    shape0 = sel[0].shape
    for x in sel:
        if len(x.shape) != 2 or x.shape != shape0:
            yield bad(label, f"one band per extension needs 2-D planes of one shape; HDU {x.idx} "
                              f"has shape {x.shape}, HDU {sel[0].idx} {shape0}", hdu=hdustr)
            return
    planes, bands, infos, variances, masks = [], [], [], [], []
    # the primary header's per-plane keywords (GAINk, FILTERk, BANDS) describe the k-th band
    # extension; scalar ones every band; the extension's own keywords win
    prim = plane_info(HeaderView(primary), len(sel))
    prim_names = prim["bands"] if len(set(prim["bands"])) == len(sel) else [""] * len(sel)
    for k, (x, g) in enumerate(zip(sel, groups)):
        own = header_dict(acc.header(x.idx)) if x.idx else primary
        pi = plane_info(HeaderView(own), 1)
        for f in PLANE_FIELDS:
            if np.isnan(pi[f][0]):
                pi[f][0] = prim[f][k]
        pi["bunit"] = pi["bunit"] or prim["bunit"]
        name = next((str(own[key]).strip() for key in ("FILTER", "BAND") if own.get(key)), "")
        if not name and x.extname not in _GENERIC_EXTNAMES:
            name = x.extname
        bands.append(name or prim_names[k])
        infos.append(pi)
        planes.append(numeric_f32(acc.read_image(x.idx))[0])
        variance, mask, fail = _planes_of(acc, g, None, None, opts, label, hdustr)
        if fail is not None:
            yield fail
            return
        variances.append(variance)
        masks.append(mask)
    data = np.stack(planes)[None]
    variance = mask = None
    if any(v is not None for v in variances):
        variance = np.stack([np.full(shape0, np.nan) if v is None else v for v in variances])[None]
    if any(m is not None for m in masks):
        mask = np.stack([np.zeros(shape0, bool) if m is None else m for m in masks])[None]
    info = {f: np.array([pi[f][0] for pi in infos]) for f in PLANE_FIELDS}
    info["bunit"] = infos[0]["bunit"]
    info["id"] = plane_info(HeaderView(primary), 1)["id"]
    info["true_label"] = plane_info(HeaderView(primary), 1)["true_label"]
    yield Block(1, source=label, hdu=hdustr, data=data, owned=True, bands=bands, info=info,
                variance=variance, mask=mask)


def _one_line(e, limit=300):
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


#: A gzip-compressed input may expand to at most this many times its size (and never past
#: `MAX_GUNZIP_BYTES`): FITS images compress by a few times at most, a decompression bomb by
#: thousands.
MAX_GUNZIP_RATIO = 200
MAX_GUNZIP_BYTES = 8 << 30


def gzip_problem(path, size):
    """Why a ``.gz`` file must not be read ("" when its stream is whole): the whole stream is
    decompressed once, so a wrong CRC or length, a truncated or corrupted stream, or an
    expansion past the bound is found before any pixel is used."""
    import gzip
    import zlib

    limit = min(MAX_GUNZIP_BYTES, max(64 << 20, MAX_GUNZIP_RATIO * size))
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 22)
                if not block:
                    return ""
                total += len(block)
                if total > limit:
                    return (f"gzip stream expands past {limit} bytes ({MAX_GUNZIP_RATIO} x its "
                            f"size): refused as a decompression bomb")
    except (OSError, EOFError, zlib.error) as exc:
        return f"corrupt gzip stream ({type(exc).__name__}: {_one_line(exc)})"


def path_blocks(path, opts):
    label = path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield bad(label, "file not found")
        return
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        yield bad(label, f"unreadable: {e}")
        return
    if stat.S_ISDIR(st.st_mode):
        yield bad(label, "is a directory (inside a list of sources)")
        return
    if st.st_size == 0:
        yield bad(label, "empty file (0 bytes), not FITS")
        return
    if not stat.S_ISREG(st.st_mode):
        yield bad(label, "not a regular file (a FIFO, socket or device)")
        return
    if path.lower().endswith(".gz"):
        problem = gzip_problem(path, st.st_size)
        if problem:
            yield bad(label, problem)
            return
    first_err = None
    if opts.backend in ("auto", "fitsio"):
        acc = None
        produced = 0
        try:
            acc = FitsioAccess(path, st.st_size)
            for b in access_blocks(acc, label, opts):
                produced += b.n
                yield b
            return
        except Exception as e:  # any fitsio problem: fall back on astropy (or report)
            first_err = f"fitsio: {type(e).__name__}: {_one_line(e)}"
            if produced:
                yield bad(label, f"read failed after {produced} cutouts: {first_err}")
                return
        finally:
            if acc is not None:
                acc.close()
        if opts.backend == "fitsio":
            yield bad(label, f"unreadable or not FITS ({first_err})")
            return
        log.debug("%s: fitsio failed (%s); trying astropy", label, first_err)
    acc = None
    produced = 0
    try:
        acc = AstropyAccess(None, path=path)
        for b in access_blocks(acc, label, opts):
            produced += b.n
            yield b
    except Exception as e:
        msg = f"astropy: {type(e).__name__}: {_one_line(e)}"
        if first_err:
            msg = f"{first_err}; {msg}"
        if produced:
            yield bad(label, f"read failed after {produced} cutouts: {msg}")
        else:
            yield bad(label, f"unreadable, truncated or not FITS ({msg})")
    finally:
        if acc is not None:
            try:
                acc.close()
            except Exception:  # closing a broken file must not lose the row
                pass

"""Finishing blocks (bands, size, non-finite pixels, sky and gain) and putting them into chunks.
"""

import logging

import numpy as np

from ..flags import Flag
from ._blocks import Block
from ._cutouts import Cutouts, empty_meta
from ._estimate import RAW_SKY_NSIGMA, border_background, default_border, variance_gain
from ._options import PLANE_FIELDS
from ._sources import unit_blocks, units

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# finishing blocks: bands, size, non-finite pixels, sky and gain; then chunks
# ----------------------------------------------------------------------------------------------
class State:
    def __init__(self, opts):
        self.bands = None if opts.bands is None or any(isinstance(b, int) for b in opts.bands) \
            else tuple(opts.bands)
        self.c = None if opts.bands is None else len(opts.bands)
        self.size = opts.size
        self.index = 0
        self.known = False


def _make_bad(b, msg):
    out = Block(b.n, source=b.source, hdu=b.hdu, rows=b.rows, error=f"{b.source}"
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
    for f in PLANE_FIELDS:
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


def finish_block(b, opts, state):
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
    if b.mask is not None and b.mask.any():
        anybad = True
    if b.variance is not None:
        mask, vbad = _check_variance(b, mask)
        anybad = anybad or vbad
    if (h, w) != state.size:
        data, mask = _resize(data, mask, *state.size)
        if b.variance is not None:
            b.variance, _ = _resize(b.variance, np.zeros(b.variance.shape, bool), *state.size, fill=np.nan)
        b.flags |= int(Flag.RESIZED)
    b.data, b.mask, b.owned = data, mask, True
    if anybad:
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


def _check_variance(b, mask):
    """Rows whose variance is all NaN have none (unknown); elsewhere unmasked pixels with a
    non-finite or non-positive variance are masked and the row flagged VARIANCE_INVALID.
    Returns (mask, any pixel masked)."""
    v = b.variance
    known = ~np.isnan(v).reshape(b.n, -1).all(axis=1)
    invalid = ~(np.isfinite(v) & (v > 0)) & ~mask & known[:, None, None, None]
    if not invalid.any():
        return mask, False
    b.flags[invalid.reshape(b.n, -1).any(axis=1)] |= int(Flag.VARIANCE_INVALID)
    return mask | invalid, True


def _variance_measure(b, idx, sky, unknown_sky):
    """Gain and sky of the planes of rows ``idx`` from the variance plane (NaN where it gives
    none; the sky only where ``unknown_sky``)."""
    nan = np.full(unknown_sky.shape, np.nan)
    if b.variance is None:
        return nan, nan.copy()
    known = np.where(unknown_sky, np.nan, sky)
    return variance_gain(b.data[idx], b.variance[idx], mask=b.mask[idx], sky=known)


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
    g_raw = np.full(ns.shape, np.nan)
    if raw.any():
        ri, ci = np.nonzero(raw)
        b.data[idx[ri], ci] -= level[ri, ci].astype(np.float32)[:, None, None]
        b.data[idx[ri], ci] *= ~b.mask[idx[ri], ci]  # keep masked pixels at 0
        b.sky_removed[idx[ri], ci] = True
        sky[raw] = level[raw]
        g_raw = np.where(valid & raw, level / np.where(valid, var, 1.0), np.nan)
    resid = np.where(raw, 0.0, level)
    # 2. a variance plane measures the gain (and an unknown sky): var = (f + s) / g
    vg, vs = _variance_measure(b, idx, sky, ns & ~raw)
    got_g = ng & np.isfinite(vg) & (vg > 0)
    got_s = ns & ~raw & np.isfinite(vs) & got_g
    gain[got_g] = vg[got_g]
    sky[got_s] = vs[got_s]
    # 3. raw images: the border's Poisson relation level = var * gain
    take = ng & ~got_g & np.isfinite(g_raw) & (g_raw > 0)
    gain[take] = g_raw[take]
    # 4. gain where the sky is known: var = (level + sky) / gain
    g_known = (resid + sky) / np.where(valid, var, np.nan)
    take = ng & np.isnan(gain) & (~ns | got_s) & np.isfinite(g_known) & (g_known > 0)
    gain[take] = g_known[take]
    # 5. no way to estimate: the default gain
    dflt = ng & ~(np.isfinite(gain) & (gain > 0))
    gain[dflt] = opts.default_gain
    # 6. sky-subtracted data with no sky value: the Poisson variance gives it, sky = g var - level
    s_est = gain * var - resid
    take = ns & ~raw & ~got_s & np.isfinite(s_est)
    sky[take] = np.maximum(s_est[take], 0.0)
    b.sky[idx], b.gain[idx] = sky, gain
    fl = b.flags[idx]
    fl[(ns & ~got_s).any(axis=1)] |= int(Flag.SKY_ESTIMATED)
    fl[(ng & ~got_g).any(axis=1)] |= int(Flag.GAIN_ESTIMATED)
    fl[(np.isnan(sky) | np.isnan(gain)).any(axis=1)] |= int(Flag.HEADER_INCOMPLETE)
    b.flags[idx] = fl


def materialise(blocks, state):
    """Build a Cutouts from finished blocks (bad blocks get zero data and an all-True mask)."""
    n = sum(b.n for b in blocks)
    c = state.c or 0
    h, w = state.size or (0, 0)
    bands = state.bands if state.bands is not None else ("",) * c
    single = len(blocks) == 1 and blocks[0].data is not None
    data = np.zeros((0 if single else n, c, h, w), dtype=np.float32)
    mask = np.ones((0 if single else n, c, h, w), dtype=bool)
    variance = None
    if any(b.data is not None and b.variance is not None for b in blocks):
        variance = np.full((n, c, h, w), np.nan, dtype=np.float32)
    meta = empty_meta(n, c)
    cols = {k: [] for k in ("source", "hdu", "row", "bands", "bunit", "flags", "error", "id",
                            "true_label")}
    planes = {k: np.full((n, c), np.nan) for k in PLANE_FIELDS}
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
            if variance is not None and b.variance is not None:
                variance[i:j] = b.variance
            for k in PLANE_FIELDS:
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
    meta["id_given"] = ids >= 0
    meta["id"] = np.where(ids >= 0, ids, index)
    for k in PLANE_FIELDS:
        meta[k] = planes[k]
    meta["sky_removed"] = skyrem
    return Cutouts(data, mask, meta, bands=bands, variance=variance)


def generate(source, opts):
    state = State(opts)
    pending, count = [], 0
    emitted = False
    for unit in units(source, opts):
        for blk in unit_blocks(unit, opts):
            try:
                blk = finish_block(blk, opts, state)
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
                yield materialise(take, state)
    if pending or not emitted:
        yield materialise(pending, state)

"""Batched differential evolution for the one-pixel attack: init, mutate, write candidates, select, decode.
"""

import math

import numpy as np

from .._validate import validate_int
from ..errors import GalguardValueError
from . import _reference
from ._arrays import (cap, capsule, contig, convert_like, dtype_name, empty, is_torch, minmax,
                      same_place, stream, to_numpy, torch_module, validate_array, validate_float,
                      validate_seed)
from ._loader import MAX_EXTENT, U32, dispatch, genes_per_member
from .sampling import FLOATS


# ---------------------------------------------------------------------------------------------
# Differential evolution
# ---------------------------------------------------------------------------------------------
def _validate_extent(v, name):
    return validate_int(name, v, minimum=1, maximum=MAX_EXTENT)


def _validate_bounds(lo, hi, b, c, like):
    lo_ = convert_like(lo, "lo", like, "float32")
    hi_ = convert_like(hi, "hi", like, "float32")
    for arr, name in ((lo_, "lo"), (hi_, "hi")):
        if tuple(arr.shape) != (b, c):
            raise GalguardValueError(
                f"{name} must have shape (B, C) = ({b}, {c}), got {tuple(arr.shape)}"
            )
        mn, mx = minmax(arr)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise GalguardValueError(f"{name} must be finite, got values in [{mn}, {mx}]")
    bad = (lo_ > hi_)
    if bool(bad.any()):
        where = tuple(int(v) for v in (np.argwhere(to_numpy(bad))[0]))
        raise GalguardValueError(
            f"lo must be <= hi, got lo > hi at (image, band) {where}: "
            f"{float(lo_[where])} > {float(hi_[where])}"
        )
    return lo_, hi_


def _validate_ids(ids, name, like, n=None):
    if n is None:
        ids_ = convert_like(ids, name, like, "int64")
        if ids_.ndim != 1:
            raise GalguardValueError(f"{name} must have shape (B,), got {tuple(ids_.shape)}")
        n = ids_.shape[0]
    else:
        ids_ = convert_like(ids, name, like, "int64")
        if tuple(ids_.shape) != (n,):
            raise GalguardValueError(f"{name} must have shape ({n},), got {tuple(ids_.shape)}")
    mn, mx = minmax(ids_)
    if n and (mn < 0 or mx >= U32):
        raise GalguardValueError(
            f"{name} must hold ids in [0, 2**32), got values in [{mn:.0f}, {mx:.0f}]"
        )
    return ids_


def de_init(ids, popsize, *, pixels, channels, height, width, lo, hi, seed):
    """Initial DE populations, uniform inside the bounds.

    Parameters
    ----------
    ids : array-like of int, shape (B,)
        Global image ids in [0, 2**32) (they key the random stream).
    popsize : int
        Members per image P >= 1.
    pixels : int
        Pixels per member k >= 1.
    channels : int
        Bands C >= 1.
    height, width : int
        Image size (positions are drawn in [0, height) and [0, width)), at most 2**24.
    lo, hi : array-like, shape (B, C)
        Per-image, per-band value bounds, finite, lo <= hi.
    seed : int
        Key of the Philox stream, in [0, 2**64).

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        G = pixels * (2 + C) genes [x_0, y_0, v_0[0..C-1], x_1, ...]. A torch tensor (on the
        device of the first tensor among ``ids``, ``lo``, ``hi``) if any of them is one, else a
        numpy array.

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, range, or lo > hi.

    Notes
    -----
    Gene g of member m of image ``ids[b]`` uses Philox counter (ids[b], 0, m, 3 << 24 | g).
    """
    like = next((x for x in (ids, lo, hi) if is_torch(x)), np.empty(0))
    ids_ = _validate_ids(ids, "ids", like)
    b = ids_.shape[0]
    popsize = validate_int("popsize", popsize, minimum=1, maximum=U32 - 1)
    pixels = validate_int("pixels", pixels, minimum=1, maximum=1 << 16)
    channels = validate_int("channels", channels, minimum=1, maximum=1 << 16)
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    seed = validate_seed(seed)
    lo_, hi_ = _validate_bounds(lo, hi, b, channels, like)
    g = genes_per_member(pixels, channels)
    def reference():
        return _reference.de_init(to_numpy(ids_), popsize, pixels=pixels, channels=channels,
                                  height=height, width=width, lo=to_numpy(lo_),
                                  hi=to_numpy(hi_), seed=seed)

    def compiled(core, place):
        i, lo_c, hi_c = place(ids_), place(lo_), place(hi_)
        out = empty((b, popsize, g), "float32", lo_c)
        if b:
            core.de_init(capsule(i), capsule(lo_c), capsule(hi_c), capsule(out), pixels,
                         channels, height, width, seed, stream(out))
        return out

    return dispatch(like, reference, compiled, work=b > 0)


def de_mutate(pop, *, ids, generation, F=0.5, strategy="rand1", best=None, CR=1.0,
              oob="redraw", height, width, lo, hi, seed):
    """Trial members by DE mutation, optional binomial crossover and bounds handling.

    Parameters
    ----------
    pop : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Current populations, G = pixels * (2 + C) with C = ``lo.shape[1]``.
    ids : array-like of int, shape (B,)
        Global image ids in [0, 2**32).
    generation : int
        Generation number in [0, 2**32) (keys the random stream together with ``ids``).
    F : float, optional
        Differential weight in (0, 2]; default 0.5 (the paper's).
    strategy : {"rand1", "best1"}, optional
        rand/1: v = x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and != i (needs P >= 4; the
        paper's); best/1: v = x_best + F (x_r1 - x_r2) (needs P >= 3 and ``best``).
    best : array-like of int, shape (B,), optional
        Index of each image's best member (from :func:`de_select`); required for best1.
    CR : float, optional
        Crossover rate in [0, 1]; gene g comes from the mutant when u_g < CR or g == jrand.
        CR = 1 (default, the paper's) means no crossover.
    oob : {"redraw", "clip"}, optional
        Out-of-bounds genes are redrawn uniformly inside the bounds (default, as the reference
        code does) or clipped to them (positions to the largest float below W or H). NaN genes
        are always redrawn.
    height, width : int
        Image size; positions live in [0, width) and [0, height).
    lo, hi : array-like, shape (B, C)
        Per-image, per-band value bounds, lo <= hi.
    seed : int
        Key of the Philox stream.

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Trial members, same kind and device as ``pop``; every gene inside its bounds.

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, device, value or option.
    """
    validate_array(pop, "pop", ("float32",), ndim=3)
    b, p, g = (int(s) for s in pop.shape)
    generation = validate_int("generation", generation, minimum=0, maximum=U32 - 1)
    F = validate_float(F, "F", lo=0.0, hi=2.0, lo_open=True)
    CR = validate_float(CR, "CR", lo=0.0, hi=1.0)
    if strategy not in ("rand1", "best1"):
        raise GalguardValueError(f"strategy must be 'rand1' or 'best1', got {strategy!r}")
    if oob not in ("redraw", "clip"):
        raise GalguardValueError(f"oob must be 'redraw' or 'clip', got {oob!r}")
    need = 4 if strategy == "rand1" else 3
    if p < need:
        raise GalguardValueError(
            f"pop must have at least {need} members per image for {strategy}, got P = {p}"
        )
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    seed = validate_seed(seed)
    ids_ = _validate_ids(ids, "ids", pop, b)
    lo_arr = lo if (is_torch(lo) or isinstance(lo, np.ndarray)) else np.asarray(lo)
    if lo_arr.ndim != 2:
        raise GalguardValueError(f"lo must have shape (B, C), got {tuple(lo_arr.shape)}")
    c = int(lo_arr.shape[1])
    lo_, hi_ = _validate_bounds(lo, hi, b, c, pop)
    if c < 1 or g % (2 + c) or g == 0:
        raise GalguardValueError(
            f"pop must have G = pixels * (2 + C) genes with C = {c} bands, got G = {g}"
        )
    best_ = None
    if strategy == "best1":
        if best is None:
            raise GalguardValueError("best must be given for strategy 'best1', got None")
        best_ = _validate_ids(best, "best", pop, b)
        mn, mx = minmax(best_)
        if b and mx >= p:
            raise GalguardValueError(f"best must hold member indices in [0, {p}), got max {mx:.0f}")
    pop = contig(pop)
    def reference():
        return _reference.de_mutate(to_numpy(pop), ids=to_numpy(ids_), generation=generation,
                                    F=F, strategy=strategy, best=to_numpy(best_), CR=CR,
                                    oob=oob, height=height, width=width, lo=to_numpy(lo_),
                                    hi=to_numpy(hi_), seed=seed)

    def compiled(core, place):
        src, i, bst, lo_c, hi_c = (place(x) for x in (pop, ids_, best_, lo_, hi_))
        out = empty((b, p, g), "float32", src)
        if b:
            core.de_mutate(capsule(src), capsule(i), cap(bst), capsule(lo_c), capsule(hi_c),
                           capsule(out), generation, F, CR, 1 if strategy == "best1" else 0,
                           1 if oob == "clip" else 0, height, width, seed, stream(src))
        return out

    return dispatch(pop, reference, compiled, work=b > 0)


def de_write_candidates(images, members, *, out=None):
    """Write the B x P candidate images in one pass.

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor, float32, shape (B, C, H, W)
        Base images.
    members : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Members, G = pixels * (2 + C), same kind and device as ``images``.
    out : numpy.ndarray or torch.Tensor, float32, shape (B * P, C, H, W), optional
        C-contiguous buffer to write into (same kind and device; must not overlap ``images``).

    Returns
    -------
    numpy.ndarray or torch.Tensor, float32, shape (B * P, C, H, W)
        ``out[b * P + p]`` is ``images[b]`` with pixel (int(y_j), int(x_j)) of every band c set
        to v_j[c] for each pixel j of member p (later pixels win where two coincide; positions
        are clamped into the image).

    Raises
    ------
    GalguardValueError
        On a bad shape, dtype, device or a non-contiguous ``out``.
    """
    validate_array(images, "images", ("float32",), ndim=4)
    validate_array(members, "members", ("float32",), ndim=3)
    same_place(members, "members", images, "images")
    b, c, h, w = (int(s) for s in images.shape)
    if int(members.shape[0]) != b:
        raise GalguardValueError(
            f"members must have shape (B, P, G) with B = {b} (from images), "
            f"got {tuple(members.shape)}"
        )
    p, g = int(members.shape[1]), int(members.shape[2])
    if g == 0 or g % (2 + c):
        raise GalguardValueError(
            f"members must have G = pixels * (2 + C) genes with C = {c}, got G = {g}"
        )
    shape = (b * p, c, h, w)
    if out is not None:
        validate_array(out, "out", ("float32",), ndim=4)
        same_place(out, "out", images, "images")
        if tuple(out.shape) != shape:
            raise GalguardValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        contiguous = out.is_contiguous() if is_torch(out) else out.flags.c_contiguous
        if not contiguous:
            raise GalguardValueError("out must be C-contiguous, got a non-contiguous array")
        if _shares_memory(out, images):
            raise GalguardValueError("out must not overlap images")
    images_c, members_c = contig(images), contig(members)
    def reference():
        return _reference.de_write_candidates(to_numpy(images_c), to_numpy(members_c))

    def compiled(core, place):
        src, mem = place(images_c), place(members_c)
        # write straight into `out` when the core runs where it lives
        target = out if out is not None and src is images_c else empty(shape, "float32", src)
        if b * p:
            core.de_write_candidates(capsule(src), capsule(mem), capsule(target), stream(src))
        return target

    res = dispatch(images, reference, compiled, work=b * p > 0)
    if out is None or res is out:
        return res
    if is_torch(out):
        out.copy_(res)
    else:
        out[...] = res
    return out


def _shares_memory(a, b):
    if is_torch(a):
        if a.device != b.device or a.numel() == 0 or b.numel() == 0:
            return False
        a0, b0 = a.data_ptr(), b.data_ptr()
        a1 = a0 + a.numel() * a.element_size()
        b1 = b0 + b.numel() * b.element_size()
        return a0 < b1 and b0 < a1
    return bool(np.shares_memory(a, b))


def de_select(pop, fitness, trial, trial_fitness):
    """Greedy one-to-one DE selection (fitness is minimised).

    Parameters
    ----------
    pop : numpy.ndarray or torch.Tensor, float32, shape (B, P, G)
        Parents.
    fitness : float32 or float64, shape (B, P)
        Parents' fitness.
    trial : float32, shape (B, P, G)
        Trial members (from :func:`de_mutate`).
    trial_fitness : same dtype as ``fitness``, shape (B, P)
        Trials' fitness.

    Returns
    -------
    pop : float32 (B, P, G)
        Trial i replaces parent i where ``trial_fitness <= fitness``.
    fitness : (B, P)
        The survivors' fitness.
    best : int64 (B,)
        Index of the first member with the smallest fitness of each image.

    Raises
    ------
    GalguardValueError
        On mismatched shapes, dtypes or devices.

    Notes
    -----
    NaN fitness is worse than any number: a NaN trial never replaces its parent, a NaN parent
    is replaced by any non-NaN trial, and NaN members are never ``best`` unless all are NaN
    (then ``best`` is 0). The inputs are not modified.
    """
    validate_array(pop, "pop", ("float32",), ndim=3)
    b, p, g = (int(s) for s in pop.shape)
    validate_array(trial, "trial", ("float32",), ndim=3)
    same_place(trial, "trial", pop, "pop")
    if tuple(trial.shape) != (b, p, g):
        raise GalguardValueError(
            f"trial must have the shape of pop {(b, p, g)}, got {tuple(trial.shape)}"
        )
    validate_array(fitness, "fitness", FLOATS, ndim=2)
    same_place(fitness, "fitness", pop, "pop")
    if tuple(fitness.shape) != (b, p):
        raise GalguardValueError(
            f"fitness must have shape (B, P) = {(b, p)}, got {tuple(fitness.shape)}"
        )
    validate_array(trial_fitness, "trial_fitness", FLOATS, ndim=2)
    same_place(trial_fitness, "trial_fitness", pop, "pop")
    if tuple(trial_fitness.shape) != (b, p):
        raise GalguardValueError(
            f"trial_fitness must have shape (B, P) = {(b, p)}, got {tuple(trial_fitness.shape)}"
        )
    if dtype_name(trial_fitness) != dtype_name(fitness):
        raise GalguardValueError(
            f"trial_fitness must have the dtype of fitness ({dtype_name(fitness)}), "
            f"got {dtype_name(trial_fitness)}"
        )
    pop, trial = contig(pop), contig(trial)
    fitness, trial_fitness = contig(fitness), contig(trial_fitness)
    def reference():
        return _reference.de_select(to_numpy(pop), to_numpy(fitness), to_numpy(trial),
                                    to_numpy(trial_fitness))

    def compiled(core, place):
        args = tuple(place(a) for a in (pop, fitness, trial, trial_fitness))
        like = args[0]
        out_pop = empty((b, p, g), "float32", like)
        out_fit = empty((b, p), dtype_name(fitness), like)
        out_best = empty((b,), "int64", like)
        if b * p:
            core.de_select(*(capsule(a) for a in args), capsule(out_pop), capsule(out_fit),
                           capsule(out_best), stream(like))
        elif b:
            out_best[...] = 0
        return out_pop, out_fit, out_best

    return dispatch(pop, reference, compiled, work=b * p > 0)


def decode_members(members, *, height, width, channels):
    """Pixel positions and values of DE members.

    Parameters
    ----------
    members : numpy.ndarray or torch.Tensor, float32, shape (..., G)
        Members, G = pixels * (2 + channels).
    height, width : int
        Image size (positions are clamped into it, as :func:`de_write_candidates` does).
    channels : int
        Bands C.

    Returns
    -------
    x, y : int64, shape (..., pixels)
        Pixel columns int(x_j) and rows int(y_j).
    values : float32, shape (..., pixels, C)
        The pixels' values.
    """
    validate_array(members, "members", ("float32",), min_ndim=1)
    channels = validate_int("channels", channels, minimum=1)
    height = _validate_extent(height, "height")
    width = _validate_extent(width, "width")
    g = int(members.shape[-1])
    if g == 0 or g % (2 + channels):
        raise GalguardValueError(
            f"members must have G = pixels * (2 + C) genes with C = {channels}, got G = {g}"
        )
    k = g // (2 + channels)
    genes = members.reshape(*members.shape[:-1], k, 2 + channels)
    xs, ys, vals = genes[..., 0], genes[..., 1], genes[..., 2:]
    if is_torch(members):
        torch = torch_module()

        def idx(t, n):
            t = torch.nan_to_num(t, nan=0.0, posinf=float(n), neginf=0.0)
            return t.clamp(0, n).to(torch.int64).clamp(0, n - 1)

        return idx(xs, width), idx(ys, height), vals.clone()
    return _reference.pixel_index(xs, width), _reference.pixel_index(ys, height), vals.copy()

"""Reference twin of the compiled core, in numpy (and numba where installed).

Every function here mirrors one kernel of :mod:`galguard._core` line by line and draws from the
same Philox4x32-10 stream, so it gives the same integers (Poisson, binomial) and the same float32
bits (differential evolution) as the C++ and CUDA code for the same seed. It is the test oracle
for the core and the fallback that :mod:`galguard.kernels` uses, with a
:class:`~galguard.errors.CoreUnavailableWarning`, where the compiled core cannot be loaded.

The functions take and return numpy arrays only and do no argument validation: call them through
:mod:`galguard.kernels`, which validates and converts. With numba the scalar loops are compiled on
first use (a few seconds); without it they run as plain Python (slow, but identical).

Counter layout (see ``csrc/include/galguard/common.h``): Philox counter words are
``(row id, realisation or generation, element or member, stream << 24 | sub)`` and the key is
the 64-bit seed split into two 32-bit words.
"""

import math

import numpy as np

__all__ = [
    "HAVE_NUMBA",
    "philox4x32_10",
    "poisson",
    "binomial_thin",
    "de_init",
    "de_mutate",
    "de_write_candidates",
    "de_select",
]

try:  # numba is optional: the same code runs as plain Python without it
    import numba

    HAVE_NUMBA = True

    def _jit(fn):
        return numba.njit(cache=True, nogil=True)(fn)

except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False

    def _jit(fn):
        return fn


_M32 = 0xFFFFFFFF
STREAM_POISSON = 1
STREAM_BINOMIAL = 2
STREAM_DE_INIT = 3
STREAM_DE_CHOICE = 4
STREAM_DE_GENE = 5
RAND1 = 0
BEST1 = 1
REDRAW = 0
CLIP = 1


@_jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block: four 32-bit counter words and two key words -> four words."""
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
            k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        hi0 = (p0 >> 32) & 0xFFFFFFFF
        lo0 = p0 & 0xFFFFFFFF
        hi1 = (p1 >> 32) & 0xFFFFFFFF
        lo1 = p1 & 0xFFFFFFFF
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@_jit
def _stream_word(stream, sub):
    return (stream << 24) | (sub & 0x00FFFFFF)


@_jit
def _u01_open(hi, lo):
    # the top 52 of the 64 bits (hi, lo): < 2^52, exact in a double, no int64 overflow
    x = (hi << 20) | (lo >> 12)
    return (float(x) + 0.5) * 2.220446049250313080847263336181640625e-16


@_jit
def _u01_float(w):
    return np.float32(w >> 8) * np.float32(5.9604644775390625e-08)


@_jit
def _uniform_int(w, n):
    return (w * n) >> 32


# Elementary functions of csrc/include/galguard/fmath.h, operation for operation (libm's log and
# exp differ between platforms in the last bit; these do not).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@_jit
def _gg_log(x):
    m, e = math.frexp(x)  # x = m 2^e, m in [0.5, 1): the same m * 2, e - 1 as the exponent bits
    m = m * 2.0
    ef = float(e - 1)
    if m > 1.4142135623730951:
        m = m * 0.5
        ef = ef + 1.0
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    p = 2.0 / 25.0
    p = 2.0 / 23.0 + z * p
    p = 2.0 / 21.0 + z * p
    p = 2.0 / 19.0 + z * p
    p = 2.0 / 17.0 + z * p
    p = 2.0 / 15.0 + z * p
    p = 2.0 / 13.0 + z * p
    p = 2.0 / 11.0 + z * p
    p = 2.0 / 9.0 + z * p
    p = 2.0 / 7.0 + z * p
    p = 2.0 / 5.0 + z * p
    p = 2.0 / 3.0 + z * p
    log_m = f - s * (f - z * p)
    return ef * _LN2_HI + (log_m + ef * _LN2_LO)


@_jit
def _gg_log1p(d):
    u = 1.0 + d
    um1 = u - 1.0
    if um1 == 0.0:
        return d
    return _gg_log(u) * (d / um1)


@_jit
def _gg_exp(x):
    n = np.floor(x * 1.4426950408889634 + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 / 87178291200.0
    p = 1.0 / 6227020800.0 + r * p
    p = 1.0 / 479001600.0 + r * p
    p = 1.0 / 39916800.0 + r * p
    p = 1.0 / 3628800.0 + r * p
    p = 1.0 / 362880.0 + r * p
    p = 1.0 / 40320.0 + r * p
    p = 1.0 / 5040.0 + r * p
    p = 1.0 / 720.0 + r * p
    p = 1.0 / 120.0 + r * p
    p = 1.0 / 24.0 + r * p
    p = 1.0 / 6.0 + r * p
    p = 0.5 + r * p
    er = 1.0 + (r + r * (r * p))
    return er * math.ldexp(1.0, int(n))


@_jit
def _stirling_tail(k):
    if k < 10.0:
        i = int(k)
        if i == 0:
            return 0.08106146679532726
        if i == 1:
            return 0.0413406959554093
        if i == 2:
            return 0.02767792568499834
        if i == 3:
            return 0.020790672103765093
        if i == 4:
            return 0.016644691189821193
        if i == 5:
            return 0.013876128823070748
        if i == 6:
            return 0.01189670994589177
        if i == 7:
            return 0.010411265261972096
        if i == 8:
            return 0.009255462182712733
        return 0.00833056343336287
    n = k + 1.0
    n2 = 1.0 / (n * n)
    return (
        1.0 / 12.0
        - n2 * (1.0 / 360.0 - n2 * (1.0 / 1260.0 - n2 * (1.0 / 1680.0 - n2 * (1.0 / 1188.0))))
    ) / n


@_jit
def _poisson_draw(lam, k0, k1, row, real, elem):
    if not (lam > 0.0):
        return 0.0
    it = 0
    if lam < 10.0:
        p0 = _gg_exp(-lam)
        cap = 10.0 * lam + 64.0
        while True:
            r0, r1, r2, r3 = philox4x32_10(
                row, real, elem, _stream_word(STREAM_POISSON, it), k0, k1
            )
            it += 1
            u = _u01_open(r0, r1)
            p = p0
            k = 0.0
            while u > p and k <= cap:
                u -= p
                k += 1.0
                p *= lam / k
            if k <= cap:
                return k
    slam = math.sqrt(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        r0, r1, r2, r3 = philox4x32_10(row, real, elem, _stream_word(STREAM_POISSON, it), k0, k1)
        it += 1
        u = _u01_open(r0, r1) - 0.5
        v = _u01_open(r2, r3)
        us = 0.5 - abs(u)
        k = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= v_r:
            return k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        kp1 = k + 1.0
        log_f = (
            k * _gg_log1p((lam - kp1) / kp1)
            - 0.5 * _gg_log(kp1)
            + (kp1 - lam)
            - 0.91893853320467274
            - _stirling_tail(k)
        )
        if _gg_log(v * inv_alpha / (a / (us * us) + b)) <= log_f:
            return k


@_jit
def _binomial_draw(n, p, k0, k1, row, real, elem):
    if not (n > 0.0):
        return 0.0
    if p >= 1.0:
        return n
    if not (p > 0.0):
        return 0.0
    flip = p > 0.5
    q = 1.0 - p if flip else p
    m = n * q
    it = 0
    k = 0.0
    if m < 10.0:
        p0 = _gg_exp(n * _gg_log1p(-q))
        s = q / (1.0 - q)
        cap = min(n, 10.0 * m + 64.0)
        while True:
            r0, r1, r2, r3 = philox4x32_10(
                row, real, elem, _stream_word(STREAM_BINOMIAL, it), k0, k1
            )
            it += 1
            u = _u01_open(r0, r1)
            pk = p0
            k = 0.0
            ok = True
            while u > pk:
                u -= pk
                k += 1.0
                if k > cap:
                    ok = False
                    break
                pk *= s * (n - k + 1.0) / k
            if ok:
                break
    else:
        spq = math.sqrt(m * (1.0 - q))
        b = 1.15 + 2.53 * spq
        a = -0.0873 + 0.0248 * b + 0.01 * q
        c = m + 0.5
        v_r = 0.92 - 4.2 / b
        alpha = (2.83 + 5.1 / b) * spq
        lpq = _gg_log(q / (1.0 - q))
        mode = np.floor((n + 1.0) * q)
        while True:
            r0, r1, r2, r3 = philox4x32_10(
                row, real, elem, _stream_word(STREAM_BINOMIAL, it), k0, k1
            )
            it += 1
            u = _u01_open(r0, r1) - 0.5
            v = _u01_open(r2, r3)
            us = 0.5 - abs(u)
            k = np.floor((2.0 * a / us + b) * u + c)
            if k < 0.0 or k > n:
                continue
            if us >= 0.07 and v <= v_r:
                break
            v = _gg_log(v * alpha / (a / (us * us) + b))
            bound = (
                (mode + 0.5) * _gg_log((mode + 1.0) / (n - mode + 1.0))
                - (k + 0.5) * _gg_log((k + 1.0) / (n - k + 1.0))
                + (n + 1.0) * _gg_log((n - mode + 1.0) / (n - k + 1.0))
                + (k - mode) * lpq
                + _stirling_tail(mode)
                + _stirling_tail(n - mode)
                - _stirling_tail(k)
                - _stirling_tail(n - k)
            )
            if v <= bound:
                break
    return n - k if flip else k


@_jit
def _poisson_loop(mean, out, rows, row_size, index, k0, k1, real):
    for r in range(rows):
        row = index[r]
        for e in range(row_size):
            i = r * row_size + e
            out[i] = _poisson_draw(float(mean[i]), k0, k1, row, real, e)


@_jit
def _binomial_loop(counts, p, out, rows, row_size, index, k0, k1, real):
    for r in range(rows):
        row = index[r]
        for e in range(row_size):
            i = r * row_size + e
            out[i] = _binomial_draw(float(counts[i]), p[i], k0, k1, row, real, e)


def _key(seed):
    seed = int(seed)
    return seed & _M32, (seed >> 32) & _M32


def _rows(arr, index):
    rows = arr.shape[0] if arr.ndim else 1
    row_size = arr.size // rows if rows else 0
    if index is None:
        index = np.arange(rows, dtype=np.int64)
    return rows, row_size, np.ascontiguousarray(index, dtype=np.int64)


def poisson(mean, *, seed, index=None, realisation=0):
    """Poisson draws with means ``mean`` (numpy); same dtype and shape as ``mean``."""
    mean = np.ascontiguousarray(mean)
    out = np.empty_like(mean)
    rows, row_size, index = _rows(mean, index)
    k0, k1 = _key(seed)
    _poisson_loop(mean.reshape(-1), out.reshape(-1), rows, row_size, index, k0, k1,
                  int(realisation))
    return out


def binomial_thin(counts, p, *, seed, index=None, realisation=0):
    """Binomial(counts, p) draws (numpy); same dtype and shape as ``counts``."""
    counts = np.ascontiguousarray(counts)
    out = np.empty_like(counts)
    pf = np.ascontiguousarray(np.broadcast_to(np.asarray(p, dtype=np.float64), counts.shape))
    rows, row_size, index = _rows(counts, index)
    k0, k1 = _key(seed)
    _binomial_loop(counts.reshape(-1), pf.reshape(-1), out.reshape(-1), rows, row_size, index,
                   k0, k1, int(realisation))
    return out


# ---------------------------------------------------------------------------------------------
# Differential evolution
# ---------------------------------------------------------------------------------------------
@_jit
def _uniform_position(u, extent, below):
    x = u * extent
    return x if x < extent else below


@_jit
def _uniform_value(u, lo, hi):
    v = lo + u * (hi - lo)
    if v > hi:
        return hi
    if v < lo:
        return lo
    return v


@_jit
def _gene_uniform(u, g, channels, height, width, below_h, below_w, lo, hi):
    j = g % (2 + channels)
    if j == 0:
        return _uniform_position(u, width, below_w)
    if j == 1:
        return _uniform_position(u, height, below_h)
    return _uniform_value(u, lo[j - 2], hi[j - 2])


@_jit
def _de_init_loop(ids, lo, hi, pop, channels, height, width, below_h, below_w, k0, k1):
    B, P, G = pop.shape
    for b in range(B):
        idb = ids[b]
        for m in range(P):
            for g in range(G):
                r0, r1, r2, r3 = philox4x32_10(idb, 0, m, _stream_word(STREAM_DE_INIT, g), k0, k1)
                pop[b, m, g] = _gene_uniform(
                    _u01_float(r0), g, channels, height, width, below_h, below_w, lo[b], hi[b]
                )


@_jit
def _choose_donors(w0, w1, w2, P, self_idx, n):
    ex = np.empty(4, dtype=np.int64)
    out = np.empty(3, dtype=np.int64)
    ex[0] = self_idx
    nex = 1
    words = (w0, w1, w2)
    for d in range(n):
        v = _uniform_int(words[d], P - nex)
        for e in range(nex):
            if v >= ex[e]:
                v += 1
        out[d] = v
        pos = nex
        while pos > 0 and ex[pos - 1] > v:
            ex[pos] = ex[pos - 1]
            pos -= 1
        ex[pos] = v
        nex += 1
    return out


@_jit
def _de_mutate_loop(pop, ids, best, lo, hi, trial, generation, F, CR, strategy, oob, channels,
                    height, width, below_h, below_w, k0, k1):
    B, P, G = pop.shape
    crossover = CR < np.float32(1.0)
    for b in range(B):
        idb = ids[b]
        for i in range(P):
            r0, r1, r2, r3 = philox4x32_10(
                idb, generation, i, _stream_word(STREAM_DE_CHOICE, 0), k0, k1
            )
            if strategy == BEST1:
                d = _choose_donors(r0, r1, r2, P, i, 2)
                base, a, c = best[b], d[0], d[1]
            else:
                d = _choose_donors(r0, r1, r2, P, i, 3)
                base, a, c = d[0], d[1], d[2]
            jrand = _uniform_int(r3, G)
            for g in range(G):
                have = False
                g0 = 0
                g1 = 0
                if crossover and g != jrand:
                    g0, g1, g2, g3 = philox4x32_10(
                        idb, generation, i, _stream_word(STREAM_DE_GENE, g), k0, k1
                    )
                    have = True
                    if not (_u01_float(g0) < CR):
                        trial[b, i, g] = pop[b, i, g]
                        continue
                diff = pop[b, a, g] - pop[b, c, g]
                step = F * diff
                v = pop[b, base, g] + step
                j = g % (2 + channels)
                if j < 2:
                    lower = np.float32(0.0)
                    upper = width if j == 0 else height
                    inside = v >= lower and v < upper
                else:
                    lower = lo[b, j - 2]
                    upper = hi[b, j - 2]
                    inside = v >= lower and v <= upper
                if not inside:
                    if oob == CLIP and v == v:
                        if v < lower:
                            v = lower
                        elif j == 0:
                            v = below_w
                        elif j == 1:
                            v = below_h
                        else:
                            v = upper
                    else:
                        if not have:
                            g0, g1, g2, g3 = philox4x32_10(
                                idb, generation, i, _stream_word(STREAM_DE_GENE, g), k0, k1
                            )
                        v = _gene_uniform(
                            _u01_float(g1), g, channels, height, width, below_h, below_w,
                            lo[b], hi[b]
                        )
                trial[b, i, g] = v


def _extents(height, width):
    h = np.float32(height)
    w = np.float32(width)
    return h, w, np.nextafter(h, np.float32(0)), np.nextafter(w, np.float32(0))


def de_init(ids, popsize, *, pixels, channels, height, width, lo, hi, seed):
    """Initial populations (B, popsize, pixels * (2 + channels)) float32, uniform in bounds."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    lo = np.ascontiguousarray(lo, dtype=np.float32)
    hi = np.ascontiguousarray(hi, dtype=np.float32)
    pop = np.empty((ids.shape[0], int(popsize), int(pixels) * (2 + int(channels))), np.float32)
    h, w, bh, bw = _extents(height, width)
    k0, k1 = _key(seed)
    _de_init_loop(ids, lo, hi, pop, int(channels), h, w, bh, bw, k0, k1)
    return pop


def de_mutate(pop, *, ids, generation, F=0.5, strategy="rand1", best=None, CR=1.0,
              oob="redraw", height, width, lo, hi, seed):
    """Trial members (B, P, G) float32: rand/1 or best/1 mutation, binomial crossover, bounds."""
    pop = np.ascontiguousarray(pop, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    lo = np.ascontiguousarray(lo, dtype=np.float32)
    hi = np.ascontiguousarray(hi, dtype=np.float32)
    channels = lo.shape[1]
    if best is None:
        best = np.zeros(pop.shape[0], dtype=np.int64)
    best = np.ascontiguousarray(best, dtype=np.int64)
    trial = np.empty_like(pop)
    h, w, bh, bw = _extents(height, width)
    k0, k1 = _key(seed)
    _de_mutate_loop(pop, ids, best, lo, hi, trial, int(generation), np.float32(F), np.float32(CR),
                    BEST1 if strategy == "best1" else RAND1, CLIP if oob == "clip" else REDRAW,
                    channels, h, w, bh, bw, k0, k1)
    return trial


def pixel_index(x, extent):
    """Vectorised twin of ``pixel_index`` in de.h: int(x) clamped into [0, extent - 1]."""
    x = np.asarray(x, dtype=np.float32)
    ok = x >= 0
    i = np.where(ok, np.minimum(np.where(ok, x, 0), np.float32(extent)), 0).astype(np.int64)
    return np.minimum(i, extent - 1)


def de_write_candidates(images, members, *, out=None):
    """Candidate images (B * P, C, H, W): out[b * P + p] = images[b] with member p's pixels."""
    B, C, H, W = images.shape
    P, G = members.shape[1], members.shape[2]
    if out is None:
        out = np.empty((B * P, C, H, W), dtype=images.dtype)
    view = out.reshape(B, P, C, H, W)
    view[...] = images[:, None]
    pixels = G // (2 + C)
    bb, pp = np.meshgrid(np.arange(B), np.arange(P), indexing="ij")
    for j in range(pixels):  # later pixels overwrite earlier ones, as in the kernels
        gene = members[:, :, j * (2 + C):(j + 1) * (2 + C)]
        xi = pixel_index(gene[..., 0], W)
        yi = pixel_index(gene[..., 1], H)
        for c in range(C):
            view[bb, pp, c, yi, xi] = gene[..., 2 + c]
    return out


def de_select(pop, fitness, trial, trial_fitness):
    """Greedy one-to-one selection: (new pop, new fitness, best (B,) int64)."""
    fitness = np.asarray(fitness)
    trial_fitness = np.asarray(trial_fitness)
    with np.errstate(invalid="ignore"):
        accept = ~np.isnan(trial_fitness) & (np.isnan(fitness) | (trial_fitness <= fitness))
    new_pop = np.where(accept[..., None], trial, pop).astype(np.float32)
    new_fit = np.where(accept, trial_fitness, fitness).astype(fitness.dtype)
    masked = np.where(np.isnan(new_fit), np.inf, new_fit)
    best = np.argmin(masked, axis=1).astype(np.int64)
    return new_pop, new_fit, best

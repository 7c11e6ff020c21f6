"""One-pixel differential-evolution primitives: behaviour, identity with the reference twin,
invariance to batch split and thread count, numpy and torch."""

import itertools

import numpy as np
import pytest
import torch

from galguard import kernels
from galguard.kernels import _reference

# Every test here compares the compiled core with its reference twin: they need the core.
pytestmark = pytest.mark.usefixtures("core")

H, W, C = 20, 30, 3


def _bounds(rng, b, c=C):
    lo = rng.uniform(-5, 5, size=(b, c)).astype(np.float32)
    hi = (lo + rng.uniform(0, 10, size=(b, c))).astype(np.float32)
    hi[0, 0] = lo[0, 0]  # a degenerate band: lo == hi
    return lo, hi


def _pop(rng, b=4, p=12, pixels=2, seed=3, ids=None):
    lo, hi = _bounds(rng, b)
    ids = np.arange(10, 10 + b) if ids is None else ids
    pop = kernels.de_init(ids, p, pixels=pixels, channels=C, height=H, width=W, lo=lo, hi=hi,
                          seed=seed)
    return pop, ids, lo, hi


def _check_bounds(pop, lo, hi):
    g = pop.reshape(pop.shape[0], pop.shape[1], -1, 2 + C)
    assert np.all(g[..., 0] >= 0) and np.all(g[..., 0] < W)
    assert np.all(g[..., 1] >= 0) and np.all(g[..., 1] < H)
    assert np.all(g[..., 2:] >= lo[:, None, None, :]) and np.all(g[..., 2:] <= hi[:, None, None, :])


def test_init_shape_bounds_and_spread(rng):
    pop, ids, lo, hi = _pop(rng, b=3, p=2000, pixels=1)
    assert pop.shape == (3, 2000, 5) and pop.dtype == np.float32
    _check_bounds(pop, lo, hi)
    # uniform: mean position near the centre (5 sigma of a uniform mean)
    x = pop[..., 0].ravel()
    assert abs(x.mean() - W / 2) < 5 * W / np.sqrt(12 * x.size)
    assert len(np.unique(pop[..., 0].astype(int))) == W  # every column is reached
    assert np.all(pop[0, :, 2] == lo[0, 0])  # lo == hi gives that value


def test_init_matches_reference(rng):
    lo, hi = _bounds(rng, 5)
    ids = np.array([0, 7, 2**32 - 1, 3, 1000])
    args = dict(pixels=3, channels=C, height=H, width=W, lo=lo, hi=hi, seed=2**63 + 11)
    np.testing.assert_array_equal(
        kernels.de_init(ids, 17, **args), _reference.de_init(ids, 17, **args)
    )


@pytest.mark.parametrize(
    ("strategy", "CR", "oob"),
    list(itertools.product(["rand1", "best1"], [1.0, 0.7, 0.0], ["redraw", "clip"])),
)
def test_mutate_matches_reference_and_bounds(rng, strategy, CR, oob):
    pop, ids, lo, hi = _pop(rng, b=5, p=9, pixels=2)
    best = np.array([0, 8, 3, 4, 1])
    args = dict(ids=ids, generation=6, F=1.7, strategy=strategy, best=best, CR=CR, oob=oob,
                height=H, width=W, lo=lo, hi=hi, seed=99)
    trial = kernels.de_mutate(pop, **args)
    np.testing.assert_array_equal(trial, _reference.de_mutate(pop, **args))
    _check_bounds(trial, lo, hi)  # F = 1.7 pushes many genes out: all are brought back


def test_rand1_uses_three_distinct_other_members(rng):
    """With P = 4, rand/1 must use exactly the three other members (in some order)."""
    lo = np.full((1, C), -1e30, np.float32)
    hi = np.full((1, C), 1e30, np.float32)
    pop = np.zeros((1, 4, 2 + C), np.float32)
    pop[0, :, 0] = [10, 10.5, 11, 12]  # x + F (y - z) stays inside [0, W): no redraw
    pop[0, :, 1] = [8, 8.25, 9, 10]
    pop[0, :, 2:] = rng.normal(size=(4, C)).astype(np.float32)
    for gen in range(20):
        trial = kernels.de_mutate(pop, ids=[0], generation=gen, F=0.5, height=H, width=W,
                                  lo=lo, hi=hi, seed=1)
        for i in range(4):
            others = [j for j in range(4) if j != i]
            candidates = [
                pop[0, a] + np.float32(0.5) * (pop[0, b] - pop[0, c])
                for a, b, c in itertools.permutations(others)
            ]
            assert any(np.array_equal(trial[0, i], cnd) for cnd in candidates)


def test_best1_uses_best_member(rng):
    pop = rng.uniform(5, 6, size=(2, 6, 2 + C)).astype(np.float32)
    lo = np.full((2, C), -100, np.float32)
    hi = np.full((2, C), 100, np.float32)
    best = np.array([2, 5])
    trial = kernels.de_mutate(pop, ids=[0, 1], generation=0, F=0.5, strategy="best1", best=best,
                              height=H, width=W, lo=lo, hi=hi, seed=4)
    for b in range(2):
        for i in range(6):
            ok = [
                np.array_equal(trial[b, i], pop[b, best[b]] + np.float32(0.5) * (pop[b, r1] - pop[b, r2]))
                for r1, r2 in itertools.permutations([j for j in range(6) if j != i], 2)
            ]
            assert any(ok)


def test_crossover_zero_changes_one_gene(rng):
    pop, ids, lo, hi = _pop(rng, b=2, p=10, pixels=3)
    trial = kernels.de_mutate(pop, ids=ids, generation=1, CR=0.0, height=H, width=W, lo=lo,
                              hi=hi, seed=5)
    changed = (trial != pop).sum(axis=2)
    assert np.all(changed <= 1)
    assert changed.sum() >= 15  # jrand's gene almost always changes


def test_clip_puts_genes_on_bounds(rng):
    pop = np.zeros((1, 5, 2 + C), np.float32)
    pop[0, :, 0] = [0, 29, 0, 29, 15]
    pop[0, :, 1] = [0, 19, 19, 0, 10]
    lo = np.zeros((1, C), np.float32)
    hi = np.ones((1, C), np.float32)
    pop[0, :, 2:] = [[0, 1, 0.5]] * 5
    trial = kernels.de_mutate(pop, ids=[0], generation=0, F=2.0, oob="clip", height=H,
                              width=W, lo=lo, hi=hi, seed=0)
    _check_bounds(trial, lo, hi)
    below_w = np.nextafter(np.float32(W), np.float32(0))
    below_h = np.nextafter(np.float32(H), np.float32(0))
    # with F = 2 on these corners most mutants leave the image: clipped onto its edges
    assert np.any(trial[0, :, 0] == below_w) and np.any(trial[0, :, 0] == 0)
    assert np.any(trial[0, :, 1] == below_h) or np.any(trial[0, :, 1] == 0)
    # the clipped trial equals the unclipped mutant clipped (from the redraw variant's donors)
    ref = _reference.de_mutate(pop, ids=[0], generation=0, F=2.0, oob="clip", height=H,
                               width=W, lo=lo, hi=hi, seed=0)
    np.testing.assert_array_equal(trial, ref)


def test_write_candidates(rng):
    b, p = 3, 4
    images = rng.normal(size=(b, C, H, W)).astype(np.float32)
    keep = images.copy()
    members = np.zeros((b, p, 2 * (2 + C)), np.float32)
    members[..., 0] = rng.uniform(0, W, size=(b, p))
    members[..., 1] = rng.uniform(0, H, size=(b, p))
    members[..., 2:5] = rng.uniform(10, 20, size=(b, p, C))
    members[..., 5:] = members[..., :5]  # second pixel on the same spot ...
    members[..., 7:10] += 100  # ... with other values: the later pixel wins
    members[1, 2, 5] = members[1, 2, 0] + 2.5  # except here: two distinct pixels
    out = kernels.de_write_candidates(images, members)
    assert out.shape == (b * p, C, H, W)
    np.testing.assert_array_equal(images, keep)
    for bb in range(b):
        for pp in range(p):
            expect = images[bb].copy()
            for j in range(2):
                g = members[bb, pp, j * 5:(j + 1) * 5]
                expect[:, int(g[1]), int(g[0])] = g[2:]
            np.testing.assert_array_equal(out[bb * p + pp], expect)
    # into a given buffer, and identical to the reference
    buf = np.full((b * p, C, H, W), np.nan, np.float32)
    res = kernels.de_write_candidates(images, members, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, out)
    np.testing.assert_array_equal(out, _reference.de_write_candidates(images, members))


def test_write_candidates_clamps_positions():
    images = np.zeros((1, 1, 4, 5), np.float32)
    members = np.array([[[-3.0, 2.0, 1.0], [7.0, 9.0, 2.0], [np.nan, np.inf, 3.0]]], np.float32)
    out = kernels.de_write_candidates(images, members)
    assert out[0, 0, 2, 0] == 1 and out[1, 0, 3, 4] == 2 and out[2, 0, 3, 0] == 3
    np.testing.assert_array_equal(out, _reference.de_write_candidates(images, members))


def test_select(rng):
    pop, ids, lo, hi = _pop(rng, b=3, p=8, pixels=1)
    trial = kernels.de_mutate(pop, ids=ids, generation=0, height=H, width=W, lo=lo, hi=hi,
                              seed=1)
    fit = rng.uniform(size=(3, 8))
    tfit = rng.uniform(size=(3, 8))
    tfit[0, 0] = fit[0, 0]  # a tie: the trial wins
    fit[1, 3] = np.nan  # NaN parent: replaced
    tfit[2, 5] = np.nan  # NaN trial: never accepted
    keep = (pop.copy(), fit.copy(), trial.copy(), tfit.copy())
    new_pop, new_fit, best = kernels.de_select(pop, fit, trial, tfit)
    for a, b in zip((pop, fit, trial, tfit), keep):
        np.testing.assert_array_equal(a, b)
    accept = (tfit <= fit) | (np.isnan(fit) & ~np.isnan(tfit))
    np.testing.assert_array_equal(new_pop, np.where(accept[..., None], trial, pop))
    np.testing.assert_array_equal(new_fit, np.where(accept, tfit, fit))
    np.testing.assert_array_equal(best, np.argmin(new_fit, axis=1))
    assert best.dtype == np.int64
    for x, y in zip((new_pop, new_fit, best), _reference.de_select(pop, fit, trial, tfit)):
        np.testing.assert_array_equal(x, y)
    # float32 fitness works too, and all-NaN gives best 0
    f32 = np.full((3, 8), np.nan, np.float32)
    _, nf, b0 = kernels.de_select(pop, f32, trial, f32.copy())
    assert nf.dtype == np.float32 and np.all(b0 == 0)


def test_de_independent_of_batch_split_and_threads(rng):
    lo, hi = _bounds(rng, 6)
    ids = np.array([5, 1, 9, 100, 42, 7])
    args = dict(pixels=1, channels=C, height=H, width=W, seed=8)
    whole = kernels.de_init(ids, 30, lo=lo, hi=hi, **args)
    parts = [kernels.de_init(ids[a:b], 30, lo=lo[a:b], hi=hi[a:b], **args) for a, b in [(0, 2), (2, 6)]]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    margs = dict(generation=3, CR=0.5, height=H, width=W, seed=8)
    t_whole = kernels.de_mutate(whole, ids=ids, lo=lo, hi=hi, **margs)
    t_parts = [kernels.de_mutate(whole[a:b], ids=ids[a:b], lo=lo[a:b], hi=hi[a:b], **margs)
               for a, b in [(0, 3), (3, 6)]]
    np.testing.assert_array_equal(t_whole, np.concatenate(t_parts))
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = kernels.de_mutate(whole, ids=ids, lo=lo, hi=hi, **margs)
        kernels.set_num_threads(2)
        two = kernels.de_mutate(whole, ids=ids, lo=lo, hi=hi, **margs)
    finally:
        kernels.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, t_whole)


def test_de_with_torch_tensors(rng):
    lo, hi = _bounds(rng, 2)
    ids = torch.tensor([3, 4])
    pop = kernels.de_init(ids, 6, pixels=1, channels=C, height=H, width=W, lo=torch.from_numpy(lo),
                          hi=torch.from_numpy(hi), seed=2)
    assert isinstance(pop, torch.Tensor) and pop.dtype == torch.float32
    ref = kernels.de_init(ids.numpy(), 6, pixels=1, channels=C, height=H, width=W, lo=lo, hi=hi,
                          seed=2)
    np.testing.assert_array_equal(pop.numpy(), ref)
    trial = kernels.de_mutate(pop, ids=ids, generation=1, height=H, width=W, lo=lo, hi=hi, seed=2)
    assert isinstance(trial, torch.Tensor)
    np.testing.assert_array_equal(
        trial.numpy(),
        kernels.de_mutate(ref, ids=[3, 4], generation=1, height=H, width=W, lo=lo, hi=hi, seed=2),
    )
    images = torch.from_numpy(rng.normal(size=(2, C, H, W)).astype(np.float32))
    cand = kernels.de_write_candidates(images, trial)
    assert isinstance(cand, torch.Tensor) and cand.shape == (12, C, H, W)
    np.testing.assert_array_equal(cand.numpy(), kernels.de_write_candidates(images.numpy(), trial.numpy()))
    fit = torch.rand(2, 6)
    tfit = torch.rand(2, 6)
    new_pop, new_fit, best = kernels.de_select(pop, fit, trial, tfit)
    assert best.dtype == torch.int64 and isinstance(new_fit, torch.Tensor)
    ref_sel = kernels.de_select(pop.numpy(), fit.numpy(), trial.numpy(), tfit.numpy())
    for a, b in zip((new_pop, new_fit, best), ref_sel):
        np.testing.assert_array_equal(a.numpy(), b)


def test_decode_members(rng):
    members = np.array([[[3.7, 2.2, 1, 2, 3, 29.99, 0.0, 4, 5, 6]]], np.float32)
    x, y, v = kernels.decode_members(members, height=H, width=W, channels=C)
    np.testing.assert_array_equal(x, [[[3, 29]]])
    np.testing.assert_array_equal(y, [[[2, 0]]])
    np.testing.assert_array_equal(v, [[[[1, 2, 3], [4, 5, 6]]]])
    xt, yt, vt = kernels.decode_members(torch.from_numpy(members), height=H, width=W, channels=C)
    np.testing.assert_array_equal(xt.numpy(), x)
    np.testing.assert_array_equal(vt.numpy(), v)


def test_small_de_run_improves_fitness(rng):
    """A few generations of the DE loop find the brightest allowed pixel value."""
    b, p = 2, 20
    lo = np.zeros((b, 1), np.float32)
    hi = np.ones((b, 1), np.float32)
    ids = np.arange(b)
    pop = kernels.de_init(ids, p, pixels=1, channels=1, height=8, width=8, lo=lo, hi=hi, seed=0)
    fit = -pop[..., 2].astype(np.float64)  # minimise -value
    start = fit.min(axis=1)
    for gen in range(1, 15):
        trial = kernels.de_mutate(pop, ids=ids, generation=gen, height=8, width=8, lo=lo, hi=hi,
                                  seed=0)
        pop, fit, best = kernels.de_select(pop, fit, trial, -trial[..., 2].astype(np.float64))
    assert np.all(fit.min(axis=1) <= start)
    assert np.all(-fit[np.arange(b), best] > 0.95)

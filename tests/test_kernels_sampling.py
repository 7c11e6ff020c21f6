"""Poisson sampling and binomial thinning: statistics, exactness against the reference twin,
invariance to batch size and thread count, numpy and torch inputs.

Statistical tests use fixed seeds (so they are deterministic) and state their tolerance:
means and variances within 5 standard errors, goodness-of-fit p-values above 1e-4.
"""

import numpy as np
import pytest
import scipy.stats as st
import torch

from galguard import kernels
from galguard.kernels import _reference

# Every test here compares the compiled core with its reference twin: they need the core.
pytestmark = pytest.mark.usefixtures("core")

N_STAT = 200_000
LAMBDAS = [0.0, 1e-3, 0.5, 5.0, 30.0, 1e3, 1e5, 1e7]


def _mean_var_ok(x, mean, var, *, n_sigma=5.0):
    """Sample mean and variance within n_sigma standard errors of (mean, var).

    Standard errors: sqrt(var / n) for the mean; for the variance sqrt((mu4 - var^2) / n) with
    the Poisson fourth central moment mu4 = lam (1 + 3 lam), where var = lam.
    """
    n = x.size
    se_mean = np.sqrt(var / n)
    mu4 = var * (1.0 + 3.0 * var)
    se_var = np.sqrt((mu4 - var**2) / n)
    m, v = float(np.mean(x)), float(np.var(x, ddof=1))
    assert abs(m - mean) <= n_sigma * se_mean, (m, mean, se_mean)
    assert abs(v - var) <= n_sigma * se_var, (v, var, se_var)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_poisson_mean_and_variance(lam):
    x = kernels.poisson(np.full((20, N_STAT // 20), lam, dtype=np.float64), seed=2024)
    assert x.dtype == np.float64
    assert np.all(x == np.floor(x)) and np.all(x >= 0)
    if lam == 0.0:
        assert np.all(x == 0)
        return
    _mean_var_ok(x, lam, lam)


def _chi2_pvalue(samples, pmf, *, min_expected=5.0):
    """Chi-square goodness of fit, bins with expected count >= min_expected, tails lumped."""
    samples = np.ravel(samples)
    n = samples.size
    kmax = int(samples.max())
    support = np.arange(kmax + 1)
    expected = n * pmf(support)
    observed = np.bincount(samples.astype(np.int64), minlength=kmax + 1).astype(float)
    keep = expected >= min_expected
    lo, hi = support[keep].min(), support[keep].max()
    obs = np.concatenate([[observed[: lo + 1].sum()], observed[lo + 1 : hi], [observed[hi:].sum()]])
    exp_lo = n * pmf(np.arange(lo + 1)).sum()
    exp_hi = n - n * pmf(np.arange(hi)).sum()
    exp = np.concatenate([[exp_lo], expected[lo + 1 : hi], [exp_hi]])
    return st.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("lam", [0.05, 0.5, 3.0, 9.5, 10.0, 12.0, 30.0, 150.0])
def test_poisson_goodness_of_fit(lam):
    """Inversion (lam < 10) and PTRS (lam >= 10) against the Poisson pmf: p-value > 1e-4."""
    x = kernels.poisson(np.full((10, 10_000), lam, dtype=np.float32), seed=7, realisation=3)
    assert _chi2_pvalue(x, lambda k: st.poisson.pmf(k, lam)) > 1e-4


@pytest.mark.parametrize(
    ("n", "p"), [(20, 0.3), (1000, 0.004), (1000, 0.1), (50, 0.9), (400, 0.5), (10**6, 0.7)]
)
def test_binomial_goodness_of_fit(n, p):
    """Inversion (n q < 10), BTRS (n q >= 10) and the p > 1/2 flip: p-value > 1e-4."""
    k = kernels.binomial_thin(np.full((10, 10_000), n, dtype=np.int64), p, seed=11)
    assert k.dtype == np.int64
    assert _chi2_pvalue(k, lambda j: st.binom.pmf(j, n, p)) > 1e-4


@pytest.mark.parametrize(("n", "p"), [(2**31, 0.3), (2**31 - 1, 1e-9), (12_345_678, 0.999)])
def test_binomial_large_counts_mean_variance(n, p):
    counts = np.full((4, 50_000), n, dtype=np.float64)
    k = kernels.binomial_thin(counts, p, seed=5)
    mean, var = n * p, n * p * (1 - p)
    se_mean = np.sqrt(var / k.size)
    se_var = var * np.sqrt(2.0 / k.size) + np.sqrt(var / k.size)
    assert abs(k.mean() - mean) <= 5 * se_mean
    assert abs(k.var(ddof=1) - var) <= 5 * se_var
    assert np.all(k <= n) and np.all(k >= 0)


@pytest.mark.parametrize(("lam", "p"), [(50.0, 0.1), (2000.0, 0.3), (4.0, 0.5), (1e5, 0.9)])
def test_thinning_poisson_counts_gives_poisson(lam, p):
    """Binomial(Poisson(lam), p) is Poisson(p lam): mean and variance within 5 sigma."""
    counts = kernels.poisson(np.full((20, 10_000), lam, dtype=np.float32), seed=3)
    thin = kernels.binomial_thin(counts, p, seed=4)
    _mean_var_ok(thin, p * lam, p * lam)
    if p * lam < 200:
        assert _chi2_pvalue(thin, lambda k: st.poisson.pmf(k, p * lam)) > 1e-4


def test_thinning_never_exceeds_counts(rng):
    counts = np.concatenate(
        [rng.integers(0, 5, 3000), rng.integers(0, 10**4, 3000), rng.integers(0, 2**31, 3000)]
    ).reshape(9, 1000).astype(np.int64)
    for p in (1e-6, 0.01, 0.37, 0.5, 0.51, 0.99, 1.0):
        k = kernels.binomial_thin(counts, p, seed=8)
        assert np.all(k >= 0) and np.all(k <= counts)
    k = kernels.binomial_thin(counts, 1.0, seed=8)
    np.testing.assert_array_equal(k, counts)
    assert np.all(kernels.binomial_thin(np.zeros((2, 3), np.int32), 0.3, seed=0) == 0)


def test_binomial_per_element_p(rng):
    counts = np.full((3, 20_000), 1000, dtype=np.int32)
    p = np.array([0.1, 0.5, 0.9])[:, None]
    k = kernels.binomial_thin(counts, p, seed=1)
    np.testing.assert_allclose(k.mean(axis=1), [100, 500, 900], atol=5 * np.sqrt(250 / 20_000))
    # a full array of p equals the broadcast one
    k2 = kernels.binomial_thin(counts, np.broadcast_to(p, counts.shape).copy(), seed=1)
    np.testing.assert_array_equal(k, k2)


# ---------------------------------------------------------------------------------------------
# Exactness against the reference twin
# ---------------------------------------------------------------------------------------------
def _mixed_means(rng, n=6000):
    special = np.array([0.0, 1e-3, 0.5, 5.0, 9.999999, 10.0, 10.000001, 30.0, 1e3, 1e5, 1e7])
    lam = np.concatenate([special, 10 ** rng.uniform(-3, 7, n - special.size)])
    rng.shuffle(lam)
    return lam.reshape(6, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_poisson_matches_reference(rng, dtype):
    lam = _mixed_means(rng).astype(dtype)
    idx = np.array([3, 17, 2**32 - 1, 0, 99, 12345])
    a = kernels.poisson(lam, seed=2**64 - 5, index=idx, realisation=9)
    b = _reference.poisson(lam, seed=2**64 - 5, index=idx, realisation=9)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_binomial_matches_reference(rng, dtype):
    hi = 2**24 if dtype == np.float32 else 2**31 - 1
    counts = np.concatenate(
        [rng.integers(0, 30, 2000), rng.integers(0, 5000, 2000), rng.integers(0, hi, 2000)]
    )
    rng.shuffle(counts)
    counts = counts.reshape(6, -1).astype(dtype)
    p = rng.choice([1e-7, 1e-3, 0.2, 0.5, 0.5000001, 0.8, 1.0], size=counts.shape)
    a = kernels.binomial_thin(counts, p, seed=77, realisation=1)
    b = _reference.binomial_thin(counts, p, seed=77, realisation=1)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Invariance and determinism
# ---------------------------------------------------------------------------------------------
def test_poisson_independent_of_batch_split(rng):
    lam = _mixed_means(rng, 12_000).reshape(12, 10, 100)
    ids = np.arange(100, 112)
    whole = kernels.poisson(lam, seed=1, index=ids)
    parts = [kernels.poisson(lam[a:b], seed=1, index=ids[a:b]) for a, b in [(0, 5), (5, 6), (6, 12)]]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_binomial_independent_of_batch_split(rng):
    counts = rng.integers(0, 10**6, size=(9, 500)).astype(np.int64)
    whole = kernels.binomial_thin(counts, 0.25, seed=2)
    parts = [
        kernels.binomial_thin(counts[a:b], 0.25, seed=2, index=np.arange(a, b))
        for a, b in [(0, 1), (1, 7), (7, 9)]
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_independent_of_thread_count(rng):
    lam = _mixed_means(rng, 60_000)
    counts = rng.integers(0, 10**5, size=lam.shape).astype(np.int32)
    before = kernels.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            results.append(
                (kernels.poisson(lam, seed=5), kernels.binomial_thin(counts, 0.3, seed=5))
            )
    finally:
        kernels.set_num_threads(before)
    for a, b in results[1:]:
        np.testing.assert_array_equal(a, results[0][0])
        np.testing.assert_array_equal(b, results[0][1])


def test_seeds_and_realisations_differ():
    lam = np.full((2, 1000), 50.0)
    a = kernels.poisson(lam, seed=1)
    assert np.array_equal(a, kernels.poisson(lam, seed=1))
    assert not np.array_equal(a, kernels.poisson(lam, seed=2))
    assert not np.array_equal(a, kernels.poisson(lam, seed=1, realisation=1))
    # rows with different ids differ, rows with the same id are equal
    b = kernels.poisson(lam, seed=1, index=[4, 4])
    np.testing.assert_array_equal(b[0], b[1])
    assert not np.array_equal(a[0], a[1])


# ---------------------------------------------------------------------------------------------
# numpy and torch, layouts, no mutation
# ---------------------------------------------------------------------------------------------
def test_torch_and_numpy_agree(rng):
    lam = _mixed_means(rng).astype(np.float32)
    t = torch.from_numpy(lam.copy())
    out = kernels.poisson(t, seed=3)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), kernels.poisson(lam, seed=3))
    counts = torch.randint(0, 10**6, (4, 300), dtype=torch.int32)
    thin = kernels.binomial_thin(counts, torch.tensor(0.4, dtype=torch.float64), seed=3)
    assert thin.dtype == torch.int32
    np.testing.assert_array_equal(
        thin.numpy(), kernels.binomial_thin(counts.numpy(), 0.4, seed=3)
    )
    # a tensor p broadcast per row
    pt = torch.tensor([[0.1], [0.2], [0.3], [1.0]])
    thin2 = kernels.binomial_thin(counts, pt, seed=3)
    np.testing.assert_array_equal(
        thin2.numpy(), kernels.binomial_thin(counts.numpy(), pt.numpy(), seed=3)
    )


def test_inputs_not_mutated_and_noncontiguous(rng):
    lam = rng.uniform(0, 100, size=(8, 30))
    keep = lam.copy()
    out = kernels.poisson(lam, seed=1)
    np.testing.assert_array_equal(lam, keep)
    assert out is not lam
    # Fortran order and strided views give the same as their contiguous copies
    f = np.asfortranarray(lam)
    np.testing.assert_array_equal(kernels.poisson(f, seed=1), out)
    view = lam[:, ::2]
    np.testing.assert_array_equal(
        kernels.poisson(view, seed=1), kernels.poisson(np.ascontiguousarray(view), seed=1)
    )
    t = torch.from_numpy(lam).t()  # non-contiguous tensor
    np.testing.assert_array_equal(kernels.poisson(t, seed=1).numpy(), kernels.poisson(lam.T.copy(), seed=1))
    counts = rng.integers(0, 1000, size=(5, 7))
    ckeep = counts.copy()
    kernels.binomial_thin(counts, 0.5, seed=0)
    np.testing.assert_array_equal(counts, ckeep)
    # read-only arrays are accepted
    ro = lam.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(kernels.poisson(ro, seed=1), out)


def test_empty_and_multidimensional():
    e = kernels.poisson(np.zeros((0, 3)), seed=0)
    assert e.shape == (0, 3)
    x = kernels.poisson(np.full((2, 3, 4, 5), 7.0, np.float32), seed=0)
    assert x.shape == (2, 3, 4, 5)
    # element counter is the flat index within the row
    flat = kernels.poisson(np.full((2, 60), 7.0, np.float32), seed=0)
    np.testing.assert_array_equal(x.reshape(2, -1), flat)
    one_d = kernels.poisson(np.full(5, 7.0), seed=0)  # (N,): rows of one element
    assert one_d.shape == (5,)


def test_parity_in_edge_regimes():
    """Where the vectorised CPU passes hand over to the scalar code (PTRS proposals below 10,
    BTRS tails below 10, inversion near the thresholds): identical to the reference."""
    rng = np.random.default_rng(42)
    lam = np.concatenate(
        [rng.uniform(9.5, 12, 150_000), rng.uniform(0, 10, 50_000), 10 ** rng.uniform(1, 7, 50_000)]
    ).reshape(25, -1)
    np.testing.assert_array_equal(kernels.poisson(lam, seed=5), _reference.poisson(lam, seed=5))
    n = np.concatenate(
        [rng.integers(18, 25, 100_000), rng.integers(0, 200, 100_000), rng.integers(0, 2**31, 50_000)]
    ).astype(np.int64).reshape(25, -1)
    p = np.concatenate(
        [rng.uniform(0.4, 0.6, 100_000), rng.uniform(1e-9, 1, 100_000), rng.uniform(1e-9, 1, 50_000)]
    ).reshape(25, -1)
    np.testing.assert_array_equal(
        kernels.binomial_thin(n, p, seed=5), _reference.binomial_thin(n, p, seed=5)
    )

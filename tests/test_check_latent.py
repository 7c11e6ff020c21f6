"""Tests of the latent-space metrics (galguard.robustness.latent)."""

import numpy as np
import pytest
import torch

from galguard.errors import GalguardValueError
from galguard.robustness import get_latent_stats, latent_shift, ood_score


def test_latent_shift_euclidean_and_normalised():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    zp = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert torch.allclose(latent_shift(z, zp), torch.tensor([5.0, 0.0]))
    assert torch.allclose(latent_shift(z, zp, scale=2.5), torch.tensor([2.0, 0.0]))
    stack = torch.stack([zp, z])
    assert latent_shift(z, stack).shape == (2, 2)
    with pytest.raises(GalguardValueError, match=r"perturbed must have shape \(2, 2\)"):
        latent_shift(z, torch.zeros(3, 2))
    with pytest.raises(GalguardValueError, match="scale must be a positive finite number, got 0.0"):
        latent_shift(z, zp, scale=0.0)


def test_ood_score_is_near_one_in_distribution_and_large_far_away():
    rng = np.random.default_rng(0)
    D, K, n = 16, 3, 4000
    means = rng.normal(0, 5, (K, D))
    labels = rng.integers(0, K, n)
    z = means[labels] + rng.normal(0, 1, (n, D))
    stats = {"class_means": torch.tensor(means, dtype=torch.float32),
             "precision": torch.eye(D), "centroid_separation": torch.tensor(7.0)}
    s = ood_score(torch.tensor(z, dtype=torch.float32), stats)
    # min over classes of chi2_D / D: mean ~1 (slightly below because of the min); tolerance 0.05.
    assert abs(float(s.pow(2).mean()) - 1.0) < 0.05
    far = torch.tensor(means[0] + 10.0, dtype=torch.float32)[None]
    assert float(ood_score(far, stats)[0]) > 5.0
    # Mahalanobis, not Euclidean: a precision of 4 doubles the score.
    stats4 = dict(stats, precision=4 * torch.eye(D))
    torch.testing.assert_close(ood_score(far, stats4), 2 * ood_score(far, stats))
    with pytest.raises(GalguardValueError, match=r"latent_stats must have class_means \(K, 5\)"):
        ood_score(torch.zeros(2, 5), stats)


def test_get_latent_stats():
    assert get_latent_stats(torch.nn.Linear(2, 2)) is None

    class M(torch.nn.Module):
        latent_stats = {"class_means": torch.zeros(2, 2)}

    with pytest.raises(GalguardValueError, match="model.latent_stats must hold"):
        get_latent_stats(M())

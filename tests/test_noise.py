"""Tests of shallower-depth noise realisations and noise stability (galguard.robustness.noise)."""

import numpy as np
import pytest
import torch

from galguard.errors import GalguardValueError
from galguard.robustness import degrade, noise_stability

GAIN = 2.0
SKY = 50.0


def flat(n=4, c=2, h=32, w=32, value=30.0):
    return torch.full((n, c, h, w), value, dtype=torch.float32)


def test_thin_with_p1_returns_the_rounded_counts():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=g) * 100
    out = degrade(x, gain=GAIN, sky=SKY, p=1.0, seed=1)
    expected = torch.round(GAIN * (x.double() + SKY)) / GAIN - SKY
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-4)
    # Rounding is the only change: at most half an electron.
    assert float((out - x).abs().max()) <= 0.5 / GAIN + 1e-4


def test_thin_statistics():
    # k = g (f + s) = 160 electrons; k' ~ Bin(160, 0.1): mean 16, variance 14.4.
    # f' = k' / (g p) - s: mean f = 30, variance 14.4 / 0.2^2 = 360.
    x = flat(n=4, c=2, h=64, w=64)
    out = degrade(x, gain=GAIN, sky=SKY, p=0.1, seed=7).double()
    n = out.numel()
    mean, var = float(out.mean()), float(out.var())
    # Tolerance 5 sigma: sd of the mean sqrt(360 / n); sd of the variance ~ 360 sqrt(2 / n).
    assert abs(mean - 30.0) < 5 * np.sqrt(360.0 / n)
    assert abs(var - 360.0) < 5 * 360.0 * np.sqrt(2.0 / n)
    # Values lie on the lattice k' / (g p) - s with k' in [0, 160].
    k = (out + SKY) * GAIN * 0.1
    assert torch.allclose(k, torch.round(k), atol=1e-3)
    assert float(k.min()) >= 0 and float(k.max()) <= 160


def test_poisson_mode_statistics():
    # Additive approximation: mean f, extra variance (f + s)(1/p - 1)/g = 80 * 9 / 2 = 360.
    x = flat(n=4, c=2, h=64, w=64)
    out = degrade(x, gain=GAIN, sky=SKY, p=0.1, mode="poisson", seed=3).double()
    n = out.numel()
    assert abs(float(out.mean()) - 30.0) < 5 * np.sqrt(360.0 / n)
    assert abs(float(out.var()) - 360.0) < 5 * 360.0 * np.sqrt(2.0 / n)


def test_per_band_gain_and_sky():
    x = flat(n=2, c=2, h=64, w=64, value=0.0)
    gain = np.array([[1.0, 4.0], [1.0, 4.0]])
    sky = np.array([100.0, 25.0])  # both bands: 100 electrons
    out = degrade(x, gain=gain, sky=sky, p=0.5, seed=5).double()
    # var f' = k p (1 - p) / (g p)^2 = k (1 - p) / (g^2 p): band 0: 100; band 1: 100 / 16.
    n = out[:, 0].numel()
    for band, var in ((0, 100.0), (1, 6.25)):
        assert abs(float(out[:, band].var()) - var) < 5 * var * np.sqrt(2.0 / n)


def test_determinism_index_and_realisations():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 2, 8, 8, generator=g) * 50
    a = degrade(x, gain=GAIN, sky=SKY, seed=11)
    b = degrade(x, gain=GAIN, sky=SKY, seed=11)
    assert torch.equal(a, b)
    # Rows 4 and 2 alone, keyed by their global index, give the same draws.
    sub = torch.tensor([4, 2])
    c = degrade(x[sub], gain=GAIN, sky=SKY, seed=11, index=sub)
    assert torch.equal(c, a[sub])
    # Another realisation or seed differs.
    assert not torch.equal(degrade(x, gain=GAIN, sky=SKY, seed=11, realisation=1), a)
    assert not torch.equal(degrade(x, gain=GAIN, sky=SKY, seed=12), a)


def test_inputs_not_modified():
    x = flat()
    gain = np.full((4, 2), GAIN)
    before, gbefore = x.clone(), gain.copy()
    degrade(x, gain=gain, sky=SKY, seed=0)
    degrade(x, gain=gain, sky=SKY, seed=0, mode="poisson")
    assert torch.equal(x, before) and np.array_equal(gain, gbefore)


@pytest.mark.parametrize("kwargs, match", [
    (dict(p=0.0), r"p must be in \(0, 1\], got 0.0"),
    (dict(p=1.5), r"p must be in \(0, 1\], got 1.5"),
    (dict(p="x"), r"p must be a number in \(0, 1\], got 'x'"),
    (dict(mode="gauss"), "mode must be one of .* got 'gauss'"),
    (dict(gain=0.0), "gain must be finite and > 0"),
    (dict(gain=[1.0, 2.0, 3.0]), r"gain must be a scalar, \(2,\) or \(4, 2\), got shape \(3,\)"),
    (dict(sky=float("nan")), "sky must be finite"),
    (dict(index=[0, 1]), r"index must have shape \(4,\), got \(2,\)"),
])
def test_degrade_bad_arguments(kwargs, match):
    args = dict(gain=GAIN, sky=SKY)
    args.update(kwargs)
    with pytest.raises(GalguardValueError, match=match):
        degrade(flat(), **args)


def test_degrade_bad_images():
    with pytest.raises(GalguardValueError, match=r"images must be a \(N, C, H, W\) torch.Tensor, got \(3, 4\)"):
        degrade(torch.zeros(3, 4), gain=1.0, sky=0.0)


class MeanThreshold(torch.nn.Module):
    """Class 1 when the image mean exceeds `t`; latent = the mean (D = 1)."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        logits = torch.stack([torch.zeros_like(m), 50.0 * (m - self.t)], dim=1)
        return m[:, None], logits


def test_noise_stability_matches_a_manual_computation():
    g = torch.Generator().manual_seed(2)
    x = 30.0 + torch.randn(6, 1, 4, 4, generator=g)
    model = MeanThreshold(30.0)
    model.train()
    res = noise_stability(model, x, gain=GAIN, sky=SKY, p=0.1, realisations=5, seed=9,
                          batch_size=4)
    assert model.training
    with torch.no_grad():
        lat0, logit0 = model(x)
        p0 = torch.softmax(logit0, 1)
        pred = p0.argmax(1)
        flips, drops, shifts = [], [], []
        for r in range(5):
            lat, logit = model(degrade(x, gain=GAIN, sky=SKY, p=0.1, seed=9, realisation=r))
            p = torch.softmax(logit, 1)
            flips.append((p.argmax(1) != pred).float())
            drops.append(p0.gather(1, pred[:, None])[:, 0] - p.gather(1, pred[:, None])[:, 0])
            shifts.append((lat - lat0).abs()[:, 0])
    torch.testing.assert_close(res.flip_rate, torch.stack(flips).mean(0))
    torch.testing.assert_close(res.prob_drop, torch.stack(drops).mean(0))
    torch.testing.assert_close(res.latent_shift, torch.stack(shifts).mean(0))
    assert torch.equal(res.pred_label, pred)
    # A threshold at the noise-free mean flips a good fraction of realisations.
    assert float(res.flip_rate.mean()) > 0.1


def test_noise_stability_stable_model_and_bare_logits():
    x = flat(n=3, c=1, h=4, w=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    res = noise_stability(model, x, gain=GAIN, sky=SKY, realisations=3)
    assert torch.equal(res.flip_rate, torch.zeros(3))
    assert torch.allclose(res.prob_drop, torch.zeros(3))
    assert torch.isnan(res.latent_shift).all()  # no latent from a bare-logits model


def test_noise_stability_bad_arguments():
    model = MeanThreshold(0.0)
    with pytest.raises(GalguardValueError, match="realisations must be an integer >= 1, got 0"):
        noise_stability(model, flat(), gain=1.0, sky=0.0, realisations=0)
    with pytest.raises(GalguardValueError, match="batch_size must be an integer >= 1, got 0"):
        noise_stability(model, flat(), gain=1.0, sky=0.0, batch_size=0)

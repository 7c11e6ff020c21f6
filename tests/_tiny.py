"""Tiny test data and model shared by the test modules: blob-like 3-band cutouts and an
untrained ConvNet classifier whose batch-norm and latent statistics come from them."""

import numpy as np
import torch

from galguard.models.classifier import GalaxyClassifier, Preprocess, fit_latent_stats
from galguard.models.networks import ConvNet

SIZE = 16


def galaxies(n, seed=0):
    """Blob-like cutouts (n, 3, SIZE, SIZE) in electron/s with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        width, amp, ell = rng.uniform(1.5, 4.0), rng.uniform(20, 200), rng.uniform(0.3, 1.0)
        prof = amp * np.exp(-(xx ** 2 + (yy / ell) ** 2) / (2 * width ** 2))
        for b in range(3):
            out[i, b] = prof * (0.6 + 0.3 * b) + rng.normal(0, 2.0, (SIZE, SIZE))
    return out


def tiny_classifier(x, *, name, latent_dim=8, tweak=None, **kwargs):
    """An untrained ConvNet classifier for images ``x`` (N, 3, H, W): batch-norm statistics and
    latent statistics (labels ``i % 3``) taken from ``x``; ``tweak(model)`` may edit the weights
    in between."""
    torch.manual_seed(0)
    net = ConvNet(in_channels=3, n_classes=3, input_size=x.shape[-1], latent_dim=latent_dim)
    m = GalaxyClassifier(net, Preprocess.from_data(x), classes=("spiral", "elliptical", "merger"),
                         bands="gri", input_size=x.shape[-1], name=name, **kwargs)
    with torch.no_grad():
        m.train()
        m(torch.from_numpy(x))  # batch-norm statistics on the scale of the data
        m.eval()
        if tweak is not None:
            tweak(m)
        lat, _ = m(torch.from_numpy(x))
    m.set_latent_stats(fit_latent_stats(lat.numpy(), np.arange(len(x)) % 3, 3))
    return m


def fragile_classifier(x, *, name="fragile", **kwargs):
    """`tiny_classifier` with its class logits scaled up and centred on ``x``, so that single
    pixels and shallower-depth noise flip a good share of its predictions."""
    import torch

    def sharpen(m):
        m.network.classifier.weight.mul_(30.0)
        _, logits = m(torch.from_numpy(x))
        m.network.classifier.bias.sub_(logits.mean(0))

    return tiny_classifier(x, name=name, tweak=sharpen, **kwargs)

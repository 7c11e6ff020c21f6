"""Incremental evaluation of one-pixel candidates (galguard.robustness._incremental)."""

import numpy as np
import pytest
import torch

from galguard.models.classifier import GalaxyClassifier, Preprocess
from galguard.models.networks import ConvNet, ResNet18
from galguard.robustness import OnePixelAttack
from galguard.robustness._incremental import IncrementalEvaluator


def make_model(size, net=ConvNet, seed=0):
    torch.manual_seed(seed)
    network = net(in_channels=3, n_classes=3, input_size=size, latent_dim=16)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in network.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 5.0, (8, 3, size, size)).astype(np.float32) - 3.0
    model = GalaxyClassifier(network, Preprocess.from_data(data), classes=("a", "b", "c"),
                             bands="gri", input_size=size).eval()
    return model, torch.from_numpy(data)


@pytest.mark.parametrize("size", [16, 27, 40])
def test_incremental_logits_match_the_full_model(size):
    model, images = make_model(size)
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, images)
        assert inc is not None
        g = torch.Generator().manual_seed(1)
        n = 300
        b = torch.randint(0, len(images), (n,), generator=g)
        ys = torch.randint(0, size, (n,), generator=g)
        xs = torch.randint(0, size, (n,), generator=g)
        ys[:20], xs[20:40], ys[40:60], xs[60:80] = 0, 0, size - 1, size - 1  # edges, corners
        vals = torch.rand(n, 3, generator=g) * 60 - 5
        fast = inc.logits(b, ys, xs, vals)
        adv = images[b].clone()
        adv[torch.arange(n), :, ys, xs] = vals
        full = model(adv)[1]
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_unsupported_models_fall_back():
    model, images = make_model(32, net=ResNet18)
    with torch.inference_mode():
        assert IncrementalEvaluator.build(model, images) is None
        assert IncrementalEvaluator.build(torch.nn.Linear(3, 3), images) is None


def test_attack_agrees_with_and_without_incremental_evaluation():
    model, images = make_model(16, seed=1)
    with torch.no_grad():
        # Centre the logits on these images: near ties, so some flip and some do not.
        model.network.classifier.bias.sub_(model(images)[1].mean(0))
        labels = model(images)[1].argmax(1)
    kw = dict(popsize=30, max_iter=15, seed=2)
    a = OnePixelAttack(model, incremental=True, **kw)(images, labels)
    b = OnePixelAttack(model, incremental=False, **kw)(images, labels)
    assert a.success.any() and not a.success.all()
    # Both re-verify with the full model; fitness values agree to float rounding, so the
    # searches coincide.
    for name in ("success", "x", "y", "queries", "generations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.values, b.values)

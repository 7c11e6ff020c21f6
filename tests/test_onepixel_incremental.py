"""Delta inference of one- and k-pixel candidates (galguard.robustness._incremental)."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from galguard.models.classifier import GalaxyClassifier, Preprocess
from galguard.models.networks import ConvNet, ResNet18
from galguard.models.wrap import wrap
from galguard.robustness import OnePixelAttack
from galguard.robustness._incremental import IncrementalEvaluator, plan_model


def _randomise_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return module


def make_model(size, net=ConvNet, seed=0, **kw):
    torch.manual_seed(seed)
    network = _randomise_bn(net(in_channels=3, n_classes=3, input_size=size, latent_dim=16,
                                **kw), seed)
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 5.0, (8, 3, size, size)).astype(np.float32) - 3.0
    model = GalaxyClassifier(network, Preprocess.from_data(data), classes=("a", "b", "c"),
                             bands="gri", input_size=size).eval()
    return model, torch.from_numpy(data)


def candidates(n, k, B, H, W, seed=1, lo=-5.0, hi=55.0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, B, (n,), generator=g)
    ys = torch.randint(0, H, (n, k), generator=g)
    xs = torch.randint(0, W, (n, k), generator=g)
    # edges and all four corners
    ys[:8, 0], xs[8:16, 0], ys[16:24, 0], xs[24:32, 0] = 0, 0, H - 1, W - 1
    ys[32, 0], xs[32, 0], ys[33, 0], xs[33, 0] = 0, W - 1, H - 1, 0
    vals = torch.rand(n, k, 3, generator=g) * (hi - lo) + lo
    return b, ys, xs, vals


def full_logits(model, images, b, ys, xs, vals):
    adv = images[b].clone()
    for j in range(ys.shape[1]):
        adv[torch.arange(len(b)), :, ys[:, j], xs[:, j]] = vals[:, j]
    out = model(adv)
    return out[1] if isinstance(out, (tuple, list)) else out


def check_equal(model, images, k=1, n=120, tol=1e-5):
    B, _, H, W = images.shape
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, images, pixels=k)
        assert inc is not None
        b, ys, xs, vals = candidates(n, k, B, H, W)
        fast = inc.logits(b, ys, xs, vals) if k > 1 else inc.logits(b, ys[:, 0], xs[:, 0],
                                                                      vals[:, 0])
        full = full_logits(model, images, b, ys, xs, vals)
    scale = float(full.abs().max()) + 1.0
    torch.testing.assert_close(fast, full, rtol=0.0, atol=tol * scale)
    return inc


# ---------------------------------------------------------------------------------------------
class Plain(nn.Module):
    """A plain module: (N, 3, H, W) images -> logits, the layers under test in between."""

    def __init__(self, body, channels, pool="adaptive"):
        super().__init__()
        self.body = body
        self.pool = pool
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        h = self.body(x)
        if self.pool == "adaptive":
            h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        else:
            h = h.mean(dim=(2, 3))
        return self.head(h)


def plain(body, channels, H=23, W=19, seed=0, pool="adaptive"):
    torch.manual_seed(seed)
    model = _randomise_bn(Plain(body, channels, pool), seed).eval()
    images = torch.rand(5, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 50 - 5
    return model, images


CONV_CASES = {
    "stride2": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU()),
    "stride3_k5_pad0": lambda: nn.Sequential(nn.Conv2d(3, 6, 5, stride=3), nn.GELU()),
    "dilation2": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=2, dilation=2), nn.SiLU()),
    "same_even_kernel": lambda: nn.Sequential(nn.Conv2d(3, 6, 4, padding="same"), nn.Tanh()),
    "asymmetric_kernel": lambda: nn.Sequential(nn.Conv2d(3, 6, (3, 5), padding=(1, 2)),
                                               nn.LeakyReLU(0.1)),
    "groups": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1,
                                                                             groups=2),
                                    nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Sigmoid()),
    "batchnorm": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(6), nn.ReLU6()),
    "maxpool3s2p1": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1),
                                          nn.MaxPool2d(3, stride=2, padding=1)),
    "maxpool2": lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.MaxPool2d(2)),
    "avgpool": lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1),
                                     nn.AvgPool2d(3, stride=1, padding=1), nn.AvgPool2d(2)),
    "strided_stack": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ELU(),
                                           nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.GELU(),
                                           nn.Conv2d(8, 8, 1)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("k", [1, 3])
def test_each_spatial_op_matches_the_full_forward(case, k):
    model, images = plain(CONV_CASES[case](), 8 if case == "strided_stack" else 6)
    inc = check_equal(model, images, k=k)
    assert inc.windowed >= 2


class Residual(nn.Module):
    """Strided residual blocks with a projection, a concatenation of branches, functional
    convolutions and preprocessing (arcsinh of scaled, clamped flux)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.02, 0.03, 0.05]).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 8, 5, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1, stride=2)
        self.w = nn.Parameter(torch.randn(4, 16, 3, 3) * 0.2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.asinh(torch.clamp(x, -10.0, 80.0) * self.scale) - 0.5
        x = F.gelu(self.bn(self.stem(x)))
        y = self.c2(torch.relu(self.b1(self.c1(x))))
        x = torch.relu(y + self.proj(x))
        x = torch.cat([x, torch.tanh(x) * 2.0], dim=1)
        x = F.conv2d(x, self.w, None, 1, 1)
        return self.head(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("shape", [(24, 24), (25, 21)])
def test_residual_joins_concatenation_and_preprocessing(k, shape):
    torch.manual_seed(0)
    model = _randomise_bn(Residual()).eval()
    images = torch.rand(4, 3, *shape, generator=torch.Generator().manual_seed(2)) * 90 - 10
    inc = check_equal(model, images, k=k)
    kinds = {p.kind for p in inc.plans.values() if p.mode == "window"}
    assert {"conv", "join", "cat", "pointwise"} <= kinds


@pytest.mark.parametrize("size", [16, 27, 40])
def test_convnet_is_one_case(size):
    model, images = make_model(size)
    inc = check_equal(model, images, n=300)
    if size >= 40:  # (below, the last pool's window covers its whole map: dense)
        # the bottleneck is applied to the windows (no flatten of the whole map per candidate)
        assert [p.kind for p in inc.plans.values() if p.kind == "flatlin"] == ["flatlin"]
        assert all(p.mode == "window" for n, p in inc.plans.items()
                   if n.op == "call_module" and n.target.startswith("net.features"))
    check_equal(model, images, k=2, n=60)


def test_resnet18_matches_and_stops_windowing_where_the_window_fills_the_map(caplog):
    model, images = make_model(64, net=ResNet18, width=4)
    with caplog.at_level(logging.INFO, logger="galguard.robustness._incremental"):
        inc = check_equal(model, images, n=60)
    modes = [p.mode for n, p in inc.plans.items() if n.op == "call_module"]
    assert modes[0] == "window" and modes[-1] == "dense"
    assert any("full forward runs from node" in r.message for r in caplog.records)


class Roll(nn.Module):
    """An op delta inference does not know (torch.roll moves every pixel)."""

    def forward(self, x):
        return torch.roll(x, shifts=3, dims=3)


def test_unknown_op_falls_back_from_that_node_on(caplog):
    body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), Roll(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
    model, images = plain(body, 6, pool="mean")
    with caplog.at_level(logging.INFO, logger="galguard.robustness._incremental"):
        inc = check_equal(model, images)
    plans = {n.name: p for n, p in inc.plans.items()}
    assert plans["body_0"].mode == "window" and plans["body_1"].mode == "window"
    assert plans["roll"].mode == "dense" and plans["body_3"].mode == "dense"
    msgs = [r.message for r in caplog.records if "'roll'" in r.message]
    assert len(msgs) == 1


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = h * 2
        return self.head(h.mean(dim=(2, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_matches_the_full_forward_and_the_cpu():
    model, images = make_model(40, net=ResNet18, width=4)
    cpu = check_equal(model, images, n=60)
    model, images = model.cuda(), images.cuda()
    gpu = check_equal(model, images, n=60, tol=1e-4)
    b, ys, xs, vals = candidates(60, 1, *images.shape[:1], *images.shape[2:])
    with torch.inference_mode():
        a = cpu.logits(b, ys[:, 0], xs[:, 0], vals[:, 0])
        g = gpu.logits(b.cuda(), ys[:, 0].cuda(), xs[:, 0].cuda(), vals[:, 0].cuda()).cpu()
    torch.testing.assert_close(a, g, rtol=1e-4, atol=1e-4 * (float(a.abs().max()) + 1))


def test_untraceable_model_uses_the_full_path():
    model = Branchy().eval()
    images = torch.rand(3, 3, 12, 12)
    with torch.inference_mode():
        assert IncrementalEvaluator.build(model, images) is None
    r = OnePixelAttack(model, popsize=8, max_iter=2, seed=0)(images, torch.zeros(3, dtype=int))
    assert r.queries.min() > 0


class Counting(nn.Module):
    """A forward with side effects (a counter, a list): tracing must not leave proxies."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.count = 0
        self.seen = []

    def forward(self, x):
        self.count += x.shape[0]
        self.seen.append(self.training)
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_tracing_leaves_the_model_as_it_was():
    model = Counting().eval()
    images = torch.rand(3, 3, 12, 12)
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, images)
    assert inc is not None
    # only the probe's real forward ran; the traced graph does not count
    assert model.count == 6 and model.seen == [False]
    assert isinstance(model.count, int)


def test_tracing_while_another_thread_runs_the_model():
    """torch.fx patches nn.Module.__call__ process-wide while tracing: a model checked in
    another thread (Dask worker threads) must run as usual meanwhile."""
    import threading

    model, images = make_model(16)
    with torch.inference_mode():
        ref = model(images)[1]
    errors, stop = [], threading.Event()

    def run():
        try:
            with torch.inference_mode():
                while not stop.is_set():
                    out = model(images)[1]
                    assert isinstance(out, torch.Tensor) and torch.equal(out, ref)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        with torch.inference_mode():
            for _ in range(20):
                plan_model(model, (3, 16, 16))
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_model_without_spatial_ops_gains_nothing():
    images = torch.rand(2, 3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3)).eval()
    with torch.inference_mode():
        assert IncrementalEvaluator.build(model, images) is None


def test_wrapped_user_model_with_latent_layer():
    body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    module, images = plain(body, 6, H=20, W=20)
    model = wrap(module, classes="abc", bands="gri", input_size=20, latent_layer="body")
    check_equal(model.eval(), images)
    assert model.network._captured == []
    r = OnePixelAttack(model, popsize=10, max_iter=3, seed=0)(images, torch.zeros(5, dtype=int))
    assert len(model.network._captured) <= 1  # the hook's captures do not pile up
    assert r.success.shape == (5,)


def test_probe_rejects_a_wrong_plan(monkeypatch):
    model, images = make_model(16)
    import galguard.robustness._plan as inc_mod

    real = inc_mod._conv_interval

    def too_small(lo, hi, **kw):  # a planner bug: windows one row too short
        a, b = real(lo, hi, **kw)
        return a, np.maximum(a, b - 1)

    monkeypatch.setattr(inc_mod, "_conv_interval", too_small)
    with torch.inference_mode():
        assert IncrementalEvaluator.build(model, images) is None


def test_candidates_are_deterministic_and_independent_of_the_chunk():
    model, images = make_model(48, net=ResNet18, width=4, seed=3)
    B, _, H, W = images.shape
    b, ys, xs, vals = candidates(64, 1, B, H, W)
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, images)
        a = inc.logits(b, ys[:, 0], xs[:, 0], vals[:, 0])
        again = inc.logits(b, ys[:, 0], xs[:, 0], vals[:, 0])
        halves = torch.cat([inc.logits(b[s:s + 32], ys[s:s + 32, 0], xs[s:s + 32, 0],
                                       vals[s:s + 32, 0]) for s in (0, 32)])
        other = IncrementalEvaluator.build(model, images[[2, 0, 1, 3, 4, 5, 6, 7]])
        perm = torch.tensor([1, 2, 0, 3, 4, 5, 6, 7])
        moved = other.logits(perm[b], ys[:, 0], xs[:, 0], vals[:, 0])
    assert torch.equal(a, again)
    torch.testing.assert_close(a, halves, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a, moved, rtol=1e-6, atol=1e-6)


def test_cached_activation_memory_is_bounded_by_grouping():
    model, images = make_model(16, seed=1)
    with torch.no_grad():
        model.network.classifier.bias.sub_(model(images)[1].mean(0))
        labels = model(images)[1].argmax(1)
    plan = plan_model(model, (3, 16, 16))
    per_image = sum(p.cache_bytes() for p in plan[1].values())
    kw = dict(popsize=20, max_iter=8, seed=2)
    whole = OnePixelAttack(model, **kw)(images, labels)
    grouped = OnePixelAttack(model, cache_mb=2.5 * per_image / 2**20, **kw)(images, labels)
    for name in ("success", "x", "y", "queries", "generations", "label"):
        assert torch.equal(getattr(whole, name), getattr(grouped, name)), name
    torch.testing.assert_close(whole.probs, grouped.probs)


@pytest.mark.parametrize("pixels", [1, 3])
def test_attack_agrees_with_and_without_incremental_evaluation(pixels):
    model, images = make_model(16, seed=1)
    with torch.no_grad():
        # Centre the logits on these images: near ties, so some flip and some do not.
        model.network.classifier.bias.sub_(model(images)[1].mean(0))
        labels = model(images)[1].argmax(1)
    kw = dict(popsize=30, max_iter=15, seed=2, pixels=pixels)
    a = OnePixelAttack(model, incremental=True, **kw)(images, labels)
    b = OnePixelAttack(model, incremental=False, **kw)(images, labels)
    assert a.success.any() and not a.success.all()
    # Both re-verify with the full model; fitness values agree to float rounding, so the
    # searches coincide.
    for name in ("success", "x", "y", "queries", "generations"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.values, b.values)


# ---------------------------------------------------------------------------------------------
PY, PX, PBAND = 19, 9, 1


class PlantedResNet(nn.Module):
    """A ResNet18 (width 4) whose logits are damped, plus a planted weak pixel: class 1 wins
    only when band PBAND at (PY, PX) is pushed near the band's maximum (a narrow and a broad
    Gaussian detector, as in test_onepixel's Planted, here as a convolution, a ReLU and a sum
    over the map)."""

    def __init__(self, size):
        super().__init__()
        self.resnet = _randomise_bn(ResNet18(in_channels=3, n_classes=2, input_size=size,
                                             latent_dim=8, width=4))
        yy, xx = np.mgrid[-4:5, -4:5]
        d2 = yy ** 2 + xx ** 2
        k = np.exp(-d2 / (2 * 0.7 ** 2)) + 0.25 * np.exp(-d2 / (2 * 2.0 ** 2))
        w = np.zeros((1, 3, 9, 9), np.float32)
        w[0, PBAND] = k
        self.detect = nn.Conv2d(3, 1, 9, padding=4, bias=False)
        with torch.no_grad():
            self.detect.weight.copy_(torch.from_numpy(w))
        mask = torch.zeros(1, 1, size, size)
        mask[..., PY, PX] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        latent, logits = self.resnet(x)
        s = (self.detect(x) * self.mask).sum(dim=(1, 2, 3))
        planted = torch.stack([torch.zeros_like(s), 8.0 * (s - 0.9)], dim=1)
        return latent, 0.001 * logits + planted


def test_planted_weakness_is_found_on_a_resnet18():
    size = 40
    torch.manual_seed(0)
    model = PlantedResNet(size).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, size, size, generator=g)
    images[:, :, PY - 6:PY + 7, PX - 6:PX + 7] = 0.0
    images[:, :, 0, 0] = 1.0
    labels = torch.zeros(4, dtype=torch.int64)
    with torch.inference_mode():
        assert (model(images)[1].argmax(1) == 0).all()
        inc = IncrementalEvaluator.build(model, images)
    assert inc is not None and inc.windowed > 10
    kw = dict(popsize=40, max_iter=40, seed=3, bounds=(0.0, 1.0))
    res = OnePixelAttack(model, **kw)(images, labels, return_images=True)
    assert res.success.all()
    assert (res.x == PX).all() and (res.y == PY).all()
    full = OnePixelAttack(model, incremental=False, **kw)(images, labels)
    for name in ("success", "x", "y", "queries", "generations"):
        assert torch.equal(getattr(res, name), getattr(full, name)), name


@pytest.mark.parametrize("contiguous", [True, False])
def test_window_writes_put_each_window_at_its_offset(contiguous):
    """`_write_inside` and `_write` (the scatter for contiguous regions, indexing otherwise):
    each window at its own offset, the rest of the region untouched; `_write`'s entries
    outside the region go to the trash row and column only."""
    from galguard.robustness._incremental import _write, _write_inside

    g = torch.Generator().manual_seed(3)
    n, C, R, S, h, w = 6, 4, 9, 8, 3, 2
    region = torch.randn(n, C, R, S + 1, generator=g)[..., :S]
    if contiguous:
        region = region.contiguous()
    win = torch.randn(n, C, h, w, generator=g)
    dy = torch.randint(0, R - h + 1, (n,), generator=g)
    dx = torch.randint(0, S - w + 1, (n,), generator=g)
    want = region.clone()
    for i in range(n):
        want[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] = win[i]
    got = _write_inside(region.clone(), win, dy, dx)
    assert torch.equal(got, want)
    # offsets past every border: in-region entries written, the others in the trash only
    dy2 = torch.tensor([-2, -1, 0, R - 3, R - 2, 4])
    dx2 = torch.tensor([-1, 0, S - 2, S - 1, 3, -2])
    got = _write(region.clone(), win, dy2, dx2)
    want = region.clone()
    for i in range(n):
        for a in range(h):
            for b in range(w):
                y, x = int(dy2[i]) + a, int(dx2[i]) + b
                if 0 <= y < R - 1 and 0 <= x < S - 1:
                    want[i, :, y, x] = win[i, :, a, b]
    assert torch.equal(got[:, :, :R - 1, :S - 1], want[:, :, :R - 1, :S - 1])


@pytest.mark.parametrize("images", [1, 3])
def test_clean_regions_are_read_at_each_offset(images):
    """`IncrementalEvaluator._region`: the padded clean map's block at each (gy, gx), for the
    boxes of one image (one gather) and of several (indexing)."""
    import types

    g = torch.Generator().manual_seed(images)
    B, C, Hp, Wp, h, w = 3, 5, 11, 9, 4, 3
    spec = (2, 1, 1, 2, 0.0)
    maps = torch.randn(B, C, Hp, Wp, generator=g)
    n = 7
    b = torch.randint(0, images, (n,), generator=g)
    gy = torch.randint(-spec[0], Hp - spec[0] - h + 1, (n,), generator=g)
    gx = torch.randint(-spec[2], Wp - spec[2] - w + 1, (n,), generator=g)
    fake = types.SimpleNamespace(padded={("src", spec): maps})
    got = IncrementalEvaluator._region(fake, "src", spec, b, gy, gx, h, w)
    for i in range(n):
        y, x = int(gy[i]) + spec[0], int(gx[i]) + spec[2]
        assert torch.equal(got[i], maps[b[i], :, y:y + h, x:x + w])

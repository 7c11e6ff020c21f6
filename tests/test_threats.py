"""Threat models of the one-pixel attack: band_pixel, cosmic_ray, bad_column."""

import numpy as np
import pytest
import torch
from torch import nn

from galguard.errors import GalguardValueError
from galguard.robustness import OnePixelAttack

H = W = 16
C = 3
PY, PX, PBAND = 6, 9, 2     # the planted weakness: band PBAND, from (PY, PX)
LENGTH = 4


class Detector(nn.Module):
    """Class 1 when a matched filter on band PBAND fires: a single pixel at (PY, PX), a
    vertical segment of LENGTH pixels from it, or a diagonal track from it (weight 1 each; the
    threshold needs all of them bright), plus a faint broad guide around it: only that
    artefact, in that band, fires it."""

    def __init__(self, shape):
        super().__init__()
        yy, xx = np.mgrid[:H, :W]
        w = 0.1 * np.exp(-((yy - PY) ** 2 + (xx - PX) ** 2) / 8.0).astype(np.float32)
        if shape == "pixel":
            cells = [(PY, PX)]
        elif shape == "column":
            cells = [(PY + j, PX) for j in range(LENGTH)]
        else:
            cells = [(PY + j, PX + j) for j in range(LENGTH)]
        for y, x in cells:
            w[y, x] = 1.0
        self.register_buffer("w", torch.from_numpy(w))
        self.need = len(cells) - 0.5

    def forward(self, x):
        s = (x[:, PBAND] * self.w).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(s), 10.0 * (s - self.need)], dim=1)


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, C, H, W, generator=g) * 0.1
    x[:, :, 0, 0] = 1.0                       # each band's maximum: 1
    return x


def attack(model, threat, **kw):
    args = dict(popsize=60, max_iter=60, seed=2, threat=threat, length=LENGTH,
                init="extremes")
    args.update(kw)
    return OnePixelAttack(model, **args)


@pytest.mark.parametrize("threat,shape", [("band_pixel", "pixel"), ("bad_column", "column"),
                                          ("cosmic_ray", "diagonal")])
def test_the_planted_artefact_is_found_and_only_it_is_changed(threat, shape):
    model = Detector(shape)
    x = images(4)
    labels = torch.zeros(4, dtype=torch.int64)
    assert (model(x).argmax(1) == 0).all()
    budget = dict(popsize=100, max_iter=100) if threat == "cosmic_ray" else {}
    r = attack(model, threat, **budget)(x, labels, return_images=True)
    assert r.success.all()
    assert (r.band == PBAND).all()
    diff = r.images != x                                        # (B, C, H, W)
    assert (diff.sum(dim=(2, 3))[:, [b for b in range(C) if b != PBAND]] == 0).all()
    k = 1 if threat == "band_pixel" else LENGTH
    ys = r.y.reshape(4, -1)
    xs = r.x.reshape(4, -1)
    assert ys.shape[1] == k
    for i in range(4):
        changed = torch.nonzero(diff[i, PBAND])
        assert len(changed) <= k
        assert {tuple(p) for p in changed.tolist()} <= set(zip(ys[i].tolist(), xs[i].tolist()))
        if threat == "bad_column":
            assert (xs[i] == PX).all() and ys[i].tolist() == list(range(PY, PY + LENGTH))
        elif threat == "cosmic_ray":
            assert ys[i].tolist() == list(range(PY, PY + LENGTH))
            assert xs[i].tolist() == list(range(PX, PX + LENGTH))
        else:
            assert (int(ys[i]), int(xs[i])) == (PY, PX)
        # one value along the artefact, inside the band's bounds, the others unchanged
        vals = r.values.reshape(4, k, C)[i]
        assert torch.equal(vals[:, PBAND], vals[:1, PBAND].expand(k))
        assert 0.0 <= float(vals[0, PBAND]) <= 1.0
        assert torch.equal(r.images[i, PBAND][ys[i], xs[i]], vals[:, PBAND])
        with torch.inference_mode():
            assert int(model(r.images[i:i + 1]).argmax(1)) == 1


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(C, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6 * (H // 2) * (W // 2), 3)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(torch.flatten(h, 1))


@pytest.mark.parametrize("threat", ["band_pixel", "cosmic_ray", "bad_column"])
def test_delta_inference_gives_the_full_paths_search_and_tracks_stay_inside(threat):
    model = SmallCNN().eval()
    x = torch.rand(5, C, H, W, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        labels = model(x).argmax(1)
    a = attack(model, threat, max_iter=6)(x, labels)
    b = attack(model, threat, max_iter=6, incremental=False)(x, labels)
    for name in ("success", "x", "y", "band", "queries"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.values, b.values)
    assert (a.x >= 0).all() and (a.x < W).all() and (a.y >= 0).all() and (a.y < H).all()
    # batch size and batch members do not change an image's search
    c = attack(model, threat, max_iter=6, batch_size=7)(x[[3, 1]], labels[[3, 1]],
                                                         ids=torch.tensor([3, 1]))
    for name in ("x", "y", "band", "queries"):
        assert torch.equal(getattr(c, name), getattr(a, name)[[3, 1]]), name


def test_bad_threat_arguments():
    m = SmallCNN()
    with pytest.raises(GalguardValueError, match="threat"):
        OnePixelAttack(m, threat="meteor")
    with pytest.raises(GalguardValueError, match="pixels must be 1"):
        OnePixelAttack(m, threat="band_pixel", pixels=2)
    with pytest.raises(GalguardValueError, match="length"):
        OnePixelAttack(m, threat="cosmic_ray", length=0)
    with pytest.raises(GalguardValueError, match="exceeds the image size"):
        OnePixelAttack(m, threat="bad_column", length=40, popsize=8, max_iter=1)(
            images(1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(GalguardValueError, match="shape"):
        OnePixelAttack(m, popsize=8, max_iter=1)(images(2), torch.zeros(2, dtype=torch.int64),
                                                 bounds=(np.zeros(3), np.ones(3)))


def test_per_call_bounds_limit_the_values():
    model = Detector("pixel")
    x = images(2)
    lo = torch.zeros(2, C)
    hi = torch.full((2, C), 0.3)                # the detector needs 0.5: no flip within 0.3
    r = attack(model, "band_pixel", max_iter=10)(x, torch.zeros(2, dtype=torch.int64),
                                                   bounds=(lo, hi))
    assert not r.success.any()
    assert float(r.values[torch.arange(2), r.band].max()) <= 0.3


@pytest.mark.parametrize("threat", ["pixel", "band_pixel"])
def test_sites_restrict_every_candidate_and_both_paths_agree(threat):
    from galguard.robustness._threats import codec_for

    model = SmallCNN().eval()
    x = torch.rand(3, C, H, W, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        labels = model(x).argmax(1)
    shape = (3, C, H, W) if threat == "band_pixel" else (3, H, W)
    sites = torch.rand(shape, generator=torch.Generator().manual_seed(5)) < 0.02
    sites.view(3, -1)[:, 7] = True                      # at least one per image
    sites[2] = False
    sites.view(3, -1)[2, -1] = True                     # a single site: the last one
    a = attack(model, threat, max_iter=5, early_stop=False)(x, labels, sites=sites,
                                                             return_images=True)
    b = attack(model, threat, max_iter=5, early_stop=False, incremental=False)(
        x, labels, sites=sites)
    for name in ("success", "x", "y", "band", "queries"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for i in range(3):
        changed = (a.images[i] != x[i]).nonzero()
        where = changed[:, 1:] if threat == "pixel" else changed
        for c in where.tolist():
            assert bool(sites[i][tuple(c)]), (i, c)
    assert int(a.y[2]) == H - 1 and int(a.x[2]) == W - 1
    # the mapping from genes to sites is idempotent: allowed sites stand for themselves
    codec = codec_for(threat, x, x.amin(dim=(2, 3)), x.amax(dim=(2, 3)), sites=sites)
    m = torch.rand(3, 50, 2 + (2 if threat == "band_pixel" else C)) * torch.tensor(
        [W, H] + ([C, 1.0] if threat == "band_pixel" else [1.0] * C))
    once = codec.canon(torch.arange(3), m)
    assert torch.equal(codec.canon(torch.arange(3), once), once)


def test_sites_find_the_planted_pixel_among_few_and_bad_sites_are_refused():
    model = Detector("pixel")
    x = images(2)
    sites = torch.zeros(2, C, H, W, dtype=torch.bool)
    sites[:, PBAND, PY, PX] = True
    sites[:, 0, :3, :3] = True                          # and some harmless ones
    r = attack(model, "band_pixel", popsize=8, max_iter=3, init="random")(
        x, torch.zeros(2, dtype=torch.int64), sites=sites)
    assert r.success.all()
    assert (r.y == PY).all() and (r.x == PX).all() and (r.band == PBAND).all()
    lab = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(GalguardValueError, match="at least one site"):
        attack(model, "band_pixel")(x, lab, sites=torch.zeros(2, C, H, W, dtype=torch.bool))
    with pytest.raises(GalguardValueError, match="shape"):
        attack(model, "band_pixel")(x, lab, sites=torch.ones(2, H, W, dtype=torch.bool))
    with pytest.raises(GalguardValueError, match="one-pixel searches only"):
        attack(model, "cosmic_ray")(x, lab, sites=torch.ones(2, H, W, dtype=torch.bool))
    with pytest.raises(GalguardValueError, match="bool"):
        attack(model, "pixel")(x, lab, sites=torch.ones(2, H, W))


@pytest.mark.parametrize("threat,shape", [("band_pixel", "pixel"), ("bad_column", "column"),
                                          ("cosmic_ray", "diagonal"), ("pixel", "pixel")])
def test_gradient_corners_find_the_planted_artefact_in_the_first_population(threat, shape):
    """init="gradient" seeds the population with the box corners a first-order expansion ranks
    best: the planted artefact is in the initial population (no generation run), which a random
    population of the same size misses; also when called under inference mode."""
    model = Detector(shape)
    x = images(3)
    labels = torch.zeros(3, dtype=torch.int64)
    with torch.inference_mode():
        r = attack(model, threat, popsize=8, max_iter=0, init="gradient")(x, labels)
    assert bool(r.success.all()) and r.queries.tolist() == [9, 9, 9]    # 8 + re-verification
    assert r.generations.tolist() == [0, 0, 0]
    if threat != "pixel":
        assert r.band.tolist() == [PBAND] * 3
    rand = attack(model, threat, popsize=8, max_iter=0, init="random")(x, labels)
    assert not bool(rand.success.any())


@pytest.mark.parametrize("threat", ["pixel", "band_pixel", "bad_column", "cosmic_ray"])
def test_gradient_corners_are_the_best_first_order_candidates(threat):
    """`corners` against brute force over every candidate's first-order change, restricted to
    allowed sites where given; every corner decodes to band values at lo or hi."""
    from galguard.robustness._threats import codec_for

    g = torch.Generator().manual_seed(4)
    x = images(2)
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    grad = torch.randn(x.shape, generator=g)
    codec = codec_for(threat, x, lo, hi, length=3)
    n = 12
    mem = codec.corners(grad, n)
    rows = torch.arange(2).repeat_interleave(n)
    ys, xs, vals, band = codec.decode(rows, mem.reshape(2 * n, -1))
    base = x[rows[:, None], :, ys, xs]                                    # (2n, k, C)
    pred = (grad[rows[:, None], :, ys, xs] * (vals - base)).sum(dim=(1, 2)).reshape(2, n)
    assert bool((pred[:, 1:] >= pred[:, :-1] - 1e-5).all())              # ranked
    # brute force: every candidate at lo or hi of its changed band(s)
    if threat == "pixel":
        best = torch.minimum(grad * (lo[:, :, None, None] - x),
                             grad * (hi[:, :, None, None] - x)).sum(1).reshape(2, -1)
    else:
        axes = [torch.arange(W) + 0.5, torch.arange(H) + 0.5, torch.arange(C) + 0.5,
                torch.tensor([0.0, 1.0])] + ([torch.arange(4) + 0.5] if threat == "cosmic_ray"
                                             else [])
        grid = torch.stack(torch.meshgrid(*[a.float() for a in axes], indexing="ij"), -1)
        grid = grid.reshape(-1, mem.shape[2])
        r2 = torch.arange(2).repeat_interleave(grid.shape[0])
        ys2, xs2, v2, _ = codec.decode(r2, grid.repeat(2, 1))
        b2 = x[r2[:, None], :, ys2, xs2]
        best = (grad[r2[:, None], :, ys2, xs2] * (v2 - b2)).sum(dim=(1, 2)).reshape(2, -1)
    top = best.sort(dim=1).values[:, :n]
    if threat in ("pixel", "band_pixel"):
        torch.testing.assert_close(pred, top, rtol=1e-5, atol=1e-5)
    else:   # brute force repeats tracks that decode moves inside the image: the best only
        torch.testing.assert_close(pred[:, 0], top[:, 0], rtol=1e-5, atol=1e-5)
    changed = vals != base
    at_corner = (vals == lo[rows][:, None, :]) | (vals == hi[rows][:, None, :])
    assert bool(at_corner[changed].all())
    # restricted to allowed sites
    if threat in ("pixel", "band_pixel"):
        sites = torch.zeros((2, C, H, W) if threat == "band_pixel" else (2, H, W), dtype=bool)
        sites[..., 2:5, 3:7] = True
        rc = codec_for(threat, x, lo, hi, sites=sites)
        m2 = rc.corners(grad, n)
        ys3, xs3, _, b3 = rc.decode(rows, m2.reshape(2 * n, -1))
        assert bool(((ys3 >= 2) & (ys3 < 5) & (xs3 >= 3) & (xs3 < 7)).all())


def test_gradient_init_falls_back_for_a_model_autograd_cannot_differentiate():
    class Detached(Detector):
        def forward(self, x):
            return super().forward(x).detach()

    model = Detached("pixel")
    x = images(2)
    r = attack(model, "band_pixel", popsize=8, max_iter=2, init="gradient")(
        x, torch.zeros(2, dtype=torch.int64))
    rand = attack(model, "band_pixel", popsize=8, max_iter=2, init="random")(
        x, torch.zeros(2, dtype=torch.int64))
    assert r.success.tolist() == rand.success.tolist()
    torch.testing.assert_close(r.values, rand.values)


def test_gradient_scan_then_the_random_search_unchanged():
    """Where the corner scan finds no flip, the search is the "random" one, for popsize more
    evaluations (so the gradient init finds every flip the random one finds)."""
    model = Detector("column")          # needs four bright pixels: no single band pixel fires
    x = images(3)
    labels = torch.zeros(3, dtype=torch.int64)
    g = attack(model, "band_pixel", popsize=10, max_iter=5, init="gradient")(x, labels)
    r = attack(model, "band_pixel", popsize=10, max_iter=5, init="random")(x, labels)
    assert not bool(g.success.any()) and not bool(r.success.any())
    torch.testing.assert_close(g.values, r.values)
    assert g.x.tolist() == r.x.tolist() and g.y.tolist() == r.y.tolist()
    assert (g.queries - r.queries).tolist() == [10, 10, 10]

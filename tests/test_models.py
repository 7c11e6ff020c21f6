"""Tests of galguard.models: networks, GalaxyClassifier, preprocessing, latent statistics, and
loading weights safely (sha256 check, pickle refusal)."""

import json
import shutil

import numpy as np
import pytest
import torch

from galguard.errors import GalguardValueError
from galguard.models import (ConvNet, GalaxyClassifier, Preprocess, ResNet18, available,
                             build_network, fit_latent_stats, load, save, sha256_file)

REQUIRED_CARD_KEYS = ("name", "architecture", "domain_adaptation", "classes", "bands",
                      "input_size", "preprocessing", "training_data", "command", "metrics",
                      "sha256")


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.05, (n, 3, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    for i in range(n):
        x[i] += np.exp(-np.hypot(xx, yy) / (1 + i % 3)).astype(np.float32) * (1 + rng.random())
    return x


def _model(size=32, seed=0, stats=True):
    torch.manual_seed(seed)
    x = _images(64, size, seed)
    pre = Preprocess.from_data(x)
    net = build_network("convnet", input_size=size)
    m = GalaxyClassifier(net, pre, classes=("spiral", "elliptical", "merger"),
                         bands=("g", "r", "i"), input_size=size,
                         card={"name": "tiny", "domain_adaptation": "none"})
    m.eval()
    if stats:
        lat = m.embed(x)
        st = fit_latent_stats(lat, np.arange(64) % 3, 3)
        st.pop("shrinkage")
        m.set_latent_stats(st)
    return m


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
def test_convnet_matches_paper_shapes():
    net = ConvNet()
    assert net.bottleneck.in_features == 4608  # 32 * 12 * 12 for 100x100 input, as in the paper
    assert net.bottleneck.out_features == 256
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == \
        [(3, 8, 5, 2), (8, 16, 3, 1), (16, 32, 3, 1)]
    net.eval()
    latent, logits = net(torch.zeros(2, 3, 100, 100))
    assert latent.shape == (2, 256) and logits.shape == (2, 3)
    # latent is the bottleneck output and logits are a linear map of it
    torch.testing.assert_close(logits, net.classifier(latent))


def test_resnet18_structure_and_shapes():
    net = ResNet18(input_size=64)
    n_params = sum(p.numel() for p in net.parameters())
    # ResNet18 trunk (11.17 M) + 512->256 + 256->3
    assert 11_000_000 < n_params < 11_500_000
    assert net.dropout.p == 0.5
    assert (net.bottleneck.in_features, net.bottleneck.out_features) == (512, 256)
    net.eval()
    latent, logits = net(torch.zeros(2, 3, 64, 64))
    assert latent.shape == (2, 256) and logits.shape == (2, 3)


def test_resnet18_width_is_built_saved_and_loaded(tmp_path):
    net = build_network("resnet18", input_size=40, width=8)
    assert net.width == 8 and net.bottleneck.in_features == 64
    assert sum(p.numel() for p in net.parameters()) < 11_500_000 / 50
    with pytest.raises(GalguardValueError, match="width is a ResNet18 setting"):
        build_network("convnet", width=8)
    with pytest.raises(GalguardValueError, match="width must be >= 1"):
        ResNet18(width=0)
    data = np.random.default_rng(0).gamma(2.0, 5.0, (4, 3, 40, 40)).astype(np.float32)
    m = GalaxyClassifier(net.eval(), Preprocess.from_data(data), classes=("a", "b", "c"),
                         bands="gri", input_size=40)
    w, c = save(m, tmp_path / "r18.safetensors")
    assert json.loads(c.read_text())["width"] == 8
    back = load(w)
    assert back.network.width == 8
    torch.testing.assert_close(back(torch.from_numpy(data))[1], m(torch.from_numpy(data))[1])
    card = json.loads(c.read_text())
    card["width"] = "wide"
    c.write_text(json.dumps(card))
    with pytest.raises(GalguardValueError, match="width must be an int"):
        load(w)


def test_train_config_width():
    from galguard.training import TrainConfig
    assert TrainConfig(architecture="resnet18", width=16).width == 16
    with pytest.raises(GalguardValueError, match="width is a ResNet18 setting"):
        TrainConfig(width=16)
    with pytest.raises(GalguardValueError, match="width"):
        TrainConfig(architecture="resnet18", width=0)


def test_build_network_rejects_unknown_architecture():
    with pytest.raises(GalguardValueError, match="architecture must be one of .* got 'vgg'"):
        build_network("vgg")


# ------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------
def test_preprocess_constants_and_formula():
    x = _images(20, 16, seed=3)
    pre = Preprocess.from_data(x)
    for b in range(3):
        lo, hi = np.percentile(x[:, b].astype(np.float64), [0.1, 99.9])
        assert pre.lo[b].item() == pytest.approx(lo, rel=1e-6)
        assert pre.hi[b].item() == pytest.approx(hi, rel=1e-6)
        assert pre.scale[b].item() == pytest.approx(0.85 / hi, rel=1e-6)
    y = pre(torch.from_numpy(x)).numpy()
    lo, hi, c = (v.numpy()[None, :, None, None] for v in (pre.lo, pre.hi, pre.scale))
    expect = (np.arcsinh(c * np.clip(x, lo, hi)) + 1) / 2
    np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-7)
    assert y.max() <= (np.arcsinh(0.85) + 1) / 2 + 1e-6  # ~0.88, as in the paper


def test_preprocess_inverse():
    pre = Preprocess.from_data(_images(10, 16, seed=4))
    x = torch.from_numpy(_images(3, 16, seed=6))
    x = torch.maximum(torch.minimum(x, pre.hi.view(1, -1, 1, 1)), pre.lo.view(1, -1, 1, 1))
    torch.testing.assert_close(pre.inverse(pre(x)), x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pre.inverse(torch.full((3,), 0.5)), torch.zeros(3))


def test_preprocess_is_frozen_and_per_galaxy():
    """A galaxy's prediction does not depend on the other galaxies in its batch."""
    m = _model()
    x = _images(6, 32, seed=5)
    alone = m.predict(x[:1])
    others = x.copy()
    others[1:] *= 1000.0  # wildly different companions
    together = m.predict(others)[:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    assert m.preprocess.lo.requires_grad is False


def test_preprocess_replaces_non_finite_with_zero():
    pre = Preprocess([-1, -1, -1], [1, 1, 1], [0.85, 0.85, 0.85])
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 0, 0] = float("inf")
    y = pre(x)
    assert torch.all(torch.isfinite(y))
    torch.testing.assert_close(y, torch.full_like(y, 0.5))


def test_preprocess_validates_constants():
    with pytest.raises(GalguardValueError, match="hi must exceed lo"):
        Preprocess([0, 0, 0], [1, 0, 1], [1, 1, 1])
    with pytest.raises(GalguardValueError, match="scale must be finite and > 0"):
        Preprocess([0, 0, 0], [1, 1, 1], [1, 0, 1])


# ------------------------------------------------------------------------------------------------
# GalaxyClassifier
# ------------------------------------------------------------------------------------------------
class _FakeCutouts:
    def __init__(self, data):
        self.data = data


def test_predict_accepts_arrays_tensors_and_cutouts_without_mutation():
    m = _model()
    x = _images(5, 32, seed=1)
    x_copy = x.copy()
    p_np = m.predict(x)
    p_t = m.predict(torch.from_numpy(x))
    p_c = m.predict(_FakeCutouts(x))
    p_be = m.predict(x.astype(">f4"))  # big-endian FITS data
    assert p_np.shape == (5, 3) and p_np.dtype == np.float32
    np.testing.assert_allclose(p_np.sum(1), 1.0, rtol=1e-6)
    for p in (p_t, p_c, p_be):
        np.testing.assert_array_equal(p, p_np)
    np.testing.assert_array_equal(x, x_copy)


def test_predict_independent_of_batch_size_and_restores_mode():
    m = _model()
    m.train()
    x = _images(7, 32, seed=2)
    p1 = m.predict(x, batch_size=1)
    p7 = m.predict(x, batch_size=7)
    np.testing.assert_allclose(p1, p7, rtol=1e-5, atol=1e-6)
    assert m.training  # mode restored
    z = m.embed(x, batch_size=3)
    assert z.shape == (7, 256)


def test_forward_returns_latent_and_logits_and_checks_shape():
    m = _model()
    latent, logits = m(torch.from_numpy(_images(2, 32)))
    assert latent.shape == (2, 256) and logits.shape == (2, 3)
    with pytest.raises(GalguardValueError, match=r"images must have shape \(N, 3, 32, 32\).*got "
                                                 r"\(2, 3, 30, 30\)"):
        m.predict(np.zeros((2, 3, 30, 30), np.float32))
    with pytest.raises(GalguardValueError, match=r"images must have shape \(N, C, H, W\), got "
                                                 r"\(3, 32, 32\)"):
        m.predict(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(GalguardValueError, match="batch_size must be a positive integer, got 0"):
        m.predict(np.zeros((1, 3, 32, 32), np.float32), batch_size=0)
    assert m.predict(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 3)


# ------------------------------------------------------------------------------------------------
# Latent statistics
# ------------------------------------------------------------------------------------------------
def test_fit_latent_stats_gaussian_classes():
    rng = np.random.default_rng(0)
    d, n = 4, 30000
    means = np.array([[0, 0, 0, 0], [3, 0, 0, 0], [0, 4, 0, 0]], float)
    cov = np.diag([1.0, 2.0, 0.5, 1.5])
    y = np.arange(n) % 3
    z = means[y] + rng.multivariate_normal(np.zeros(d), cov, n)
    st = fit_latent_stats(z, y, 3)
    # class means within 5 sigma of the truth (sigma = sqrt(var / 10000))
    np.testing.assert_allclose(st["class_means"].numpy(), means, atol=5 * np.sqrt(2.0 / 10000))
    # precision @ cov = I to 0.05 (5 sigma: entries scatter by ~sqrt(2 / N) ~ 0.01)
    np.testing.assert_allclose(st["precision"].numpy() @ cov, np.eye(d), atol=0.05)
    pair = [np.linalg.norm(st["class_means"][i] - st["class_means"][j])
            for i, j in ((0, 1), (0, 2), (1, 2))]
    assert st["centroid_separation"].item() == pytest.approx(np.mean(pair), rel=1e-6)
    assert 0 <= st["shrinkage"] < 0.05


def test_fit_latent_stats_needs_every_class():
    with pytest.raises(GalguardValueError, match="labels has no member of class 2"):
        fit_latent_stats(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 3)


# ------------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------------
def test_save_load_roundtrip(tmp_path):
    m = _model()
    w, c = save(m, tmp_path / "tiny.safetensors")
    card = json.loads(c.read_text())
    assert card["sha256"] == sha256_file(w)
    assert card["architecture"] == "convnet" and card["input_size"] == 32
    assert card["preprocessing"]["clip_hi"] == pytest.approx(m.preprocess.hi.tolist())
    m2 = load(w)
    assert isinstance(m2, GalaxyClassifier) and not m2.training
    assert m2.name == "tiny" and m2.sha256 == card["sha256"]
    assert m2.classes == ("spiral", "elliptical", "merger") and m2.bands == ("g", "r", "i")
    x = _images(4, 32, seed=9)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    for k, v in m.latent_stats.items():
        torch.testing.assert_close(m2.latent_stats[k], v)
    m3 = load(c)  # the card path works too
    np.testing.assert_array_equal(m3.predict(x), m2.predict(x))


def test_tampered_weights_are_refused(tmp_path):
    w, _ = save(_model(), tmp_path / "tiny.safetensors")
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # flip a byte of a tensor
    w.write_bytes(bytes(data))
    with pytest.raises(GalguardValueError, match=r"refusing to load .*tiny\.safetensors.*sha256"):
        load(w)


def test_pickle_files_are_refused(tmp_path):
    m = _model()
    pt = tmp_path / "model.pt"
    torch.save(m.state_dict(), pt)
    with pytest.raises(GalguardValueError, match=r"refusing to load .*model\.pt.*pickled"):
        load(pt)
    # a torch.save archive disguised with the safetensors suffix is refused by its content
    disguised = tmp_path / "evil.safetensors"
    torch.save(m.state_dict(), disguised)
    (tmp_path / "evil.json").write_text(json.dumps({"sha256": sha256_file(disguised)}))
    with pytest.raises(GalguardValueError, match=r"refusing to load .*evil\.safetensors.*pickled"):
        load(disguised)
    import pickle

    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(GalguardValueError, match=r"raw\.safetensors.*pickled"):
        load(raw)
    # the card pointing at a pickle is refused too
    card = tmp_path / "viacard.json"
    card.write_text(json.dumps({"weights_file": "model.pt", "sha256": "0"}))
    with pytest.raises(GalguardValueError, match=r"model\.pt.*pickled"):
        load(card)


def test_load_errors_name_the_argument(tmp_path):
    with pytest.raises(GalguardValueError, match="name_or_path must be one of .* got 'nosuch'"):
        load("nosuch")
    with pytest.raises(GalguardValueError, match="does not exist"):
        load(tmp_path / "missing.safetensors")
    w, c = save(_model(), tmp_path / "tiny.safetensors")
    shutil.copy(w, tmp_path / "orphan.safetensors")
    with pytest.raises(GalguardValueError, match=r"has no model card: expected .*orphan\.json"):
        load(tmp_path / "orphan.safetensors")
    # card whose preprocessing constants disagree with the weights
    card = json.loads(c.read_text())
    card["preprocessing"]["scale"] = [1.0, 1.0, 1.0]
    c.write_text(json.dumps(card))
    with pytest.raises(GalguardValueError, match="preprocessing scale"):
        load(w)


# ------------------------------------------------------------------------------------------------
# Shipped models
# ------------------------------------------------------------------------------------------------
def test_shipped_models_listed():
    names = available()
    for n in ("convnet_none", "convnet_mmd", "convnet_mmd_w1", "convnet_sinkhorn",
              "resnet18_none", "resnet18_mmd_w1", "default"):
        assert n in names


@pytest.mark.parametrize("name", ["convnet_none", "convnet_mmd", "convnet_mmd_w1",
                                  "convnet_sinkhorn", "resnet18_none", "resnet18_mmd_w1",
                                  "default"])
def test_shipped_model_loads_with_complete_card(name):
    m = load(name)
    for key in REQUIRED_CARD_KEYS:
        assert key in m.card, key
    assert m.card["domain_adaptation"] in ("none", "mmd", "sinkhorn")
    if name != "default":
        assert m.card["domain_adaptation"] == name.split("_")[1]
    assert m.card["command"].startswith("galguard train ")
    assert m.classes == ("spiral", "elliptical", "merger") and m.bands == ("g", "r", "i")
    assert m.input_size == 100
    st = m.latent_stats
    assert st["class_means"].shape == (3, 256) and st["precision"].shape == (256, 256)
    assert st["centroid_separation"].item() > 0
    p = m.predict(np.zeros((2, 3, 100, 100), np.float32))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert {"y10", "y1"} <= set(m.card["metrics"])
    if m.card["domain_adaptation"] != "none":
        assert m.card["training_data"]["target"]["labels_used"] is False
    if name.startswith("resnet18"):
        assert m.card["architecture"] == "resnet18" and m.card["width"] == 16
        assert m.network.width == 16 and "width 16" in m.card["architecture_note"]
        assert "--width 16" in m.card["command"]

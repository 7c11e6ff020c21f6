"""Tests of galguard.training (train with none/mmd/sinkhorn, checkpoints and resume, metrics) and
of the `galguard train` / `galguard evaluate` commands. Every training run here is one or two
short epochs on tiny synthetic data."""

import json

import numpy as np
import pytest
import torch

import galguard
from galguard.errors import GalguardValueError
from galguard.models import GalaxyClassifier, load
from galguard.training import (MMD_BANDWIDTHS, Checkpoint, classification_metrics, evaluate,
                               mmd2, plot_evaluation, sinkhorn_divergence, train)

SIZE = 32


def _synth(n, *, seed=0, noise=0.05):
    """Toy 3-band galaxies: 0 extended disk, 1 compact blob, 2 two blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    labels = (np.arange(n) % 3).astype(np.int64)
    imgs = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i, c in enumerate(labels):
        if c == 0:
            prof = np.exp(-np.hypot(xx, yy) / 5.0)
        elif c == 1:
            prof = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.6 ** 2)
        else:
            prof = (np.exp(-0.5 * ((xx - 5) ** 2 + yy ** 2) / 4) +
                    np.exp(-0.5 * ((xx + 5) ** 2 + yy ** 2) / 4))
        for b in range(3):
            imgs[i, b] = (1 + 0.3 * b) * prof + noise * rng.standard_normal((SIZE, SIZE))
    return imgs, labels


@pytest.fixture(scope="module")
def data():
    xs, ys = _synth(96, seed=1)
    xt, _ = _synth(96, seed=2, noise=0.3)
    xv, yv = _synth(24, seed=3)
    return xs, ys, xt, xv, yv


def _train(data, **kw):
    xs, ys, xt, xv, yv = data
    kw = {"target": xt, "validation": xv, "validation_labels": yv, "epochs": 1,
          "batch_size": 32, "progress": False, **kw}
    return train(xs, ys, **kw)


# ------------------------------------------------------------------------------------------------
# Domain losses
# ------------------------------------------------------------------------------------------------
def test_mmd2_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g)
    y = torch.randn(40, 8, generator=g)
    assert mmd2(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert mmd2(x, y).item() == pytest.approx(mmd2(y, x).item(), rel=1e-5)
    assert mmd2(x, y + 3.0).item() > 10 * abs(mmd2(x, y).item())
    # one kernel, explicit formula
    d2 = torch.cdist(x, y + 1) ** 2
    kxy = torch.exp(-d2 / 2).mean()
    kxx = torch.exp(-torch.cdist(x, x) ** 2 / 2).mean()
    kyy = torch.exp(-torch.cdist(y + 1, y + 1) ** 2 / 2).mean()
    assert mmd2(x, y + 1, bandwidths=(1.0,)).item() == pytest.approx(
        (kxx + kyy - 2 * kxy).item(), rel=1e-4)
    assert len(MMD_BANDWIDTHS) == 19


def test_sinkhorn_blur_rule():
    x = torch.zeros(5, 3)
    y = torch.zeros(5, 3)
    y[0, 0] = 10.0
    s, blur = sinkhorn_divergence(x, y)
    assert blur == pytest.approx(0.5)  # 0.05 * max distance 10
    _, blur = sinkhorn_divergence(x, x + 1e-3)
    assert blur == pytest.approx(0.01)  # floor
    assert sinkhorn_divergence(x, x)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert s.item() > 0


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    probs = np.array([[0.9, 0.05, 0.05],   # true 0, right, conf 0.9
                      [0.6, 0.3, 0.1],     # true 1, wrong, conf 0.6
                      [0.2, 0.7, 0.1],     # true 1, right, conf 0.7
                      [0.1, 0.1, 0.8]])    # true 2, right, conf 0.8
    y = np.array([0, 1, 1, 2])
    m = classification_metrics(probs, y)
    assert m["accuracy"] == 0.75
    assert m["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["spiral"]["precision"] == 0.5
    assert m["per_class"]["elliptical"]["recall"] == 0.5
    assert m["per_class"]["elliptical"]["f1"] == pytest.approx(2 / 3)
    # ECE: bins hold one galaxy each: |1-.9| + |0-.6| + |1-.7| + |1-.8| over 4
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    onehot = np.eye(3)[y]
    assert m["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    assert sum(b["count"] for b in m["reliability"]) == 4 and len(m["reliability"]) == 15


def test_classification_metrics_validates():
    with pytest.raises(GalguardValueError, match=r"probs must have shape \(N, 3\), got \(2, 2\)"):
        classification_metrics(np.ones((2, 2)), [0, 1])
    with pytest.raises(GalguardValueError, match="labels must be in 0..2, got values in 0..5"):
        classification_metrics(np.ones((2, 3)) / 3, [0, 5])


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def test_train_none_returns_complete_model(data):
    xs, ys, xt, xv, yv = data
    xs0, ys0 = xs.copy(), ys.copy()
    m = _train(data, da="none", name="tiny")
    np.testing.assert_array_equal(xs, xs0)  # inputs not mutated
    np.testing.assert_array_equal(ys, ys0)
    assert isinstance(m, GalaxyClassifier) and not m.training
    assert m.card["domain_adaptation"] == "none" and m.name == "tiny"
    tr = m.card["training"]
    assert tr["epochs_run"] == 1 and tr["best_epoch"] == 0
    assert tr["class_weights"] == pytest.approx([1.0, 1.0, 1.0])  # balanced: N / (3 n_c) = 1
    assert m.latent_stats["class_means"].shape == (3, 256)
    assert m.input_size == SIZE
    # constants frozen from the training set
    np.testing.assert_allclose(m.preprocess.hi[0].item(),
                               np.percentile(xs[:, 0].astype(np.float64), 99.9), rtol=1e-6)
    assert galguard.train is train


def test_class_weights_follow_counts(data):
    xs, ys, *_ = data
    keep = np.r_[np.flatnonzero(ys == 0), np.flatnonzero(ys == 1)[:8], np.flatnonzero(ys == 2)]
    m = train(xs[keep], ys[keep], epochs=1, batch_size=32, progress=False, val_fraction=0.2)
    counts = np.bincount(ys[keep][np.sort(np.random.default_rng([0, 7]).permutation(len(keep))
                                          [int(round(0.2 * len(keep))):])], minlength=3)
    assert m.card["training"]["class_counts"] == counts.tolist()
    np.testing.assert_allclose(m.card["training"]["class_weights"],
                               counts.sum() / (3 * counts), rtol=1e-6)


def test_train_is_deterministic(data):
    a = _train(data, da="mmd", seed=3)
    b = _train(data, da="mmd", seed=3)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    c = _train(data, da="mmd", seed=4)
    assert not torch.equal(a.network.classifier.weight, c.network.classifier.weight)


@pytest.mark.parametrize("da", ["mmd", "sinkhorn"])
def test_domain_adaptation_runs(data, da):
    m = _train(data, da=da, epochs=2, warmup_epochs=1)
    if da == "sinkhorn":  # SIDDA's own start e1 = e2 = 1 runs too
        ones = _train(data, da=da, epochs=2, warmup_epochs=1, init_loss_weights="ones")
        assert ones.card["training"]["config"]["init_loss_weights"] == "ones"
    h = m.card["training"]["history"]
    assert [r["domain_loss_on"] for r in h] == [False, True]
    assert h[0]["train_domain"] == 0.0 and np.isfinite(h[1]["train_domain"])
    assert h[1]["train_domain"] > 0
    assert m.card["training"]["best_epoch"] == 1  # warm-up epochs cannot be selected
    if da == "sinkhorn":
        assert m.card["training"]["config"]["init_loss_weights"] == "data"
        e1, e2 = h[1]["loss_weights"]
        assert e1 >= 1e-3 and e2 >= 0.25 * e1
        assert m.card["training"]["loss_weights"]["e1"] == e1


def test_resume_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    full = _train(data, da="sinkhorn", epochs=2, warmup_epochs=0, checkpoint_dir=tmp_path / "a")

    calls = []
    orig = Checkpoint.save

    def interrupted(self, **kw):
        orig(self, **kw)
        calls.append(1)
        raise KeyboardInterrupt  # the process dies right after the first checkpoint

    monkeypatch.setattr(Checkpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(data, da="sinkhorn", epochs=2, warmup_epochs=0, checkpoint_dir=tmp_path / "b")
    monkeypatch.setattr(Checkpoint, "save", orig)
    assert calls == [1]
    with pytest.raises(GalguardValueError, match="already holds a checkpoint"):
        _train(data, da="sinkhorn", epochs=2, warmup_epochs=0, checkpoint_dir=tmp_path / "b")
    resumed = _train(data, da="sinkhorn", epochs=2, warmup_epochs=0,
                     checkpoint_dir=tmp_path / "b", resume=True)
    for (k, va), vb in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert len(resumed.card["training"]["history"]) == 2
    with pytest.raises(GalguardValueError, match="different settings"):
        _train(data, da="sinkhorn", epochs=3, warmup_epochs=0, checkpoint_dir=tmp_path / "b",
               resume=True)


def test_early_stopping(data):
    m = _train(data, da="none", epochs=6, patience=1, lr=1e-9)
    # lr ~ 0: validation loss cannot improve after the first epoch
    tr = m.card["training"]
    assert tr["epochs_run"] == 2 and tr["stopped_early"] and tr["best_epoch"] == 0


def test_train_validates_arguments(data):
    xs, ys, xt, xv, yv = data
    with pytest.raises(GalguardValueError, match="da must be one of .* got 'dann'"):
        train(xs, ys, da="dann")
    with pytest.raises(GalguardValueError, match="target .* is needed for da='mmd'"):
        train(xs, ys, da="mmd", progress=False)
    with pytest.raises(GalguardValueError, match=r"source_labels must be class indices in 0..2, "
                                                 r"got values in 0..3"):
        train(xs, np.where(ys == 2, 3, ys), progress=False)
    with pytest.raises(GalguardValueError, match=r"source_labels must have shape \(96,\)"):
        train(xs, ys[:5], progress=False)
    with pytest.raises(GalguardValueError, match=r"source must have shape \(N, C, H, W\)"):
        train(xs[0], ys, progress=False)
    with pytest.raises(GalguardValueError, match=r"init_loss_weights must be one of \('data', "
                                                 r"'ones'\), got 'zeros'"):
        train(xs, ys, target=xt, da="sinkhorn", init_loss_weights="zeros")
    with pytest.raises(GalguardValueError, match="epochs must be an integer >= 1, got 0"):
        train(xs, ys, epochs=0)
    with pytest.raises(GalguardValueError, match=r"target must have shape \(M, 3, 32, 32\)"):
        train(xs, ys, target=xt[:, :, :16, :16], da="mmd", progress=False)
    with pytest.raises(GalguardValueError, match="source_labels must contain every class"):
        train(xs, ys % 2, progress=False, val_fraction=0.1)


def test_evaluate_and_plot(data, tmp_path):
    m = _train(data, da="none")
    xs, ys, xt, xv, yv = data
    res = evaluate(m, {"src": (xv, yv), "tgt": (xt[:24], np.arange(24) % 3)})
    assert set(res) == {"src", "tgt"} and res["src"]["n"] == 24
    assert 0 <= res["src"]["ece"] <= 1 and 0 <= res["src"]["brier"] <= 2
    p = plot_evaluation(res, tmp_path / "eval.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GalguardValueError, match="model must be a GalaxyClassifier"):
        evaluate("convnet", {"a": (xv, yv)})


# ------------------------------------------------------------------------------------------------
# Command line (tiny simulated data, 32-pixel stamps)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path, capsys):
    from galguard.cli import main

    out = tmp_path / "models"
    argv = ["train", "--name", "cli_tiny", "--out", str(out), "--da", "mmd", "--size", "32",
            "--n-source", "30", "--target-start", "30", "--n-target", "30", "--val-start", "60",
            "--n-val", "9", "--test-start", "69", "--n-test", "9", "--epochs", "1",
            "--batch-size", "10", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--set-default"]
    assert main(argv) == 0
    card = json.loads((out / "cli_tiny.json").read_text())
    assert card["command"].startswith("galguard train --name cli_tiny --out ")
    assert "--da mmd" in card["command"] and "--n-source 30" in card["command"]
    assert card["training_data"]["target"] == {"depth": "y1", "start": 30, "n": 30,
                                               "labelled": False, "labels_used": False}
    assert {"y10", "y1"} <= set(card["metrics"])
    assert json.loads((out / "index.json").read_text()) == {"default": "cli_tiny"}
    assert list((tmp_path / "cache").glob("*.npz"))  # simulated data cached
    m = load(out / "cli_tiny.safetensors")
    assert m.card["domain_adaptation"] == "mmd"

    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(out / "cli_tiny.safetensors"), "--out", str(ev),
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # test set from the card
    doc = json.loads((ev / "evaluation.json").read_text())
    assert set(doc["results"]) == {"Y10", "Y1"} and doc["results"]["Y1"]["n"] == 9
    assert doc["results"]["Y10"]["accuracy"] == pytest.approx(card["metrics"]["y10"]["accuracy"])
    assert (ev / "evaluation.png").exists() and (ev / "evaluation.ecsv").exists()
    assert main(["evaluate", "--model", str(out / "cli_tiny.safetensors"), "--out", str(ev),
                 "--data", "sim:seed=0,start=69,n=3,depth=y1,size=32"]) == 0

    assert main(["train", "--name", "bad", "--out", str(out), "--size", "32", "--n-source", "30",
                 "--val-start", "10", "--no-progress"]) == 2
    assert "overlap" in capsys.readouterr().err
    # A bad option value is a usage error (exit 2) for every command, train included.
    assert main(["train", "--name", "x", "--epochs", "0", "--out", str(out)]) == 2
    assert "epochs must be" in capsys.readouterr().err


def test_parse_data_spec():
    from galguard._cli.evaluate import parse_data_spec

    assert parse_data_spec("T=sim:seed=1,start=5,n=3,depth=Y1") == (
        "T", "sim", {"seed": 1, "start": 5, "n": 3, "depth": "y1", "size": 100})
    assert parse_data_spec("sim:seed=1,start=5,n=3,depth=y10,dm=0.5:2.5")[2]["dm_range"] == \
        [0.5, 2.5]
    label, kind, p = parse_data_spec("/data/y1")
    assert (label, kind, str(p)) == ("y1", "path", "/data/y1")
    with pytest.raises(GalguardValueError, match=r"missing \['n'\]"):
        parse_data_spec("sim:seed=1,start=5,depth=y1")


# ------------------------------------------------------------------------------------------------
# Dimming: exact fainter-galaxy observation from Y10 photons
# ------------------------------------------------------------------------------------------------
def test_dim_and_observe_statistics():
    from galguard.training import dim_and_observe

    rng = np.random.default_rng(0)
    g10, g1, s = np.array([100.0]), np.array([10.0]), np.array([5.0])
    f = np.full((1, 1, 200, 200), 20.0)
    k10 = rng.poisson(g10[0] * (f + s[0]))
    x10 = (k10 / g10[0] - s[0]).astype(np.float32)
    x10_copy = x10.copy()
    out, dm = dim_and_observe(x10, [7], seed=1, dm_range=(1.0, 2.0), depth="y1",
                              gain_y10=g10, gain=g1, sky=s)
    np.testing.assert_array_equal(x10, x10_copy)  # not mutated
    a = 10 ** (-0.4 * dm[0])
    assert 1.0 <= dm[0] <= 2.0
    n = out.size
    var = (a * 20.0 + 5.0) / g1[0]  # Poisson(g (a f + s)) / g
    # mean within 5 sigma of a*f; variance within 5 sigma (sd of a sample variance ~ var*sqrt(2/n))
    assert abs(out.mean() - a * 20.0) < 5 * np.sqrt(var / n)
    assert abs(out.var() - var) < 5 * var * np.sqrt(2 / n)
    # the shift of a galaxy is the same at every depth and whatever the batch
    _, dm2 = dim_and_observe(np.concatenate([x10, x10]), [3, 7], seed=1, dm_range=(1.0, 2.0),
                             depth="y10", gain_y10=g10, gain=g10, sky=s)
    assert dm2[1] == dm[0] and dm2[0] != dm[0]
    # no dimming at Y10 depth is the identity
    same, _ = dim_and_observe(x10, [7], seed=1, dm_range=(0.0, 0.0), depth="y10",
                              gain_y10=g10, gain=g10, sky=s)
    np.testing.assert_allclose(same, x10, atol=1e-4)
    with pytest.raises(GalguardValueError, match="gain must be <= gain_y10"):
        dim_and_observe(x10, [7], seed=1, dm_range=(0, 1), depth="y1", gain_y10=g1, gain=g10,
                        sky=s)
    with pytest.raises(GalguardValueError, match=r"dm_range must satisfy 0 <= lo <= hi, got "
                                                 r"\(2, 1\)"):
        dim_and_observe(x10, [7], seed=1, dm_range=(2, 1), depth="y1", gain_y10=g10, gain=g1,
                        sky=s)


def test_sim_cache_writes_are_atomic_and_private(tmp_path):
    """Cache files go through a temporary file unique to the writer (two runs sharing a cache
    directory once raced on one fixed temporary name), and a failed write leaves nothing."""
    import threading

    from galguard._files import atomic_write

    def _save_atomic(path, write):
        path.parent.mkdir(parents=True, exist_ok=True)

        def fill(tmp):
            with open(tmp, "wb") as f:
                write(f)
        atomic_write(path, fill)

    target = tmp_path / "cache" / "x.npy"
    errors = []

    def write(value):
        try:
            for _ in range(20):
                _save_atomic(target, lambda f: np.save(f, np.full(1000, value)))
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = np.load(target)
    assert got.shape == (1000,) and np.all(got == got[0]) and got[0] in (1.0, 2.0)
    assert [p.name for p in target.parent.iterdir()] == ["x.npy"]

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save_atomic(tmp_path / "cache" / "y.npy", broken)
    assert [p.name for p in target.parent.iterdir()] == ["x.npy"]


def test_sim_cache_key_has_simulator_code_and_magnitude_law(tmp_path):
    """A cache written by another version of galguard.sim, or for another magnitude law, is never
    reused (a stale cache once fed old galaxies to training without a word)."""
    from galguard.training import sim_fingerprint, load_sim_split

    x0, y0 = load_sim_split(seed=1, start=0, n=3, depth="y10", size=16, cache_dir=tmp_path)
    x1, y1 = load_sim_split(seed=1, start=0, n=3, depth="y1", size=16, cache_dir=tmp_path,
                            mag_range=(22.0, 25.0), counts_slope=0.3)
    names = sorted(p.name for p in tmp_path.iterdir())
    fp = sim_fingerprint()
    assert names == [f"sim_s1_a0_n3_px16_v{fp}.npz", f"sim_s1_a0_n3_px16_v{fp}_r22-25_b0.3.npz"]
    np.testing.assert_array_equal(y0, y1)
    # cached read gives the same arrays; the default law written explicitly shares the file
    xc, _ = load_sim_split(seed=1, start=0, n=3, depth="y10", size=16, cache_dir=tmp_path,
                           mag_range=(18.5, 22.5), counts_slope=0)
    np.testing.assert_array_equal(xc, x0)
    assert len(list(tmp_path.iterdir())) == 2
    # the faint law makes less flux than the default law for the same galaxies
    assert x1.sum() < x0.sum()

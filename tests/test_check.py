"""Tests of galguard.check(): the per-galaxy robustness table."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from astropy.io import fits

import galguard
from galguard.checks import COLUMNS, CheckConfig, check_cutouts
from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import Cutouts, read_cutouts

from _tiny import SIZE, fragile_classifier, galaxies, tiny_classifier  # tests/ is put on sys.path by conftest.py

N = 6
FAST = dict(preset="fast", noise_realisations=3)


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(galaxies(64, seed=1), name="tiny-test", sha256="0" * 64)


def cutouts(n=N, seed=0):
    return read_cutouts(galaxies(n, seed), meta={"GAIN": 4.0, "SKYLEVEL": 20.0,
                                                 "BANDS": "g,r,i"})


def test_columns_rows_meta_and_flags(model):
    c = cutouts()
    t = galguard.check(c, model=model, seed=3, **FAST)
    assert tuple(t.colnames) == COLUMNS
    assert len(t) == N
    assert np.array_equal(t["id"], np.asarray(c.meta["id"]))
    assert t["probs"].shape == (N, 3)
    np.testing.assert_allclose(t["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(t["pred_label"], np.argmax(t["probs"], axis=1))
    assert t["onepixel_values"].shape == (N, 3)
    assert np.all(t["error"] == "")
    # Noise metrics in range; latent metrics finite for a model with latent statistics.
    assert np.all((t["noise_flip_rate"] >= 0) & (t["noise_flip_rate"] <= 1))
    assert np.all(np.isfinite(t["noise_prob_drop"]))
    assert np.all(np.isfinite(t["latent_shift_noise"])) and np.all(t["latent_shift_noise"] >= 0)
    assert np.all(np.isfinite(t["ood_score"])) and np.all(t["ood_score"] > 0)
    # One-pixel: a success has a pixel in the image, a different label and a latent shift.
    s = np.asarray(t["onepixel_success"])
    assert not s.any()  # this model resists: rows without a flip (successes: the next test)
    assert np.all(np.isnan(t["latent_shift_onepixel"][~s]))
    assert np.all((t["onepixel_x"] >= 0) & (t["onepixel_x"] < SIZE))
    assert np.all(t["onepixel_queries"] > 0)
    # Verdict flags follow the thresholds of the config.
    cfg = CheckConfig.from_json(t.meta["config"])
    flags = np.asarray(t["flags"])
    assert np.array_equal((flags & Flag.ONEPIXEL_FLIP) != 0, s)
    assert np.array_equal((flags & Flag.NOISE_UNSTABLE) != 0,
                          t["noise_flip_rate"] > cfg.noise_flip_threshold)
    assert np.array_equal((flags & Flag.LOW_CONFIDENCE) != 0, t["pred_prob"] < cfg.low_confidence)
    assert np.array_equal((flags & Flag.OUT_OF_DISTRIBUTION) != 0,
                          t["ood_score"] > cfg.ood_threshold)
    shifted = (t["latent_shift_noise"] > cfg.latent_shift_threshold) | \
        (np.nan_to_num(t["latent_shift_onepixel"]) > cfg.latent_shift_threshold)
    assert np.array_equal((flags & Flag.LATENT_SHIFT) != 0, shifted)
    assert np.array_equal(t["fragile"], (flags & cfg.fragile_flags) != 0)
    # Table meta.
    assert t.meta["galguard_version"] == galguard.__version__
    assert t.meta["model_name"] == "tiny-test"
    assert t.meta["model_sha256"] == "0" * 64
    assert t.meta["seed"] == 3
    assert cfg.seed == 3 and cfg.preset == "fast" and cfg.noise_realisations == 3
    assert json.loads(t.meta["flag_bits"])["ONEPIXEL_FLIP"] == int(Flag.ONEPIXEL_FLIP)


def _assert_tables_equal(a, b):
    assert a.colnames == b.colnames
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert np.array_equal(x, y), name
    assert a.meta == b.meta


def test_onepixel_successes_have_a_pixel_another_label_and_a_latent_shift():
    fragile = fragile_classifier(galaxies(64, seed=1))
    t = galguard.check(cutouts(), model=fragile, seed=3, **FAST)
    s = np.asarray(t["onepixel_success"])
    assert s.any()  # the selections below are not empty
    assert np.all(t["onepixel_label"][s] != t["pred_label"][s])
    assert np.all(np.isfinite(t["latent_shift_onepixel"][s]))
    assert np.all(np.isnan(t["latent_shift_onepixel"][~s]))
    assert np.all((t["onepixel_x"][s] >= 0) & (t["onepixel_x"][s] < SIZE))
    assert np.all((t["flags"][s] & int(Flag.ONEPIXEL_FLIP)) != 0)
    # class names beside the labels
    names = np.array(fragile.classes)
    assert np.all(t["pred_class"] == names[np.asarray(t["pred_label"])])
    assert np.all(t["onepixel_class"][s] == names[np.asarray(t["onepixel_label"])[s]])


def test_same_seed_same_table_whatever_the_chunking(model):
    c = cutouts()
    a = galguard.check(c, model=model, seed=5, **FAST)
    b = galguard.check(c, model=model, seed=5, chunk_size=2, batch_size=3, attack_batch_size=50, **FAST)
    for name in COLUMNS:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind == "f":
            # other batch sizes may take other convolution code paths (CPUs with AVX-512 and
            # AMX do): the last bits of probabilities may differ (README, Determinism)
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=name)
        else:
            assert np.array_equal(x, y), name
    # The configs differ only in chunk_size and batch_size.
    a2 = galguard.check(c, model=model, seed=5, **FAST)
    _assert_tables_equal(a, a2)
    d = galguard.check(c, model=model, seed=6, **FAST)
    assert d.meta["seed"] == 6
    assert not np.array_equal(np.asarray(d["onepixel_values"]), np.asarray(a["onepixel_values"]))


def test_bad_rows_keep_their_place(model, tmp_path):
    data = galaxies(3)
    paths = []
    for i in range(3):
        hdr = fits.Header()
        for b, band in enumerate("gri", 1):
            hdr[f"FILTER{b}"] = band
            hdr[f"GAIN{b}"] = 4.0
            hdr[f"SKYLEV{b}"] = 20.0
        p = tmp_path / f"gal_{i}.fits"
        fits.PrimaryHDU(data[i], header=hdr).writeto(p)
        paths.append(p)
    broken = tmp_path / "gal_1b.fits"
    broken.write_bytes(b"this is not a FITS file")
    missing = tmp_path / "missing.fits"
    source = [str(paths[0]), str(broken), str(paths[1]), str(missing), str(paths[2])]
    before = [p.read_bytes() for p in paths]
    t = galguard.check(source, model=model, **FAST)
    assert len(t) == 5
    bad = np.array([False, True, False, True, False])
    assert np.all(t["error"][bad] != "") and np.all(t["error"][~bad] == "")
    assert np.all((t["flags"][bad] & Flag.BAD_INPUT) != 0)
    assert np.all(t["pred_label"][bad] == -1) and np.all(np.isnan(t["pred_prob"][bad]))
    assert np.all(t["pred_class"][bad] == "") and np.all(t["pred_class"][~bad] != "")
    assert np.all(t["onepixel_x"][bad] == -1) and not np.any(t["onepixel_success"][bad])
    assert np.all(np.isnan(t["noise_flip_rate"][bad])) and np.all(t["fragile"][bad])
    assert list(t["source"][~bad]) == [str(p) for p in paths]
    # The good rows equal a check of the good files alone (row positions key the random
    # streams, so compare the deterministic columns only).
    alone = galguard.check([str(p) for p in paths], model=model, **FAST)
    for name in ("pred_label", "pred_prob", "probs", "ood_score"):
        assert np.array_equal(np.asarray(t[name][~bad]), np.asarray(alone[name])), name
    assert [p.read_bytes() for p in paths] == before


def test_input_flags_are_kept_and_inputs_not_modified(model):
    c = cutouts(3)
    c.meta["flags"][1] = int(Flag.GAIN_ESTIMATED)
    data_before, meta_before = c.data.copy(), c.meta.copy()
    t = galguard.check(c, model=model, **FAST)
    assert t["flags"][1] & Flag.GAIN_ESTIMATED
    assert np.array_equal(c.data, data_before)
    assert np.array_equal(np.asarray(c.meta["flags"]), np.asarray(meta_before["flags"]))


def test_numpy_input_and_wrong_shape_become_error_rows(model):
    t = galguard.check(galaxies(2), model=model, noise=False, preset="default")
    assert len(t) == 2 and np.all(np.isnan(t["noise_flip_rate"]))
    assert np.all(t["error"] == "")
    # Cutouts of a shape the model cannot take: every row an error, no exception.
    c = Cutouts(np.zeros((2, 2, SIZE, SIZE), np.float32))
    t = galguard.check(c, model=model, **FAST)
    assert len(t) == 2
    assert np.all(t["error"] != "") and "does not match the model input" in t["error"][0]
    assert np.all(t["flags"] & Flag.BAD_INPUT)


def test_missing_gain_skips_noise_only(model):
    c = Cutouts(galaxies(2))
    t = galguard.check(c, model=model, **FAST)
    assert np.all(np.isnan(t["noise_flip_rate"])) and np.all(t["error"] == "")
    assert np.all(np.isfinite(t["pred_prob"]))


def test_plain_module_has_nan_latent_metrics():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 3))
    t = galguard.check(cutouts(2), model=net, **FAST)
    assert t.meta["model_name"] == "Sequential"
    assert np.all(np.isnan(t["ood_score"])) and np.all(np.isnan(t["latent_shift_noise"]))
    assert np.all(np.isfinite(t["noise_flip_rate"]))


def test_check_cutouts_offset_matches_whole_run(model):
    c = cutouts()
    cfg = CheckConfig(seed=2, noise_realisations=2)
    whole = check_cutouts(c, cfg, model)
    part = check_cutouts(c[3:], cfg, model, offset=3)
    for name in ("noise_flip_rate", "noise_prob_drop", "onepixel_values", "onepixel_queries"):
        x, y = np.asarray(whole[name][3:]), np.asarray(part[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_config_round_trip_and_validation():
    cfg = CheckConfig(seed=4, bounds=(0.0, [1.0, 2.0, 3.0]))
    assert CheckConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(GalguardValueError, match="preset must be one of .* got 'slow'"):
        CheckConfig(preset="slow")
    with pytest.raises(GalguardValueError, match=r"depth_fraction must be in \(0.0, 1.0\], got 0"):
        CheckConfig(depth_fraction=0)
    with pytest.raises(GalguardValueError, match="noise_realisations must be an integer >= 1"):
        CheckConfig(noise_realisations=0)
    with pytest.raises(GalguardValueError, match="fragile_flags must only hold verdict bits"):
        CheckConfig(fragile_flags=int(Flag.BAD_INPUT))
    with pytest.raises(GalguardValueError, match="config has unknown option"):
        CheckConfig.from_dict({"sead": 1})


def test_check_bad_options(model):
    with pytest.raises(GalguardValueError, match=r"unknown check option\(s\) \['sead'\]"):
        galguard.check(cutouts(1), model=model, sead=1)
    with pytest.raises(GalguardValueError, match="model must be a model name, a path or a "
                                                 "torch.nn.Module, got int"):
        galguard.check(cutouts(1), model=3)


@pytest.mark.slow
def test_galguard_check_is_a_function_whatever_the_import_order():
    # In a fresh process: the function first, then the implementation package (issue: the
    # callable-module trick made `galguard.check` a module or a function by import order).
    code = ("import galguard, types; f = galguard.check; import galguard.checks as m; "
            "assert m.CheckConfig is galguard.CheckConfig; assert galguard.check is f; "
            "assert isinstance(f, types.FunctionType); assert m.check is f; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert isinstance(galguard.check, types.FunctionType)
    assert galguard.CheckConfig is CheckConfig

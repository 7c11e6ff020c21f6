"""Reliability: no pixel or header value stops a batch, concurrent runs never mix, hostile files
and misuse get clear errors (the fuzz campaign's findings, each with its test)."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

import galguard
from _tiny import SIZE, galaxies, tiny_classifier  # tests/ is put on sys.path by conftest.py
from galguard import cli
from galguard.catalog import read_catalog
from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import read_cutouts
from galguard.models import save

FAST = dict(preset="fast", noise_realisations=3)


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(galaxies(64, seed=1), name="tiny-rel", sha256="0" * 64)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    return save(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")[0]


def write(path, data, **cards):
    h = fits.Header()
    h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
    for k, v in cards.items():
        h[k] = v
    fits.PrimaryHDU(data, header=h).writeto(path, overwrite=True)
    return path


# ------------------------------------------------------------------------------------------------
# 1. one bright pixel, a huge pixel value or a huge gain never stops a batch

@pytest.mark.parametrize("pixel, gain", [(4e5, 5520.0), (3e38, 4.0), (50.0, 1e30)])
def test_one_bright_pixel_or_huge_gain_does_not_stop_the_batch(model, pixel, gain):
    x = galaxies(4, seed=2)
    x[1, 1, 8, 8] = pixel
    gains = np.full(4, 4.0)
    gains[1] = gain
    meta = Table({"gain": gains, "sky": np.full(4, 20.0)}, meta={"BANDS": "g,r,i"})
    cut = read_cutouts(x, meta=meta)  # per-row values: a Table (a dict is header-like)
    t = galguard.check(cut, model=model, **FAST)
    assert len(t) == 4 and np.all(t["error"] == "")
    assert t["flags"][1] & int(Flag.NOISE_SKIPPED) and np.isnan(t["noise_flip_rate"][1])
    others = [0, 2, 3]
    assert np.all(np.isfinite(t["noise_flip_rate"][others]))
    assert not np.any(t["flags"][others] & int(Flag.NOISE_SKIPPED))
    assert t["pred_label"][1] >= 0  # the row still has its prediction and attack


def test_bright_pixel_in_a_batch_run_writes_the_catalog_and_resumes(model_path, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    x = galaxies(3, seed=4)
    x[2, 0, 3, 3] = 4e5
    for i in range(3):
        write(d / f"g{i}.fits", x[i], GAIN=5520.0 if i == 2 else 4.0)
    out = tmp_path / "cat.parquet"
    rc = cli.main(["check", str(d), "-o", str(out), "--model", str(model_path), "--no-onepixel",
                   "--noise-realisations", "2", "--quiet"])
    assert rc == cli.EXIT_OK
    t = read_catalog(out)
    assert len(t) == 3 and t["flags"][2] & int(Flag.NOISE_SKIPPED)


@pytest.mark.parametrize("cards", [{"GAIN": 0.0}, {"GAIN": -3.0}, {"SKYLEVEL": -1e6}])
def test_unusable_gain_or_sky_is_flagged_not_silent(model, tmp_path, cards):
    p = write(tmp_path / "g.fits", galaxies(1, seed=5)[0], **cards)
    t = galguard.check([str(p)], model=model, **FAST)
    assert t["error"][0] == ""
    assert t["flags"][0] & int(Flag.NOISE_SKIPPED) and np.isnan(t["noise_flip_rate"][0])


def test_a_check_that_fails_on_one_row_leaves_the_others(model, monkeypatch):
    """The guard below every check: if a chunk fails, its rows are retried one by one and only
    the failing row becomes an error row."""
    from galguard.checks import base

    real = base.Prediction.run

    def flaky(self, m, ctx):
        if bool((ctx.images[:, 0, 0, 0] == 1234.5).any()):
            raise RuntimeError("boom")
        return real(self, m, ctx)

    monkeypatch.setattr(base.Prediction, "run", flaky)
    x = galaxies(3, seed=6)
    x[1, 0, 0, 0] = 1234.5
    cut = read_cutouts(x, meta={"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"})
    t = galguard.check(cut, model=model, **FAST)
    assert len(t) == 3
    assert "boom" in t["error"][1] and t["flags"][1] & int(Flag.BAD_INPUT)
    assert t["error"][0] == "" and t["error"][2] == "" and t["pred_label"][2] >= 0


def test_a_model_that_cannot_take_the_input_gives_row_errors_naming_it(tmp_path):
    class Wrong(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(7, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    cut = read_cutouts(galaxies(2), meta={"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"})
    t = galguard.check(cut, model=Wrong(), **FAST)
    assert len(t) == 2 and np.all(t["flags"] & int(Flag.BAD_INPUT))
    assert "model Wrong" in t["error"][0] and f"(3, {SIZE}, {SIZE})" in t["error"][0]

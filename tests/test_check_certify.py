"""The one-pixel check's threat models, physical bounds and exact verdicts (certify)."""

import json

import numpy as np
import pytest
import torch
from astropy.io import fits

import galguard
from galguard import cli
from galguard.checks import CheckConfig, physical_bounds
from galguard.errors import GalguardValueError
from galguard.io import read_cutouts
from galguard.models import save

from _tiny import SIZE, fragile_classifier, galaxies  # tests/ is put on sys.path by conftest.py

N = 8


@pytest.fixture(scope="module")
def model():
    return fragile_classifier(galaxies(64, seed=1), name="fragile-cert")


def cutouts(n=N, seed=3, **meta):
    return read_cutouts(galaxies(n, seed), meta={"GAIN": 4.0, "SKYLEVEL": 20.0,
                                                 "BANDS": "g,r,i", **meta})


def flips_on_a_band_grid(model, image, label, lo, hi, steps=9):
    """Oracle: does any single band of any pixel, at any of `steps` values, flip `image`?"""
    C, H, W = image.shape
    with torch.inference_mode():
        for band in range(C):
            vals = torch.linspace(float(lo[band]), float(hi[band]), steps)
            adv = image.expand(H * W * steps, -1, -1, -1).clone()
            pos = torch.arange(H * W).repeat_interleave(steps)
            adv[torch.arange(len(adv)), band, pos // W, pos % W] = vals.repeat(H * W)
            _, logits = model(adv)
            if bool((logits.argmax(1) != label).any()):
                return True
    return False


def test_certify_gives_exact_verdicts_that_hold(model):
    c = cutouts()
    t = galguard.check(c, model=model, preset="fast", noise=False, threat="band_pixel",
                       certify=True, certify_boxes=20000)
    status = list(t["onepixel_status"])
    assert set(status) <= {"flip", "certified", "unknown"}
    assert "certified" in status and "flip" in status
    assert np.array_equal(t["onepixel_certified"], np.array(status) == "certified")
    assert np.array_equal(t["onepixel_success"], np.array(status) == "flip")
    meta = json.loads(t.meta["threat_models"])
    assert meta[0]["threat"] == "band_pixel" and meta[0]["certified"]
    images = torch.from_numpy(c.data)
    lo, hi = physical_bounds("cutout", model, images)
    for i, st in enumerate(status):
        label = int(t["pred_label"][i])
        if st == "certified":       # sound: no single-band value on a grid flips it
            assert not flips_on_a_band_grid(model, images[i], label, lo[i], hi[i])
        elif st == "flip":          # real: the reported pixel flips it, in one band
            adv = images[i:i + 1].clone()
            adv[0, :, t["onepixel_y"][i], t["onepixel_x"][i]] = \
                torch.from_numpy(np.asarray(t["onepixel_values"][i]))
            assert int((adv != images[i:i + 1]).any(dim=(2, 3)).sum()) == 1
            assert int((adv != images[i:i + 1]).any(dim=(2, 3))[0].nonzero()) == \
                int(t["onepixel_band"][i])
            with torch.inference_mode():
                assert int(model(adv)[1].argmax(1)) != label


def test_without_certify_no_flip_is_unknown_and_the_threat_is_recorded(model):
    t = galguard.check(cutouts(4), model=model, preset="fast", noise=False,
                       threat="bad_column", artefact_length=3)
    assert set(t["onepixel_status"]) <= {"flip", "unknown"}
    assert not t["onepixel_certified"].any()
    assert t["onepixel_x"].shape == (4, 3)
    assert (t["onepixel_band"] >= 0).all()
    meta = json.loads(t.meta["threat_models"])
    assert meta == [{"threat": "bad_column", "changes": meta[0]["changes"], "pixels": 3,
                     "bounds": "cutout", "certified": False, "certify_boxes": None}]
    off = galguard.check(cutouts(2), model=model, preset="fast", noise=False, onepixel=False)
    assert list(off["onepixel_status"]) == ["", ""]


@pytest.mark.parametrize("kwargs,match", [
    (dict(threat="band_pixel", pixels=2), "pixels must be 1"),
    (dict(certify=True, pixels=2), "certify needs pixels=1"),
    (dict(threat="meteor"), "threat"),
    (dict(certify_boxes=0), "certify_boxes"),
])
def test_bad_certify_and_threat_options(kwargs, match):
    with pytest.raises(GalguardValueError, match=match):
        CheckConfig(**kwargs)


def test_saturation_bounds_come_from_the_header_less_the_sky(model, tmp_path):
    x = galaxies(2, seed=5)
    paths = []
    for i, sat in enumerate((5000.0, None)):
        h = fits.Header()
        h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
        if sat is not None:
            h["SATURATE"] = sat
        p = tmp_path / f"g{i}.fits"
        fits.PrimaryHDU(x[i], header=h).writeto(p)
        paths.append(str(p))
    c = read_cutouts(paths)
    assert np.allclose(c.meta["saturation"][0], 5000.0)
    assert np.isnan(c.meta["saturation"][1]).all()
    images = torch.from_numpy(c.data)
    lo, hi = physical_bounds("saturation", model, images, c.meta)
    clo, chi = physical_bounds("cutout", model, images, c.meta)
    assert torch.equal(lo, clo)
    sky = np.asarray(c.meta["sky"][0], np.float64)
    np.testing.assert_allclose(hi[0].numpy(), 5000.0 - sky, rtol=1e-6)
    assert torch.equal(hi[1], chi[1])               # unknown: the cutout's own maximum
    t = galguard.check(c, model=model, preset="fast", noise=False, bounds="saturation")
    vals = np.asarray(t["onepixel_values"])
    assert (vals <= hi.numpy() + 1e-3).all() and (vals >= lo.numpy() - 1e-3).all()


def test_cli_certify_and_threat_flags(model, tmp_path, capsys):
    mpath = save(model, tmp_path / "m.safetensors")[0]
    x = galaxies(3, seed=7)
    files = []
    for i in range(3):
        h = fits.Header()
        h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
        p = tmp_path / f"c{i}.fits"
        fits.PrimaryHDU(x[i], header=h).writeto(p)
        files.append(str(p))
    out = tmp_path / "cat.fits"
    rc = cli.main(["check", *files, "-o", str(out), "--model", str(mpath), "--no-noise",
                   "--preset", "fast", "--threat", "band_pixel", "--certify",
                   "--certify-boxes", "4000", "--format", "fits"])
    assert rc in (0, 1)
    from galguard.catalog import read_catalog
    t = read_catalog(out)
    assert len(t) == 3 and x.shape[-1] == SIZE
    status = list(t["onepixel_status"])
    assert set(status) <= {"flip", "certified", "unknown"}
    # the summary line counts the verdicts
    err = capsys.readouterr().err
    assert "one-pixel verdicts: " + ", ".join(
        f"{v} {status.count(v)}" for v in ("certified", "flip", "unknown")) in err
    # the demo's table says which rows are proved robust
    from galguard._cli.demo import summary_table
    assert summary_table(t).count("none: certified") == status.count("certified")
    assert json.loads(t.meta["threat_models"])[0]["threat"] == "band_pixel"


def test_certify_gives_verdicts_for_artefact_threats(model):
    c = cutouts(6)
    t = galguard.check(c, model=model, preset="fast", noise=False, threat="bad_column",
                       artefact_length=3, certify=True, certify_boxes=20000)
    status = np.array(t["onepixel_status"])
    assert set(status) <= {"flip", "certified", "unknown"}
    assert "certified" in status and "flip" in status
    assert np.array_equal(t["onepixel_success"], status == "flip")
    images = torch.from_numpy(c.data)
    lo, hi = images.amin(dim=(2, 3)), images.amax(dim=(2, 3))
    for i in np.flatnonzero(status == "flip"):
        ys, xs = torch.as_tensor(t["onepixel_y"][i]), torch.as_tensor(t["onepixel_x"][i])
        assert (xs == xs[0]).all() and (ys.diff() == 1).all()       # a column segment
        adv = images[i].clone()
        adv[:, ys, xs] = torch.from_numpy(np.asarray(t["onepixel_values"][i])).T
        band = (adv != images[i]).any(dim=(1, 2))
        assert int(band.sum()) == 1 and int(band.nonzero()) == int(t["onepixel_band"][i])
        with torch.inference_mode():
            assert int(model(adv[None])[1].argmax(1)) != int(t["pred_label"][i])
    for i in np.flatnonzero(status == "certified"):     # no segment at a grid value flips it
        C, H, W = images[i].shape
        with torch.inference_mode():
            for band in range(C):
                for v in torch.linspace(float(lo[i, band]), float(hi[i, band]), 7):
                    adv = images[i].expand((H - 2) * W, -1, -1, -1).clone()
                    p = torch.arange((H - 2) * W)
                    for j in range(3):
                        adv[p, band, p // W + j, p % W] = v
                    assert bool((model(adv)[1].argmax(1) == int(t["pred_label"][i])).all())

"""Your own model: wrap any torch CNN, save it with its factory, load it without pickle (also in
a fresh process), and check cutouts with it from Python and from the command line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import galguard
from _tiny import SIZE, galaxies  # tests/ is put on sys.path by conftest.py
from galguard import cli
from galguard.catalog import read_catalog
from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import read_cutouts
from galguard.models import fit_latent_stats, load, save, wrap

USER_PACKAGE = '''
import torch
from torch import nn


class SurveyNet(nn.Module):
    """A user's CNN: its own normalisation, logits only."""

    def __init__(self, width=8, n_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.embed = nn.Linear(4 * width, 6)
        self.head = nn.Linear(6, n_classes)

    def forward(self, x):
        x = torch.asinh(x / 50.0)
        return self.head(torch.relu(self.embed(self.features(x))))


def build(width=8):
    torch.manual_seed(0)
    return SurveyNet(width=width)


def not_a_module(width=8):
    return "nope"
'''


@pytest.fixture(scope="module")
def user_pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("userpkg")
    (d / "survey_models.py").write_text(textwrap.dedent(USER_PACKAGE))
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def saved(user_pkg, tmp_path_factory):
    import survey_models

    model = wrap(survey_models.build(width=8), classes=("spiral", "elliptical", "merger"),
                 bands="gri", input_size=SIZE, latent_layer="embed", name="survey-net")
    x = galaxies(48, seed=3)
    lat = model.embed(x)
    model.set_latent_stats(fit_latent_stats(lat, np.arange(48) % 3, 3))
    path = tmp_path_factory.mktemp("saved") / "survey.safetensors"
    w, c = save(model, path, factory="survey_models:build", factory_kwargs={"width": 8})
    return model, w, c


def test_wrap_gives_a_classifier_with_latents_from_a_hook(saved):
    model = saved[0]
    assert model.classes == ("spiral", "elliptical", "merger") and model.bands == ("g", "r", "i")
    assert model.latent_dim == 6
    probs = model.predict(galaxies(4))
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert model.embed(galaxies(2)).shape == (2, 6)


def test_save_records_the_factory_and_load_rebuilds_the_same_model(saved, user_pkg):
    model, w, c = saved
    card = json.loads(c.read_text())
    assert card["architecture"] == "wrapped" and card["factory"] == "survey_models:build"
    assert card["factory_kwargs"] == {"width": 8} and card["latent_layer"] == "embed"
    again = load(w)
    x = galaxies(5, seed=9)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.sha256 == card["sha256"] and again.latent_stats is not None
    # in a fresh process, with the user's package importable as it would be when installed
    env = {**os.environ, "PYTHONPATH": str(user_pkg)}
    code = (f"from galguard.models import load; m = load({str(w)!r}); "
            "print(m.name, m.latent_dim, type(m.network.module).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["survey-net", "6", "SurveyNet"]


def test_check_with_a_wrapped_model_from_python_and_the_cli(saved, tmp_path):
    model, w, _ = saved
    cut = read_cutouts(galaxies(4, seed=11), meta={"GAIN": 4.0, "SKYLEVEL": 20.0,
                                                   "BANDS": "g,r,i"})
    t = galguard.check(cut, model=model, preset="fast", noise_realisations=3)
    assert np.all(t["error"] == "") and np.all(np.isfinite(t["ood_score"]))
    assert set(t["pred_class"]) <= {"spiral", "elliptical", "merger"}
    assert np.all(np.isfinite(t["latent_shift_noise"]))
    from astropy.io import fits
    d = tmp_path / "in"
    d.mkdir()
    for i, img in enumerate(galaxies(3, seed=12)):
        h = fits.Header()
        h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
        fits.PrimaryHDU(img, header=h).writeto(d / f"g{i}.fits")
    out = tmp_path / "cat.parquet"
    assert cli.main(["check", str(d), "-o", str(out), "--model", str(w), "--preset", "fast",
                     "--noise-realisations", "2", "--quiet"]) == cli.EXIT_OK
    cat = read_catalog(out)
    assert len(cat) == 3 and np.all(np.isfinite(cat["ood_score"]))
    assert cat.meta["model_name"] == "survey-net"
    # cutouts of another size than the model's: error rows that say what the model expects
    wrong = read_cutouts(np.zeros((1, 3, SIZE + 4, SIZE + 4), np.float32))
    t = galguard.check(wrong, model=model, preset="fast", noise=False)
    assert t["flags"][0] & int(Flag.BAD_INPUT) and f"(3, {SIZE}, {SIZE})" in t["error"][0]


def test_wrap_argument_errors_name_the_argument(user_pkg):
    import survey_models

    net = survey_models.build()
    with pytest.raises(GalguardValueError, match=r"latent_layer must name a submodule.*'embed'"):
        wrap(net, classes="abc", bands="gri", input_size=SIZE, latent_layer="nope")
    with pytest.raises(GalguardValueError, match=r"logits of shape \(1, 3\).*expected \(1, 2\)"):
        wrap(net, classes=("a", "b"), bands="gri", input_size=SIZE)
    with pytest.raises(GalguardValueError, match="fails on a"):
        wrap(net, classes="abc", bands="grizy", input_size=SIZE)
    with pytest.raises(GalguardValueError, match="module must be a torch.nn.Module"):
        wrap(object(), classes="abc", bands="gri", input_size=SIZE)
    m = wrap(net, classes="abc", bands="gri", input_size=SIZE)
    with pytest.raises(GalguardValueError, match="factory must be given"):
        save(m, "/tmp/never.safetensors")


@pytest.mark.parametrize("edit, match", [
    ({"factory": "no_such_package_xyz:build"}, "cannot be imported"),
    ({"factory": "survey_models:not_a_module"}, "not a torch.nn.Module"),
    ({"factory": "survey_models:missing"}, "is not a callable"),
    ({"factory": "survey_models"}, "factory must be 'package.module:callable'"),
    ({"factory_kwargs": {"width": 4}}, "tensor 'network.module.features.0.weight' has shape"),
    ({"factory_kwargs": {"depth": 4}}, "failed with"),
])
def test_factory_problems_are_named(saved, tmp_path, edit, match):
    import shutil

    _, w, c = saved
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(w, d / w.name)
    card = json.loads(c.read_text())
    card.update(edit)
    (d / c.name).write_text(json.dumps(card))
    with pytest.raises(GalguardValueError, match=match):
        load(d / w.name)


def test_pickles_are_still_refused_for_user_models(saved, tmp_path):
    _, w, c = saved
    p = tmp_path / "survey.safetensors"
    p.write_bytes(b"\x80\x04" + w.read_bytes()[2:])
    (tmp_path / "survey.json").write_text(c.read_text())
    with pytest.raises(GalguardValueError, match="pickled"):
        load(p)
    torch.save({"x": torch.zeros(1)}, tmp_path / "m.pt")
    with pytest.raises(GalguardValueError, match="pickled"):
        load(tmp_path / "m.pt")


# ------------------------------------------------------------------------------------------------
# calibration on your own data

def reference_files(d, n=12, seed=20):
    from astropy.io import fits

    d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(galaxies(n, seed=seed)):
        h = fits.Header()
        h["BANDS"], h["GAIN"], h["SKYLEVEL"], h["TRUELAB"] = "g,r,i", 4.0, 20.0, i % 3
        fits.PrimaryHDU(img, header=h).writeto(d / f"r{i:02d}.fits")
    (d / "broken.fits").write_bytes(b"not fits at all")
    return d


def test_calibrate_sets_thresholds_that_check_uses_unless_given(saved, tmp_path):
    from galguard.models import calibrate

    model = saved[0]
    ref = reference_files(tmp_path / "ref")
    # input order: broken.fits (a bad row: its label is not used) before r00 ... r11
    with pytest.raises(GalguardValueError, match=r"must be in 0..2, got values in -1"):
        calibrate(model, str(ref), labels=np.r_[np.arange(12) % 3, -1])
    cal = calibrate(model, str(ref), labels=np.r_[-1, np.arange(12) % 3], percentile=90)
    info = cal.card["calibration"]
    assert info["n_reference"] == 12 and info["n_skipped"] == 1 and info["labels"] == "given"
    thr = cal.card["thresholds"]
    assert set(thr) == {"ood_threshold", "latent_shift_threshold"}
    assert model.card.get("thresholds") is None  # the input model is not modified
    cut = read_cutouts(galaxies(3, seed=30), meta={"GAIN": 4.0, "SKYLEVEL": 20.0,
                                                   "BANDS": "g,r,i"})
    t = galguard.check(cut, model=cal, onepixel=False, noise_realisations=2)
    cfg = json.loads(t.meta["config"])
    assert cfg["ood_threshold"] == pytest.approx(thr["ood_threshold"])
    t = galguard.check(cut, model=cal, onepixel=False, noise_realisations=2, ood_threshold=7.0)
    assert json.loads(t.meta["config"])["ood_threshold"] == 7.0
    with pytest.raises(GalguardValueError, match="no galaxy of class"):
        calibrate(model, str(ref), labels=np.zeros(13, int))
    with pytest.raises(GalguardValueError, match="one value per reference cutout"):
        calibrate(model, str(ref), labels=np.zeros(5, int))


def test_cli_calibrate_then_check_uses_the_card(saved, tmp_path, capsys):
    _, w, _ = saved
    ref = reference_files(tmp_path / "ref")
    out = tmp_path / "cal.safetensors"
    assert cli.main(["calibrate", "--model", str(w), str(ref), "--labels", "header",
                     "-o", str(out), "-q"]) == cli.EXIT_OK
    assert "12 reference galaxies (1 skipped)" in capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["factory"] == "survey_models:build" and "thresholds" in card
    assert cli.main(["calibrate", "--model", str(w), str(ref), "-o", str(out)]) == \
        cli.EXIT_USAGE  # exists
    cat = tmp_path / "cat.ecsv"
    assert cli.main(["check", str(ref / "r00.fits"), "-o", str(cat), "--model", str(out),
                     "--no-onepixel", "--noise-realisations", "2", "--quiet"]) == cli.EXIT_OK
    cfg = json.loads(read_catalog(cat).meta["config"])
    assert cfg["ood_threshold"] == pytest.approx(card["thresholds"]["ood_threshold"])
    assert cli.main(["check", str(ref / "r00.fits"), "-o", str(cat), "--model", str(out),
                     "--no-onepixel", "--noise-realisations", "2", "--quiet", "--overwrite",
                     "--ood-threshold", "9"]) == cli.EXIT_OK
    assert json.loads(read_catalog(cat).meta["config"])["ood_threshold"] == 9.0


def test_wrap_with_galguard_preprocessing_round_trips(user_pkg, tmp_path):
    import survey_models

    from galguard.models import Preprocess

    x = galaxies(16, seed=40)
    model = wrap(survey_models.build(), classes="abc", bands="gri", input_size=SIZE,
                 preprocess=Preprocess.from_data(x), latent_layer="embed")
    w, c = save(model, tmp_path / "p.safetensors", factory="survey_models:build")
    card = json.loads(c.read_text())
    assert card["preprocess"] == "galguard" and "clip_lo" in card["preprocessing"]
    again = load(w)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_summary_names_classes_and_calibrate_takes_a_label_catalog(saved, tmp_path, capsys):
    from astropy.table import Table

    _, w, _ = saved
    ref = reference_files(tmp_path / "ref")
    names = ["spiral", "elliptical", "merger"]
    Table({"label": ["spiral"] + [names[i % 3] for i in range(12)]}).write(
        tmp_path / "labels.ecsv")
    out = tmp_path / "cal.safetensors"
    assert cli.main(["calibrate", "--model", str(w), str(ref), "--labels",
                     str(tmp_path / "labels.ecsv"), "-o", str(out), "-q"]) == cli.EXIT_OK
    assert json.loads(out.with_suffix(".json").read_text())["calibration"]["labels"] == "given"
    capsys.readouterr()
    assert cli.main(["check", str(ref), "-o", str(tmp_path / "c.parquet"), "--model", str(out),
                     "--no-onepixel", "--noise-realisations", "2"]) == cli.EXIT_BAD_INPUTS
    err = capsys.readouterr().err
    assert "predicted: " in err and any(n in err for n in names)


def test_a_non_square_input_size_round_trips_and_checks(user_pkg, tmp_path):
    import survey_models

    model = wrap(survey_models.build(), classes="abc", bands="gri", input_size=(16, 24),
                 latent_layer="embed")
    assert model.input_hw == (16, 24)
    w, c = save(model, tmp_path / "ns.safetensors", factory="survey_models:build")
    assert json.loads(c.read_text())["input_size"] == [16, 24]
    again = load(w)
    x = np.random.default_rng(0).normal(10, 2, (2, 3, 16, 24)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    t = galguard.check(read_cutouts(x, meta={"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"}),
                       model=again, preset="fast", noise_realisations=2)
    assert np.all(t["error"] == "") and t["onepixel_x"].max() < 24
    # cutouts of another shape are centre-cropped / padded to the model's (16, 24), flagged
    t = galguard.check(np.ones((1, 3, 24, 16), np.float32), model=again, noise=False,
                       preset="fast")
    assert t["flags"][0] & int(Flag.RESIZED) and t["error"][0] == ""

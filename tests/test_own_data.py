"""Survey data: image/variance/mask planes in multi-extension FITS (per band, cubes, stacks),
mask bits, the noise model measured from the variance, and guessed gains made honest."""

import pickle

import numpy as np
import pytest
import torch
from astropy.io import fits

import galguard
from _tiny import fragile_classifier  # tests/ is put on sys.path by conftest.py
from galguard import cli
from galguard.catalog import read_catalog
from galguard.flags import Flag
from galguard.io import Cutouts, iter_cutouts, read_cutouts, variance_gain
from galguard.sim import simulate, write_fits
from galguard.sim._fits import variance_of

SIZE = 32


@pytest.fixture(scope="module")
def sims():
    return simulate(12, seed=5, start=0, depths=("y10",), size=SIZE)["y10"]


@pytest.fixture(scope="module")
def files(sims, tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    write_fits(sims, d / "plain")
    write_fits(sims, d / "mef", planes=True, noise_keywords=False)
    write_fits(sims, d / "stack", planes=True, noise_keywords=False, stack=True)
    return d


@pytest.fixture(scope="module")
def model(sims):
    return fragile_classifier(sims.images, name="fragile-own", sha256="1" * 64)


def test_mef_planes_are_one_cutout_each_with_its_variance(files, sims):
    """Primary + IMAGE/MASK/VARIANCE per band: 12 files give 12 cutouts (not 36 or 120), the
    pixels of the plain files, and the variance plane."""
    plain = read_cutouts(files / "plain")
    for name in ("mef", "stack"):
        cut = read_cutouts(files / name)
        assert len(cut) == 12 and cut.bands == ("g", "r", "i")
        np.testing.assert_array_equal(cut.data, plain.data)
        np.testing.assert_array_equal(cut.meta["id"], plain.meta["id"])
        np.testing.assert_array_equal(cut.meta["true_label"], plain.meta["true_label"])
        np.testing.assert_allclose(cut.variance, variance_of(sims), rtol=1e-6)
        assert not cut.mask.any()
    assert plain.variance is None


def test_gain_and_sky_recovered_from_the_variance_without_keywords(files, sims):
    """GAIN and SKYLEV removed: the variance gives both within 5 % (here far better, since the
    variance is computed from the image as Rubin's ISR does), without an "estimated" flag."""
    cut = read_cutouts(files / "mef")
    np.testing.assert_allclose(cut.meta["gain"], sims.meta["gain"], rtol=0.05)
    np.testing.assert_allclose(cut.meta["sky"], sims.meta["sky"], rtol=0.05)
    est = int(Flag.GAIN_ESTIMATED | Flag.SKY_ESTIMATED | Flag.HEADER_INCOMPLETE)
    assert not np.any(cut.meta["flags"] & est)


def test_variance_gain_with_a_model_variance_and_read_noise(rng):
    """A noiseless-model variance (not the observed image's) gives an unbiased fit too; read
    noise goes into the effective sky s + g rn^2."""
    g, s, rn = 4.0, 30.0, 2.0
    yy, xx = np.mgrid[:48, :48]
    m = 400 * np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / 40.0)
    f = (rng.poisson(g * (m + s)) + rng.normal(0, rn * g, m.shape)) / g - s
    var = (m + s) / g + rn ** 2
    gain, sky = variance_gain(f[None], var[None])
    assert gain[0] == pytest.approx(g, rel=0.03)
    assert sky[0] == pytest.approx(s + g * rn ** 2, rel=0.05)
    # the sky given: the median of (f + s) / var
    gain2, _ = variance_gain(f[None], var[None], sky=np.array([s + g * rn ** 2]))
    assert gain2[0] == pytest.approx(g, rel=0.03)
    # a flat image cannot separate the gain from the sky: no estimate
    flat = rng.poisson(g * s, (1, 32, 32)) / g - s
    assert np.isnan(variance_gain(flat, np.full(flat.shape, s / g))[0][0])


def _legacy(tmp_path, rng, ivar_zero=5):
    g, s = 3.0, 40.0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    m = 300 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 20.0)
    cube = np.stack([rng.poisson(g * (m * w + s)) / g - s for w in (0.5, 1.0, 1.5)])
    ivar = g / np.maximum(cube + s, 1e-3)
    ivar[0, 0, :ivar_zero] = 0.0  # no data there
    h = fits.Header()
    h["BAND0"], h["BAND1"], h["BAND2"] = "g", "r", "z"
    p = tmp_path / "legacy.fits"
    fits.HDUList([fits.PrimaryHDU(cube.astype(np.float32), h),
                  fits.ImageHDU(ivar.astype(np.float32), name="INVVAR")]).writeto(p)
    return p, g, s


def test_legacy_cube_with_inverse_variance(tmp_path, rng):
    p, g, s = _legacy(tmp_path, rng)
    cut = read_cutouts(p)
    assert len(cut) == 1 and cut.bands == ("g", "r", "z")
    np.testing.assert_allclose(cut.meta["gain"][0], g, rtol=0.05)
    np.testing.assert_allclose(cut.meta["sky"][0], s, rtol=0.05)
    # ivar 0 means no data: those pixels are masked, and the row says so
    assert cut.mask[0, 0, 0, :5].all() and cut.mask.sum() == 5
    assert cut.meta["flags"][0] & int(Flag.VARIANCE_INVALID)
    assert np.isinf(cut.variance[0, 0, 0, :5]).all()


def _rubin_like(path, data, mask, variance, mask_header=None, extra=()):
    mh = fits.Header()
    for k, v in (mask_header or {}).items():
        mh[f"HIERARCH {k}"] = v
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="IMAGE"),
                  fits.ImageHDU(mask, mh, name="MASK"), fits.ImageHDU(variance, name="VARIANCE"),
                  *extra]).writeto(path)
    return path


def test_mask_bits_by_name_and_number(tmp_path, rng):
    data = rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[1, 1] = 1 << 1   # SAT
    mask[2, 2] = 1 << 3   # CR
    mask[3, 3] = 1 << 5   # DETECTED (not a defect)
    var = np.ones((SIZE, SIZE), np.float32)
    cards = {"MP_BAD": 0, "MP_SAT": 1, "MP_CR": 3, "MP_DETECTED": 5}
    p = _rubin_like(tmp_path / "r.fits", data, mask, var, cards)
    assert read_cutouts(p).mask.sum() == 3  # default: every set bit
    m = read_cutouts(p, mask_bits="SAT,CR").mask[0, 0]
    assert m.sum() == 2 and m[1, 1] and m[2, 2]
    m = read_cutouts(p, mask_bits=["mp_sat", 5]).mask[0, 0]
    assert m.sum() == 2 and m[1, 1] and m[3, 3]
    bad = read_cutouts(p, mask_bits="NO_DATA")
    assert bad.meta["flags"][0] & int(Flag.BAD_INPUT)
    assert "MP_NO_DATA" in bad.meta["error"][0] and "DETECTED" in bad.meta["error"][0]
    with pytest.raises(galguard.GalguardValueError, match="mask_bits"):
        read_cutouts(p, mask_bits="99")


def test_per_band_planes_pair_by_filter_in_any_order(tmp_path, rng):
    """Band extensions with their planes listed in another order are paired by FILTER."""
    hdus = [fits.PrimaryHDU()]
    imgs = {}
    for b, level in (("g", 1.0), ("r", 2.0)):
        imgs[b] = np.full((SIZE, SIZE), level, np.float32)
        hdus.append(fits.ImageHDU(imgs[b], fits.Header([("FILTER", b)]), name="SCI"))
    for b, var in (("r", 20.0), ("g", 10.0)):  # reversed
        hdus.append(fits.ImageHDU(np.full((SIZE, SIZE), var, np.float32),
                                  fits.Header([("FILTER", b)]), name="VAR"))
    fits.HDUList(hdus).writeto(tmp_path / "b.fits")
    cut = read_cutouts(tmp_path / "b.fits")
    assert len(cut) == 1 and cut.bands == ("g", "r")
    assert cut.variance[0, 0, 0, 0] == 10.0 and cut.variance[0, 1, 0, 0] == 20.0


def test_planes_that_do_not_pair_are_a_clear_bad_row(tmp_path):
    a = np.zeros((SIZE, SIZE), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(a, name="IMAGE"),
                  fits.ImageHDU(a + 1, name="VARIANCE"), fits.ImageHDU(a + 2, name="VARIANCE")]
                 ).writeto(tmp_path / "two.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(a, name="IMAGE"),
                  fits.ImageHDU(np.ones((8, 8), np.float32), name="VARIANCE")]
                 ).writeto(tmp_path / "shape.fits")
    cut = read_cutouts([str(tmp_path / "two.fits"), str(tmp_path / "shape.fits")])
    assert np.all(cut.meta["flags"] & int(Flag.BAD_INPUT))
    assert "2 variance HDUs" in cut.meta["error"][0]
    assert "shape" in cut.meta["error"][1]


def test_variance_travels_through_chunks_slices_resizing_and_pickling(files):
    whole = read_cutouts(files / "stack")
    chunks = list(iter_cutouts(files / "stack", chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    joined = Cutouts.concatenate(chunks)
    np.testing.assert_array_equal(joined.variance, whole.variance)
    np.testing.assert_array_equal(whole[3:5].variance, whole.variance[3:5])
    back = pickle.loads(pickle.dumps(whole[[0, 2]]))  # how chunks travel to Dask workers
    np.testing.assert_array_equal(back.variance, whole.variance[[0, 2]])
    big = read_cutouts(files / "mef", size=SIZE + 4)
    assert big.variance.shape == (12, 3, SIZE + 4, SIZE + 4)
    np.testing.assert_array_equal(big.variance[:, :, 2:-2, 2:-2], whole.variance)
    assert big.mask[:, :, :2].all() and not big.mask[:, :, 2:-2, 2:-2].any()
    # a batch without a variance joined to one with: NaN (unknown) for the former
    mixed = Cutouts.concatenate([whole[:2], read_cutouts(files / "plain")[:1]])
    assert np.isnan(mixed.variance[2]).all() and np.isfinite(mixed.variance[:2]).all()


NOISE = dict(onepixel=False, noise_realisations=6, noise_flip_threshold=0.0)


def test_noise_check_on_mef_planes_agrees_with_the_header_run(files, model):
    """Keywords removed, the variance plane gives the noise model: the flip rates equal those of
    the files with GAIN/SKYLEV keywords (the per-pixel effective gain (f + s) / var is the
    header gain wherever f + s > 0)."""
    a = galguard.check(str(files / "plain"), model=model, **NOISE)
    b = galguard.check(str(files / "mef"), model=model, **NOISE)
    assert a["noise_flip_rate"].max() > 0  # the model flips: the comparison is not vacuous
    np.testing.assert_array_equal(a["noise_flip_rate"], b["noise_flip_rate"])
    assert not np.any(b["flags"] & int(Flag.NOISE_MODEL_ESTIMATED))


def test_a_guessed_gain_gives_no_noise_verdict(sims, model):
    """No gain keyword and no variance: the noise columns are computed on the border estimate,
    the row says NOISE_MODEL_ESTIMATED and no NOISE_UNSTABLE is drawn from the guess (unless
    asked for)."""
    cut = read_cutouts(sims.images)  # a bare array: nothing known
    assert np.all(cut.meta["flags"] & int(Flag.GAIN_ESTIMATED))
    t = galguard.check(cut, model=model, **NOISE)
    assert np.all(t["flags"] & int(Flag.NOISE_MODEL_ESTIMATED))
    assert np.all(np.isfinite(t["noise_flip_rate"])) and t["noise_flip_rate"].max() > 0
    assert not np.any(t["flags"] & int(Flag.NOISE_UNSTABLE))
    t2 = galguard.check(cut, model=model, noise_estimated_verdict=True, **NOISE)
    assert np.any(t2["flags"] & int(Flag.NOISE_UNSTABLE))
    np.testing.assert_array_equal(t["noise_flip_rate"], t2["noise_flip_rate"])


def test_effective_gain_per_pixel():
    from galguard.robustness import effective_gain

    f = np.array([[[[10.0, -50.0, 5.0, 1.0]]]])
    var = np.array([[[[5.0, 1.0, 0.0, np.nan]]]])
    mask = np.array([[[[False, False, False, True]]]])
    g = effective_gain(f, var, sky=np.array([[10.0]]), gain=np.array([[7.0]]), mask=mask)
    # (10 + 10) / 5 = 4; below the sky, zero variance and masked: the plane's gain
    np.testing.assert_array_equal(g, [[[[4.0, 7.0, 7.0, 7.0]]]])


def test_cli_check_reads_mef_planes_with_mask_bits(files, model, tmp_path):
    from galguard.models import save

    mp = save(model, tmp_path / "m.safetensors")[0]
    out = tmp_path / "cat.fits"
    rc = cli.main(["check", str(files / "mef"), "-o", str(out), "--model", str(mp),
                   "--no-onepixel", "--noise-realisations", "2", "--mask-bits", "SAT,CR",
                   "--quiet"])
    assert rc == cli.EXIT_OK
    t = read_catalog(out)
    assert len(t) == 12 and np.all(t["error"] == "")
    assert np.all(np.isfinite(t["noise_flip_rate"]))
    assert galguard.CheckConfig.from_json(t.meta["config"]).mask_bits == "SAT,CR"
    # the variance travels with the chunks to worker processes: the same catalog
    out2 = tmp_path / "cat2.fits"
    assert cli.main(["check", str(files / "mef"), "-o", str(out2), "--model", str(mp),
                     "--no-onepixel", "--noise-realisations", "2", "--mask-bits", "SAT,CR",
                     "--workers", "2", "--chunk-size", "5", "--quiet"]) == cli.EXIT_OK
    np.testing.assert_array_equal(read_catalog(out2)["noise_flip_rate"], t["noise_flip_rate"])
    assert cli.main(["check", str(files / "mef"), "-o", str(tmp_path / "x.fits"), "--model",
                     str(mp), "--mask-bits", "99", "--quiet"]) == cli.EXIT_USAGE


def test_torch_tensor_and_large_counts_on_mef(files, model):
    """A saturated core (4e5 e-/s at the Y10 gain) in a MEF cutout: checked, nothing skipped."""
    cut = read_cutouts(files / "mef")
    cut.data[0, 1, SIZE // 2, SIZE // 2] = 4e5
    cut.variance[0, 1, SIZE // 2, SIZE // 2] = (4e5 + cut.meta["sky"][0, 1]) / cut.meta["gain"][0, 1]
    t = galguard.check(cut, model=model, **NOISE)
    assert np.all(np.isfinite(t["noise_flip_rate"]))
    assert not np.any(t["flags"] & int(Flag.NOISE_SKIPPED))
    assert torch.is_tensor(torch.from_numpy(cut.variance))


# ------------------------------------------------------------------------------------------------
# training and evaluation from FITS files and a label catalog

from astropy.table import Table  # noqa: E402

from galguard.training.files import ingest, read_labels  # noqa: E402

CLASSES = ("spiral", "elliptical", "merger")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Simulated galaxies written as a survey would: no TRUELAB keyword, labels in catalogs
    (source by file name in CSV, validation by id in Parquet, as MEF planes)."""
    d = tmp_path_factory.mktemp("labelled")
    src = simulate(90, seed=9, start=0, depths=("y10",), size=SIZE)["y10"]
    val = simulate(45, seed=9, start=90, depths=("y10",), size=SIZE)["y10"]
    write_fits(src, d / "src", label_keywords=False)
    write_fits(val, d / "val", label_keywords=False, planes=True, noise_keywords=False)
    Table({"file": [f"gal_{i:07d}.fits" for i in src.meta["index"]],
           "label": src.meta["class"]}).write(d / "labels.csv")
    Table({"objid": np.asarray(val.meta["id"]), "label": val.meta["class"]}).write(
        d / "vlabels.parquet")
    return d, src, val


def test_catalog_errors_name_the_file_and_the_problem(tmp_path):
    p = tmp_path / "a.csv"
    Table({"id": [1, 2], "klass": ["a", "b"]}).write(p)
    with pytest.raises(galguard.GalguardValueError, match="'label' column"):
        read_labels(p)
    Table({"id": [1, 2], "label": [0, 1]}).write(p, overwrite=True)
    with pytest.raises(galguard.GalguardValueError, match="integer labels"):
        read_labels(p)
    assert read_labels(p, classes=["disc", "bulge"]).labels == {1: 0, 2: 1}
    Table({"id": [1, 1], "label": ["a", "b"]}).write(p, overwrite=True)
    with pytest.raises(galguard.GalguardValueError, match="two labels"):
        read_labels(p)
    Table({"id": [1, 2], "label": ["a", "c"]}).write(p, overwrite=True)
    with pytest.raises(galguard.GalguardValueError, match=r"\['c'\] are not among"):
        read_labels(p, classes=["a", "b"])
    (tmp_path / "x.txt").write_text("id label\n")
    with pytest.raises(galguard.GalguardValueError, match="unknown catalog format"):
        read_labels(tmp_path / "x.txt")


def test_ingest_leaves_out_and_reports_unlabelled_and_bad_cutouts(labelled, tmp_path):
    d, src, _ = labelled
    (tmp_path / "in").mkdir()
    for f in sorted((d / "src").iterdir())[:5]:
        (tmp_path / "in" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "in" / "broken.fits").write_bytes(b"SIMPLE  =  T" + b" " * 100)
    cat_path = tmp_path / "few.ecsv"
    Table({"file": [f"gal_{i:07d}.fits" for i in range(3)],
           "label": src.meta["class"][:3]}).write(cat_path)
    cat = read_labels(cat_path, classes=CLASSES)
    got = ingest([str(tmp_path / "in")], tmp_path / "mm", "source", labels=cat)
    r = got.report
    assert (r["read"], r["kept"], r["bad"], r["unmatched"]) == (6, 3, 1, 2)
    assert "gal_0000003.fits" in r["unmatched_examples"][0]
    assert "broken.fits" in r["bad_examples"][0]
    assert isinstance(got.images, np.memmap) and got.images.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_array_equal(got.images, src.images[:3])
    np.testing.assert_array_equal(got.labels, src.meta["label"][:3])


def test_a_stack_keyed_by_file_without_row_is_refused(labelled, tmp_path):
    _, src, _ = labelled
    write_fits(src, tmp_path / "st", stack=True, label_keywords=False)
    stack = next((tmp_path / "st").iterdir())
    Table({"file": [stack.name], "label": ["spiral"]}).write(tmp_path / "l.csv")
    with pytest.raises(galguard.GalguardValueError, match="add a 'row' column"):
        ingest([str(stack)], tmp_path / "mm", "source",
               labels=read_labels(tmp_path / "l.csv", classes=CLASSES))
    n = len(src.images)
    Table({"file": [stack.name] * n, "row": np.arange(n),
           "label": src.meta["class"]}).write(tmp_path / "r.csv")
    got = ingest([str(stack)], tmp_path / "mm2", "source",
                 labels=read_labels(tmp_path / "r.csv", classes=CLASSES))
    assert got.report["kept"] == n
    np.testing.assert_array_equal(got.labels, src.meta["label"])


@pytest.mark.slow
def test_training_from_files_and_a_catalog_equals_the_simulated_route(labelled, tmp_path):
    """The same galaxies, once as arrays with their labels (the simulated route) and once as
    FITS files without label keywords plus catalogs: the same model, hence the same accuracy;
    the card records the data; evaluate reads the catalog too; --resume continues."""
    from galguard.models import load
    from galguard.training import evaluate, train

    d, src, val = labelled
    common = ["--epochs", "3", "--batch-size", "30", "--seed", "1", "--no-progress"]
    rc = cli.main(["train", "--name", "own", "--out", str(tmp_path / "m"), "--source",
                   str(d / "src"), "--labels", str(d / "labels.csv"), "--validation",
                   str(d / "val"), "--validation-labels", str(d / "vlabels.parquet"),
                   "--classes", "spiral,elliptical,merger", *common])
    assert rc == cli.EXIT_OK
    files_model = load(str(tmp_path / "m" / "own.safetensors"))
    sim_model = train(src.images, np.asarray(src.meta["label"]), validation=val.images,
                      validation_labels=np.asarray(val.meta["label"]), epochs=3, batch_size=30,
                      seed=1, progress=False)
    yv = np.asarray(val.meta["label"])
    a = evaluate(files_model, {"v": (val.images, yv)})["v"]
    b = evaluate(sim_model, {"v": (val.images, yv)})["v"]
    assert a["accuracy"] == b["accuracy"]
    np.testing.assert_allclose(files_model.predict(val.images),
                               sim_model.predict(val.images), atol=1e-5)
    card = files_model.card["training_data"]
    assert card["route"] == "files" and card["source"]["n"] == 90
    assert card["source"]["class_counts"] == {c: int(np.sum(src.meta["class"] == c))
                                              for c in ("spiral", "elliptical", "merger")}
    assert card["source"]["labels"]["sha256"] and card["validation"]["labels"]["key"] == "id"
    assert files_model.card["metrics"]["validation"]["accuracy"] == a["accuracy"]
    assert not list((tmp_path / "m").glob(".train-data-*"))  # the memory maps are removed
    # evaluate with the catalog
    out = tmp_path / "ev"
    assert cli.main(["evaluate", "--model", str(tmp_path / "m" / "own.safetensors"), "--data",
                     f"val={d / 'val'}", "--labels", str(d / "vlabels.parquet"), "--out",
                     str(out)]) == cli.EXIT_OK
    import json

    res = json.loads((out / "evaluation.json").read_text())["results"]["val"]
    assert res["n"] == 45 and res["accuracy"] == pytest.approx(a["accuracy"])
    # checkpoints and --resume
    ck = tmp_path / "ck"
    base = ["train", "--name", "r", "--out", str(tmp_path / "m2"), "--source", str(d / "src"),
            "--labels", str(d / "labels.csv"), "--checkpoint-dir", str(ck), "--batch-size", "30",
            "--da", "mmd", "--target", str(d / "val"), "--no-progress"]
    assert cli.main(base + ["--epochs", "2"]) == cli.EXIT_OK
    first = load(str(tmp_path / "m2" / "r.safetensors"))
    assert cli.main(base + ["--epochs", "2", "--resume"]) == cli.EXIT_OK  # nothing left to do
    again = load(str(tmp_path / "m2" / "r.safetensors"))
    assert again.card["training"]["epochs_run"] == 2
    assert again.card["training_data"]["target"]["n"] == 45
    assert again.card["training_data"]["target"]["labels_used"] is False
    np.testing.assert_array_equal(first.predict(val.images), again.predict(val.images))


def test_decam_like_sci_wht_dq(tmp_path, rng):
    """DECam community-pipeline names: SCI, WHT (inverse variance), DQ (every nonzero bad)."""
    g, s = 4.0, 60.0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    m = 200 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 30.0)
    sci = (rng.poisson(g * (m + s)) / g - s).astype(np.float32)
    wht = (g / np.maximum(sci + s, 1e-3)).astype(np.float32)
    dq = np.zeros((SIZE, SIZE), np.int16)
    dq[4, 4], dq[5, 5] = 3, 7
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI"), fits.ImageHDU(wht, name="WHT"),
                  fits.ImageHDU(dq, name="DQ")]).writeto(tmp_path / "decam.fits")
    cut = read_cutouts(tmp_path / "decam.fits")
    assert len(cut) == 1 and cut.mask.sum() == 2 and cut.mask[0, 0, 4, 4]
    assert cut.meta["gain"][0, 0] == pytest.approx(g, rel=0.05)
    assert cut.meta["sky"][0, 0] == pytest.approx(s, rel=0.05)

"""Tests of galguard.sim: determinism, class balance, the Y1/Y10 noise model, FITS output."""

import numpy as np
import pytest
from astropy.io import fits

from galguard import GalguardValueError, sim
from galguard.sim._morphology import draw_r_mag

SIZE = 40  # small stamps keep the tests fast; physics does not depend on the stamp size


@pytest.fixture(scope="module")
def small():
    return sim.simulate(6, seed=7, start=0, size=SIZE)


def test_shapes_dtypes_and_meta(small):
    assert set(small) == {"y10", "y1"}
    for depth, d in small.items():
        assert d.images.shape == (6, 3, SIZE, SIZE)
        assert d.images.dtype == np.float32
        assert d.labels.dtype == np.int64
        assert len(d) == len(d.meta) == 6
        assert list(d.meta["index"]) == list(range(6))
        assert d.meta["gain"].shape == (6, 3)
        assert d.meta.meta["depth"] == depth.upper()
        assert np.all(np.isfinite(d.images))
    np.testing.assert_array_equal(small["y10"].labels, small["y1"].labels)
    # same PSF and the same true magnitudes at both depths: one noiseless galaxy
    np.testing.assert_array_equal(small["y10"].meta["seeing"], small["y1"].meta["seeing"])
    np.testing.assert_array_equal(small["y10"].meta["mag"], small["y1"].meta["mag"])


def test_deterministic_per_seed_and_index(small):
    # galaxies 3..5 rendered on their own, in another batch split, and with 2 workers
    part = sim.simulate(3, seed=7, start=3, size=SIZE)
    for depth in ("y10", "y1"):
        np.testing.assert_array_equal(part[depth].images, small[depth].images[3:])
        np.testing.assert_array_equal(part[depth].labels, small[depth].labels[3:])
    one = sim.simulate(1, seed=7, start=4, depths=("y1",), size=SIZE)
    np.testing.assert_array_equal(one["y1"].images[0], small["y1"].images[4])
    other = sim.simulate(3, seed=8, start=3, size=SIZE)
    assert not np.array_equal(other["y10"].images, part["y10"].images)


@pytest.mark.slow
def test_parallel_matches_serial(small, monkeypatch):
    monkeypatch.setattr(sim._render, "MIN_PER_WORKER", 1)  # really start 2 workers for 6 galaxies
    par = sim.simulate(6, seed=7, size=SIZE, n_jobs=2, depths=("y10",))
    np.testing.assert_array_equal(par["y10"].images, small["y10"].images)


def test_class_balance():
    lab = sim.class_labels(np.arange(3000), seed=11)
    assert np.bincount(lab, minlength=3).tolist() == [1000, 1000, 1000]
    # any aligned block of 3 holds one of each class
    assert np.all(np.sort(lab.reshape(-1, 3), axis=1) == [0, 1, 2])
    # labels depend only on (seed, index)
    np.testing.assert_array_equal(sim.class_labels(np.arange(1500, 1600), seed=11),
                                  lab[1500:1600])
    paper = sim.class_labels(np.arange(1000), seed=11, class_fractions="paper")
    assert np.bincount(paper, minlength=3).tolist() == [430, 240, 330]


def _border_noise(images, width=8):
    """Sky noise per band from the border: robust std (1.4826 MAD) of neighbour differences.

    Differences of adjacent pixels remove the smooth galaxy light that still reaches the
    border of a small stamp; the MAD ignores the few pixels of a neighbouring galaxy.
    """
    diff = (images[..., 1:] - images[..., :-1]) / np.sqrt(2.0)
    strip = np.concatenate([diff[..., :width, :], diff[..., -width:, :]], axis=-2)
    strip = np.moveaxis(strip, 1, 0).reshape(3, -1)
    med = np.median(strip, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(strip - med), axis=1)


def test_y1_over_y10_sky_noise_is_sqrt10():
    # 6 galaxies x 2 strips x 8 rows x 99 differences ~ 9500 values per band: the relative
    # standard error of the ratio of MAD-based sigmas is ~1.2% (~2% measured over seeds 0-7,
    # faint galaxy light included); tolerance 6% (3 sigma).
    out = sim.simulate(6, seed=3, size=100, depths=("y10", "y1"))
    s10 = _border_noise(out["y10"].images)
    s1 = _border_noise(out["y1"].images)
    np.testing.assert_allclose(s1 / s10, np.sqrt(10), rtol=0.06)
    # absolute level: sqrt(sky / gain) from the counts model
    for depth, s in (("y10", s10), ("y1", s1)):
        p = sim.depth_params(depth)
        np.testing.assert_allclose(s, np.sqrt(p["sky"] / p["gain"]), rtol=0.06)


def test_counts_model_is_consistent():
    # k = gain * (f + sky) must be (close to) integer: the image is Poisson counts / gain - sky
    out = sim.simulate(2, seed=5, size=32, depths=("y1",))
    d = out["y1"]
    p = sim.depth_params("y1")
    k = (d.images.astype(np.float64) + p["sky"][None, :, None, None]) * p["gain"][None, :, None,
                                                                                    None]
    assert np.abs(k - np.round(k)).max() < 0.05
    assert k.min() >= -0.05


def test_galaxies_are_realistic_fluxes(small):
    m = small["y10"].meta
    # r-band magnitudes drawn in 18.5..22.5
    assert np.all((m["mag"][:, 1] > 18.4) & (m["mag"][:, 1] < 22.6))
    # ellipticals redder in g - r than spirals
    big = sim.simulate(12, seed=1, size=32, depths=("y10",))["y10"].meta
    gr = big["mag"][:, 0] - big["mag"][:, 1]
    assert gr[big["label"] == 1].mean() > gr[big["label"] == 0].mean() + 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"n": -1}, "n must be an integer >= 0, got -1"),
    ({"n": 2.5}, "n must be an integer, got float 2.5"),
    ({"n": 1, "seed": -3}, "seed must be an integer in \\[0, 9223372036854775807\\], got -3"),
    ({"n": 1, "size": 8}, "size must be an integer >= 16, got 8"),
    ({"n": 1, "depths": ("y5",)}, "depths must contain only 'y10' or 'y1', got 'y5'"),
    ({"n": 1, "n_jobs": 0}, "n_jobs must be >= 1 or -1"),
    ({"n": 1, "class_fractions": (1, 2)}, "class_fractions must be"),
])
def test_bad_arguments(kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(GalguardValueError, match=match):
        sim.simulate(n, **kwargs)


def test_write_fits_round_trip_and_headers(tmp_path, small):
    d = small["y1"]
    paths = sim.write_fits(d, tmp_path)
    assert [p.name for p in paths] == [f"gal_{i:07d}.fits" for i in range(6)]
    with fits.open(paths[2]) as hdul:
        h = hdul[0].header
        np.testing.assert_array_equal(hdul[0].data, d.images[2])
        assert h["BUNIT"] == "electron/s"
        assert h["BANDS"] == "g,r,i"
        assert h["DEPTH"] == "Y1"
        assert h["PIXSCALE"] == 0.2
        assert (h["OBJID"], h["SIMINDEX"], h["SIMSEED"]) == (2, 2, 7)
        assert h["TRUELAB"] == d.labels[2]
        assert h["TRUECLAS"] == sim.CLASSES[d.labels[2]]
        p = sim.depth_params("y1")
        for k, band in enumerate(sim.BANDS, start=1):
            assert h[f"FILTER{k}"] == band
            assert h[f"GAIN{k}"] == p["gain"][k - 1] == h[f"EXPTIM{k}"]
            assert h[f"SKYLEV{k}"] == pytest.approx(p["sky"][k - 1])
            assert h[f"MAGZP{k}"] == p["zeropoint"][k - 1]
            assert h[f"SEEING{k}"] == pytest.approx(d.meta["seeing"][2][k - 1], abs=1e-4)
    # refuse to overwrite, then overwrite on request
    with pytest.raises(FileExistsError, match="gal_0000000.fits exists"):
        sim.write_fits(d, tmp_path)
    assert len(sim.write_fits(d, tmp_path, overwrite=True)) == 6
    assert not list(tmp_path.glob(".*tmp"))


def test_write_fits_stack(tmp_path, small):
    d = small["y10"]
    (path,) = sim.write_fits(d, tmp_path, stack=True)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul[0].data, d.images)
        cat = hdul["CATALOG"].data
        np.testing.assert_array_equal(cat["ID"], np.arange(6))
        np.testing.assert_array_equal(cat["TRUELAB"], d.labels)
        assert [c.strip() for c in cat["TRUECLAS"]] == [sim.CLASSES[k] for k in d.labels]
        assert cat["GAIN"].shape == (6, 3)
        np.testing.assert_allclose(cat["SEEING"], d.meta["seeing"])
        assert hdul[0].header["DEPTH"] == "Y10"


def test_write_fits_compressed_is_reproducible(tmp_path, small):
    d = small["y10"]
    a = sim.write_fits(d, tmp_path / "a", compress=True)
    b = sim.write_fits(d, tmp_path / "b", compress=True)
    assert a[0].name == "gal_0000000.fits.fz"
    assert a[0].read_bytes() == b[0].read_bytes()
    with fits.open(a[0]) as hdul:
        data = hdul[1].data
        assert hdul[1].header["TRUELAB"] == d.labels[0]
    # quantisation error well below the sky noise
    sky_sigma = np.sqrt(sim.depth_params("y10")["sky"] / sim.depth_params("y10")["gain"])
    err = np.abs(data - d.images[0]).max(axis=(1, 2))
    assert np.all(err < sky_sigma)


def test_write_fits_rejects_other_types(tmp_path):
    with pytest.raises(GalguardValueError, match="simdata must be a SimData, got dict"):
        sim.write_fits({}, tmp_path)


def test_cli_writes_files_and_refuses_overwrite(tmp_path, capsys):
    from galguard.cli import main

    out = tmp_path / "out"
    args = ["simulate", "--n", "3", "--depth", "both", "--seed", "4", "--out", str(out),
            "--size", "32", "--no-progress", "--mosaic", str(tmp_path / "m.png")]
    assert main(args) == 0
    for depth in ("y10", "y1"):
        names = sorted(p.name for p in (out / depth).iterdir())
        assert names == ["gal_0000000.fits", "gal_0000001.fits", "gal_0000002.fits"]
    assert (tmp_path / "m.png").stat().st_size > 1000
    before = (out / "y1" / "gal_0000001.fits").read_bytes()
    assert main(args) == 2  # an existing output without --overwrite is a usage error
    assert "exists" in capsys.readouterr().err
    assert (out / "y1" / "gal_0000001.fits").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    with fits.open(out / "y10" / "gal_0000002.fits") as hdul:
        ref = sim.simulate(1, seed=4, start=2, size=32, depths=("y10",))["y10"]
        np.testing.assert_array_equal(hdul[0].data, ref.images[0])


def test_cli_stack(tmp_path):
    from galguard.cli import main

    assert main(["simulate", "--n", "2", "--depth", "y1", "--out", str(tmp_path), "--stack",
                 "--size", "24", "--no-progress"]) == 0
    (path,) = tmp_path.iterdir()
    with fits.open(path) as hdul:
        assert hdul[0].data.shape == (2, 3, 24, 24)
        assert hdul[0].header["DEPTH"] == "Y1"


def test_shipped_sample():
    # 33 galaxies (11 per class), seed 2022, both depths, RICE-compressed, under 3 MB in all
    total = 0
    for depth in ("y10", "y1"):
        files = sorted(sim.sample_path(depth).glob("gal_*.fits.fz"))
        assert [f.name for f in files] == [f"gal_{i:07d}.fits.fz" for i in range(33)]
        total += sum(f.stat().st_size for f in files)
        labels = [fits.getheader(f, 1)["TRUELAB"] for f in files]
        assert np.bincount(labels, minlength=3).tolist() == [11, 11, 11]
    assert total < 3_000_000
    # the sample is what the documented command produces (up to the quantisation, sigma/16)
    ref = sim.simulate(1, seed=2022, start=5)
    for depth in ("y10", "y1"):
        with fits.open(sim.sample_path(depth) / "gal_0000005.fits.fz") as hdul:
            h = hdul[1].header
            assert (h["SIMSEED"], h["SIMINDEX"], h["DEPTH"]) == (2022, 5, depth.upper())
            sky_sigma = np.sqrt(sim.depth_params(depth)["sky"] / sim.depth_params(depth)["gain"])
            err = np.abs(hdul[1].data - ref[depth].images[0]).max(axis=(1, 2))
            assert np.all(err < sky_sigma / 4)


def test_sample_path_rejects_bad_depth():
    with pytest.raises(GalguardValueError, match="depth must be 'y10' or 'y1', got 'y3'"):
        sim.sample_path("y3")
    with pytest.raises(GalguardValueError, match="depth must be 'y10' or 'y1', got 10"):
        sim.depth_params(10)


def test_writers_do_not_mutate_inputs(tmp_path, small):
    d = small["y10"]
    images = d.images.copy()
    meta = d.meta.copy()
    sim.write_fits(d, tmp_path / "a")
    sim.write_fits(d, tmp_path / "b", stack=True, compress=True)
    sim.make_mosaic(small, tmp_path / "m.png", max_per_class=1)
    np.testing.assert_array_equal(d.images, images)
    assert d.images.dtype.isnative
    for c in meta.colnames:
        nan_ok = meta[c].dtype.kind == "f"
        assert np.array_equal(d.meta[c], meta[c], equal_nan=nan_ok), c


def test_mosaic(tmp_path, small):
    import matplotlib.image as mpimg

    path = sim.make_mosaic(small["y1"], tmp_path / "one.png", max_per_class=2)
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    with pytest.raises(GalguardValueError, match="sims must be a SimData or a dict of SimData"):
        sim.make_mosaic([1, 2], tmp_path / "x.png")
    with pytest.raises(GalguardValueError, match="max_per_class must be an integer >= 1, got 0"):
        sim.make_mosaic(small, tmp_path / "x.png", max_per_class=0)


def test_galguard_io_reads_simulated_files(tmp_path, small):
    from galguard.io import read_cutouts

    d = small["y1"]
    one = sim.write_fits(d, tmp_path / "one")
    (stack,) = sim.write_fits(d, tmp_path / "stack", stack=True)
    p = sim.depth_params("y1")
    for cut in (read_cutouts([str(f) for f in one]), read_cutouts(str(stack))):
        np.testing.assert_array_equal(cut.data, d.images)
        assert tuple(cut.bands) == sim.BANDS
        assert list(cut.meta["true_label"]) == list(d.labels)
        assert list(cut.meta["id"]) == list(range(6))
        np.testing.assert_allclose(cut.meta["gain"], np.tile(p["gain"], (6, 1)))
        np.testing.assert_allclose(cut.meta["sky"], np.tile(p["sky"], (6, 1)))
        np.testing.assert_allclose(cut.meta["zeropoint"], np.tile(p["zeropoint"], (6, 1)))
        assert np.all(cut.meta["flags"] == 0)
    # the compressed shipped sample too
    files = sorted(sim.sample_path("y10").glob("gal_*.fits.fz"))
    cut = read_cutouts([str(f) for f in files])
    assert len(cut) == 33 and np.all(cut.meta["flags"] == 0)
    assert np.bincount(cut.meta["true_label"], minlength=3).tolist() == [11, 11, 11]


def test_cli_bad_values(tmp_path, capsys):
    from galguard.cli import main

    assert main(["simulate", "--n", "-2", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "--n and --start must be >= 0, got -2 and 0" in capsys.readouterr().err
    assert main(["simulate", "--n", "1", "--size", "4", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    assert "size must be an integer >= 16, got 4" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_progress_bar_and_empty(capsys):
    a = sim.simulate(2, seed=9, size=24, depths=("y1",), progress=True)
    assert "simulate" in capsys.readouterr().err
    b = sim.simulate(2, seed=9, size=24, depths=("y1",))
    np.testing.assert_array_equal(a["y1"].images, b["y1"].images)
    empty = sim.simulate(0, size=24)
    assert empty["y10"].images.shape == (0, 3, 24, 24) and len(empty["y1"].meta) == 0


def test_class_labels_arguments_and_no_mutation():
    idx = np.array([5, 1, 4], dtype=np.int64)
    lab = sim.class_labels(idx, seed=2)
    assert idx.tolist() == [5, 1, 4]
    np.testing.assert_array_equal(lab, sim.class_labels(np.arange(6), seed=2)[[5, 1, 4]])
    with pytest.raises(GalguardValueError, match="indices must be >= 0, got min -1"):
        sim.class_labels([-1, 2])
    with pytest.raises(GalguardValueError, match="class_fractions must be .* got 'lots'"):
        sim.class_labels([0], class_fractions="lots")
    custom = sim.class_labels(np.arange(100), class_fractions=(0.5, 0.5, 0.0))
    assert np.bincount(custom, minlength=3).tolist() == [50, 50, 0]


def test_class_labels_rejects_float_indices_and_huge_seed():
    with pytest.raises(GalguardValueError, match="indices must be integers, got dtype float64"):
        sim.class_labels([1.5])
    with pytest.raises(GalguardValueError, match=r"seed must be an integer in \[0, 9223372036854775807\]"):
        sim.simulate(1, seed=2**63)


# ------------------------------------------------------------------------------------------------
# Magnitude law: uniform (default) or galaxy number counts
# ------------------------------------------------------------------------------------------------
def test_default_magnitudes_uniform_in_bright_range(small):
    r = small["y10"].meta["mag"][:, 1]
    assert np.all((r > 18.3) & (r < 22.7))  # total r of the galaxy (18.5-22.5) +- rounding
    assert small["y10"].meta.meta["counts_slope"] == 0.0


def test_counts_law_distribution():
    """r magnitudes from dN/dm ~ 10**(b m) in [lo, hi]: compare the empirical CDF with
    F(m) = (10**(b (m - lo)) - 1) / (10**(b (hi - lo)) - 1)."""
    rng = np.random.default_rng(3)
    lo, hi, b = 18.5, 25.5, 0.3
    m = np.array([draw_r_mag(rng, (lo, hi), b) for _ in range(20000)])
    assert m.min() >= lo and m.max() <= hi
    for q in (20.0, 22.5, 24.0, 25.0):
        expect = (10 ** (b * (q - lo)) - 1) / (10 ** (b * (hi - lo)) - 1)
        assert abs(np.mean(m < q) - expect) < 0.012, q  # 20000 draws: sd < 0.0036
    # slope 0 is the plain uniform law
    u = np.array([draw_r_mag(rng, (20.0, 21.0), 0.0) for _ in range(5000)])
    assert abs(u.mean() - 20.5) < 0.02


def test_counts_law_keeps_each_galaxy_but_its_magnitude():
    base = sim.simulate(6, seed=4, size=24, depths=("y10",))["y10"]
    faint = sim.simulate(6, seed=4, size=24, depths=("y10",), mag_range=(18.5, 25.5),
                         counts_slope=0.3)["y10"]
    np.testing.assert_array_equal(base.labels, faint.labels)
    # the magnitude is one draw of the galaxy's stream: the PSF drawn after it is the same
    np.testing.assert_array_equal(base.meta["seeing"], faint.meta["seeing"])
    assert not np.array_equal(base.meta["mag"], faint.meta["mag"])
    assert faint.meta.meta["rmag_hi"] == 25.5 and faint.meta.meta["counts_slope"] == 0.3
    many = sim.simulate(30, seed=4, size=24, depths=("y10",), mag_range=(23.0, 25.5),
                        counts_slope=0.3)["y10"]
    assert np.all(many.meta["mag"][:, 1] > 22.8)


@pytest.mark.parametrize("kwargs, match", [
    ({"mag_range": (25.0, 20.0)},
     r"mag_range must be finite with bright < faint, got \(25.0, 20.0\)"),
    ({"mag_range": "faint"}, "mag_range must be two numbers"),
    ({"mag_range": (20.0, float("nan"))}, "mag_range must be finite"),
    ({"counts_slope": -0.1}, r"counts_slope must be in 0..2, got -0.1"),
    ({"counts_slope": "steep"}, "counts_slope must be a number"),
])
def test_magnitude_law_bad_arguments(kwargs, match):
    with pytest.raises(GalguardValueError, match=match):
        sim.simulate(1, size=16, **kwargs)


def test_cli_magnitude_law(tmp_path):
    from galguard.cli import main

    rc = main(["simulate", "--n", "3", "--size", "24", "--depth", "y10", "--out",
               str(tmp_path), "--mag-range", "24", "25", "--counts-slope", "0.3",
               "--no-progress"])
    assert rc == 0
    mags = [fits.getheader(p, 0)["TRUEMAG2"] for p in sorted(tmp_path.glob("gal_*.fits"))]
    assert len(mags) == 3 and all(23.8 < m < 25.2 for m in mags)

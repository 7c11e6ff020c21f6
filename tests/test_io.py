"""Tests for galguard.io: read_cutouts / iter_cutouts / Cutouts."""

import gzip
import hashlib
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.table import Table

from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import Cutouts, border_background, iter_cutouts, read_cutouts

BANDS = ("g", "r", "i")


def _cube(rng, c=3, h=16, w=16, scale=1.0):
    return (rng.normal(size=(c, h, w)) * scale).astype(np.float32)


def _sim_header(c=3, **extra):
    """Header in the galguard.sim convention."""
    h = fits.Header()
    for n, b in enumerate(BANDS[:c], 1):
        h[f"FILTER{n}"] = b
        h[f"GAIN{n}"] = 10.0 * n
        h[f"SKYLEV{n}"] = 100.0 * n
        h[f"MAGZP{n}"] = 28.0 + n / 10
        h[f"EXPTIM{n}"] = 30.0 * n
        h[f"SEEING{n}"] = 0.7
    h["BANDS"] = ",".join(BANDS[:c])
    h["BUNIT"] = "electron/s"
    for k, v in extra.items():
        h[k] = v
    return h


def _write_cube(path, data, header=None):
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return str(path)


def _write_stack(path, data, *, catalog=True, header=None):
    hdus = [fits.PrimaryHDU(data, header=header or _sim_header(data.shape[1]))]
    if catalog:
        n, c = data.shape[:2]
        t = Table()
        t["ID"] = np.arange(100, 100 + n)
        t["TRUELAB"] = np.arange(n) % 3
        t["TRUECLAS"] = np.array(["spiral", "elliptical", "merger"])[np.arange(n) % 3]
        t["GAIN"] = np.tile(np.arange(1, c + 1, dtype=float), (n, 1)) + np.arange(n)[:, None]
        t["SKYLEV"] = np.full((n, c), 50.0)
        t["MAGZP"] = np.full((n, c), 27.5)
        t["EXPTIME"] = np.full((n, c), 900.0)
        t["SEEING"] = np.full((n, c), 0.8)
        hdus.append(fits.BinTableHDU(t, name="CATALOG"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# ----------------------------------------------------------------------------------------------
# accepted forms and round trips
# ----------------------------------------------------------------------------------------------
def test_single_cube_sim_convention_roundtrip(tmp_path, rng):
    d = _cube(rng)
    p = _write_cube(tmp_path / "gal.fits", d, _sim_header(OBJID=42, TRUELAB=2))
    cut = read_cutouts(p)
    assert cut.data.shape == (1, 3, 16, 16)
    assert cut.data.dtype == np.float32 and cut.data.dtype.isnative
    np.testing.assert_array_equal(cut.data[0], d)
    assert not cut.mask.any()
    assert cut.bands == BANDS
    m = cut.meta[0]
    assert m["id"] == 42 and m["true_label"] == 2
    assert m["source"] == p and m["hdu"] == "0" and m["bands"] == "g,r,i"
    np.testing.assert_allclose(m["gain"], [10, 20, 30])
    np.testing.assert_allclose(m["sky"], [100, 200, 300])
    np.testing.assert_allclose(m["zeropoint"], [28.1, 28.2, 28.3])
    np.testing.assert_allclose(m["exptime"], [30, 60, 90])
    np.testing.assert_allclose(m["seeing"], [0.7] * 3)
    assert m["bunit"] == "electron/s" and m["flags"] == 0 and m["error"] == ""


@pytest.mark.parametrize("backend", ["auto", "fitsio", "astropy"])
def test_stack_with_catalog_overrides_header(tmp_path, rng, backend):
    d = rng.normal(size=(7, 3, 8, 8)).astype(np.float32)
    p = _write_stack(tmp_path / "stack.fits", d)
    cut = read_cutouts(p, backend=backend, chunk_size=3)
    np.testing.assert_array_equal(cut.data, d)
    assert list(cut.meta["id"]) == list(range(100, 107))
    assert list(cut.meta["true_label"]) == [0, 1, 2, 0, 1, 2, 0]
    assert list(cut.meta["row"]) == list(range(7))
    np.testing.assert_allclose(cut.meta["gain"][4], [5, 6, 7])
    np.testing.assert_allclose(cut.meta["sky"], 50.0)
    np.testing.assert_allclose(cut.meta["exptime"], 900.0)
    assert cut.bands == BANDS
    assert (cut.meta["flags"] == 0).all()


def test_stack_nhw_and_scalar_header(tmp_path, rng):
    d = rng.normal(size=(4, 8, 8)).astype(np.float32)
    h = fits.Header({"FILTER": "r", "GAIN": 3.0, "SKYLEVEL": 20.0, "EXPTIME": 15.0, "MAGZP": 27.0})
    p = _write_cube(tmp_path / "s.fits", d, h)
    cut = read_cutouts(p)
    assert cut.data.shape == (4, 1, 8, 8) and cut.bands == ("r",)
    np.testing.assert_array_equal(cut.data[:, 0], d)
    np.testing.assert_allclose(cut.meta["gain"], 3.0)
    np.testing.assert_allclose(cut.meta["sky"], 20.0)


def test_three_d_layout_rule(tmp_path, rng):
    d = rng.normal(size=(3, 8, 8)).astype(np.float32)
    p = _write_cube(tmp_path / "plain.fits", d)  # no band information: a cube (3 <= 10)
    assert read_cutouts(p, fill={"gain": 1, "sky": 1}).data.shape == (1, 3, 8, 8)
    assert read_cutouts(p, bands=["r"], fill={"gain": 1, "sky": 1}).data.shape == (3, 1, 8, 8)
    assert read_cutouts(p, layout="stack", fill={"gain": 1, "sky": 1}).data.shape == (3, 1, 8, 8)
    big = rng.normal(size=(12, 8, 8)).astype(np.float32)
    assert read_cutouts(big, fill={"gain": 1, "sky": 1}).data.shape == (12, 1, 8, 8)


def test_one_band_per_extension(tmp_path, rng):
    planes = [_cube(rng, 1)[0] for _ in range(3)]
    hdus = [fits.PrimaryHDU(header=fits.Header({"EXPTIME": 60.0, "OBJID": 7}))]
    for b, pl, g in zip(BANDS, planes, (1.5, 2.5, 3.5)):
        hdus.append(fits.ImageHDU(pl, header=fits.Header({"FILTER": b, "GAIN": g, "SKYLEVEL": 9.0}),
                                  name=f"IM_{b}"))
    p = str(tmp_path / "mef.fits")
    fits.HDUList(hdus).writeto(p)
    cut = read_cutouts(p)
    assert cut.bands == BANDS and cut.data.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(cut.data[0], np.stack(planes))
    np.testing.assert_allclose(cut.meta["gain"][0], [1.5, 2.5, 3.5])
    np.testing.assert_allclose(cut.meta["exptime"][0], 60.0)  # from the primary header
    assert cut.meta["id"][0] == 7 and cut.meta["hdu"][0] == "1,2,3"
    # explicit hdu list in another order, band names from EXTNAME when FILTER is missing
    hdus2 = [fits.PrimaryHDU()] + [fits.ImageHDU(pl, name=b.upper()) for b, pl in zip(BANDS, planes)]
    p2 = str(tmp_path / "mef2.fits")
    fits.HDUList(hdus2).writeto(p2)
    cut2 = read_cutouts(p2, hdu=["I", "G"], fill={"gain": 1, "sky": 0})
    assert cut2.bands == ("I", "G")
    np.testing.assert_array_equal(cut2.data[0, 0], planes[2])
    # a single chosen HDU
    cut3 = read_cutouts(p, hdu="IM_R")
    np.testing.assert_array_equal(cut3.data[0, 0], planes[1])
    assert cut3.bands == ("r",)


def test_gzip_and_tile_compressed(tmp_path, rng):
    d = rng.normal(size=(3, 16, 16)).astype(np.float32)
    p = _write_cube(tmp_path / "a.fits", d, _sim_header())
    gz = str(tmp_path / "a.fits.gz")
    with open(p, "rb") as i, gzip.open(gz, "wb") as o:
        shutil.copyfileobj(i, o)
    fz = str(tmp_path / "a.fits.fz")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(d, header=_sim_header(),
                                                       compression_type="GZIP_2",
                                                       quantize_level=0.0)]).writeto(fz)
    for backend in ("auto", "astropy"):
        cut = read_cutouts([gz, fz], backend=backend)
        assert cut.data.shape == (2, 3, 16, 16)
        np.testing.assert_array_equal(cut.data[0], d)
        np.testing.assert_array_equal(cut.data[1], d)  # unquantised GZIP_2 is lossless
        assert cut.bands == BANDS and (cut.meta["flags"] == 0).all()
        np.testing.assert_allclose(cut.meta["gain"][1], [10, 20, 30])


def test_directory_glob_and_listfile(tmp_path, rng):
    d = tmp_path / "cut"
    d.mkdir()
    datas = []
    for i in (2, 0, 1):
        x = _cube(rng)
        datas.append((i, x))
        _write_cube(d / f"g{i}.fits", x, _sim_header(OBJID=i))
    (d / "notes.txt").write_text("not fits")
    by_dir = read_cutouts(str(d))
    assert list(by_dir.meta["id"]) == [0, 1, 2]  # sorted by name; notes.txt ignored
    by_glob = read_cutouts(str(d / "g*.fits"))
    np.testing.assert_array_equal(by_glob.data, by_dir.data)
    lst = tmp_path / "list.txt"
    lst.write_text("# cutouts\ncut/g2.fits\n\ncut/g0.fits\n")
    by_list = read_cutouts("@" + str(lst))
    assert list(by_list.meta["id"]) == [2, 0]
    assert list(read_cutouts([str(d / "g1.fits"), str(d / "g0.fits")]).meta["id"]) == [1, 0]


def test_hdulist_hdu_nddata_ccddata_array_inputs(rng):
    d = _cube(rng)
    hdr = _sim_header()
    from_list = read_cutouts(fits.HDUList([fits.PrimaryHDU(d, header=hdr)]))
    from_hdu = read_cutouts(fits.ImageHDU(d, header=hdr))
    for cut in (from_list, from_hdu):
        np.testing.assert_array_equal(cut.data[0], d)
        assert cut.bands == BANDS
    assert from_hdu.meta["source"][0] == "<ImageHDU>"
    # NDData with mask, unit and a header as meta
    mask = np.zeros(d.shape, bool)
    mask[1, 3, 4] = True
    nd = NDData(d, mask=mask, unit="electron/s", meta=dict(hdr))
    cut = read_cutouts(nd)
    assert cut.mask[0, 1, 3, 4] and cut.mask.sum() == 1
    assert cut.meta["bunit"][0] == "electron / s"
    np.testing.assert_allclose(cut.meta["gain"][0], [10, 20, 30])
    # CCDData (2-D), header meta
    ccd = CCDData(d[0], unit="adu", meta={"GAIN": 2.0, "SKYLEVEL": 5.0, "EXPTIME": 10, "FILTER": "g"})
    cut = read_cutouts(ccd)
    assert cut.bands == ("g",) and cut.meta["gain"][0, 0] == 2.0 and cut.meta["bunit"][0] == "adu"
    # numpy 2-D, 4-D, masked array, Table metadata
    assert read_cutouts(d[0], fill={"gain": 1, "sky": 1}).data.shape == (1, 1, 16, 16)
    arr = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    t = Table({"id": np.arange(5) + 10, "gain": np.full((5, 3), 4.0), "sky": np.full(5, 2.0),
               "exptime": np.full(5, 30.0), "true_label": [0, 1, 2, 1, 0]})
    cut = read_cutouts(arr, meta=t, bands="g,r,i")
    assert list(cut.meta["id"]) == [10, 11, 12, 13, 14] and list(cut.meta["true_label"]) == [0, 1, 2, 1, 0]
    np.testing.assert_allclose(cut.meta["sky"], 2.0)
    assert cut.bands == BANDS and (cut.meta["flags"] == 0).all()
    ma = np.ma.masked_array(arr, mask=arr > 2.5)
    cut = read_cutouts(ma, fill={"gain": 1, "sky": 1})
    np.testing.assert_array_equal(cut.mask, arr > 2.5)


def test_cutouts_source_is_copied_and_selected(rng):
    arr = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    base = read_cutouts(arr, meta={"bands": BANDS, "gain": 2, "sky": 3, "exptime": 4})
    again = read_cutouts(base)
    np.testing.assert_array_equal(again.data, base.data)
    assert again.data is not base.data
    again.data[:] = 0
    assert base.data.any()
    sel = read_cutouts(base, bands=["i", "g"])
    np.testing.assert_array_equal(sel.data[:, 0], arr[:, 2])
    assert sel.bands == ("i", "g")


def test_uncertainty_gives_gain(rng):
    g, sky = 4.0, 50.0
    mean = np.full((32, 32), 20.0)
    counts = rng.poisson(g * (mean + sky))
    data = (counts / g - sky).astype(np.float32)
    var = (mean + sky) / g
    nd = NDData(data, uncertainty=StdDevUncertainty(np.sqrt(var)), meta={"SKYLEVEL": sky})
    cut = read_cutouts(nd)
    assert cut.meta["gain"][0, 0] == pytest.approx(g, rel=0.02)
    # measured from the variance, not estimated from the border: no GAIN_ESTIMATED
    assert not cut.meta["flags"][0] & Flag.GAIN_ESTIMATED
    assert cut.variance is not None and cut.variance.shape == (1, 1, 32, 32)


# ----------------------------------------------------------------------------------------------
# Cutouts container
# ----------------------------------------------------------------------------------------------
def test_cutouts_indexing_concatenation_torch(rng):
    arr = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    cut = read_cutouts(arr, meta={"bands": BANDS, "gain": 2, "sky": 3, "exptime": 4})
    assert len(cut) == 6
    one = cut[2]
    assert len(one) == 1 and one.meta["index"][0] == 2
    np.testing.assert_array_equal(one.data[0], arr[2])
    assert len(cut[-1]) == 1 and cut[-1].meta["index"][0] == 5
    sub = cut[np.array([True, False] * 3)]
    assert list(sub.meta["index"]) == [0, 2, 4]
    assert list(cut[[5, 0]].meta["index"]) == [5, 0]
    assert len(cut[[]]) == 0
    both = Cutouts.concatenate([cut[:2], cut[4:]])
    assert len(both) == 4 and list(both.meta["index"]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(both.data[2:], arr[4:])
    with pytest.raises(IndexError):
        cut[6]
    with pytest.raises(GalguardValueError, match="items"):
        Cutouts.concatenate([])
    other = Cutouts(np.zeros((1, 3, 9, 9), np.float32), bands=BANDS)
    with pytest.raises(GalguardValueError, match=r"shape \(3, 9, 9\)"):
        Cutouts.concatenate([cut, other])
    with pytest.raises(GalguardValueError, match=r"data must have shape \(N, C, H, W\), got \(3, 100\)"):
        Cutouts(np.zeros((3, 100)))
    import torch

    t = cut.to_torch()
    assert t.dtype == torch.float32 and tuple(t.shape) == (6, 3, 8, 8)
    assert cut.to_torch(mask=True).dtype == torch.bool
    assert "N=6" in repr(cut)


# ----------------------------------------------------------------------------------------------
# headers: scaling, byte order, estimates
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "astropy"])
def test_bscale_bzero_and_big_endian(tmp_path, backend):
    raw = np.arange(64, dtype=np.int16).reshape(8, 8)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.header.update({"GAIN": 1.0, "SKYLEVEL": 1.0, "EXPTIME": 1.0})
    p = str(tmp_path / "scaled.fits")
    hdu.writeto(p)
    cut = read_cutouts(p, backend=backend)
    np.testing.assert_allclose(cut.data[0, 0], raw * 0.5 + 100.0)
    u16 = np.arange(64, dtype=np.uint16).reshape(8, 8) + 60000  # written with BZERO = 32768
    p2 = str(tmp_path / "u16.fits")
    fits.PrimaryHDU(u16, header=fits.Header({"GAIN": 1.0, "SKYLEVEL": 1.0, "EXPTIME": 1.0})).writeto(p2)
    np.testing.assert_array_equal(read_cutouts(p2, backend=backend).data[0, 0], u16.astype(np.float32))
    be = np.arange(48, dtype=">f8").reshape(3, 4, 4)
    cut = read_cutouts(be, fill={"gain": 1, "sky": 1})
    assert cut.data.dtype == np.dtype("float32") and cut.data.dtype.isnative
    np.testing.assert_array_equal(cut.data[0], be.astype(np.float32))


def test_header_aliases(rng):
    d = _cube(rng, 1)[0]
    h = fits.Header({"BAND": "z", "EGAIN": 2.0, "BACKGND": 7.0, "EXPOSURE": 45.0, "ZEROPT": 25.0,
                     "BUNIT": "adu"})
    m = read_cutouts(fits.PrimaryHDU(d, header=h)).meta[0]
    assert m["bands"] == "z" and m["gain"][0] == 2.0 and m["sky"][0] == 7.0
    assert m["exptime"][0] == 45.0 and m["zeropoint"][0] == 25.0 and m["flags"] == 0
    h2 = fits.Header({"GAIN": 1.0, "MDRIZSKY": 3.0, "EXPTIME": 1.0, "PHOTFLAM": 7.0e-20,
                      "PHOTPLAM": 6000.0})
    m2 = read_cutouts(fits.PrimaryHDU(d, header=h2)).meta[0]
    assert m2["sky"][0] == 3.0
    assert m2["zeropoint"][0] == pytest.approx(-2.5 * np.log10(7e-20) - 5 * np.log10(6000) - 2.408)


def test_sky_and_gain_estimates_on_raw_poisson_image():
    """Sky still in the image: the border level is the sky (within 0.5 %) and is subtracted;
    gain from variance = mean / gain: each within 20 % (4 sigma), the mean of 20 within 4 %."""
    rng = np.random.default_rng(7)
    g, sky, n = 2.0, 400.0, 20
    yy, xx = np.mgrid[:64, :64]
    gal = 300.0 * np.exp(-((xx - 32) ** 2 + (yy - 31) ** 2) / (2 * 5.0 ** 2))
    data = (rng.poisson(g * (gal + sky), size=(n, 64, 64)) / g).astype(np.float32)
    cut = read_cutouts(data, layout="stack", meta={"EXPTIME": 30.0})
    assert (cut.meta["flags"] == Flag.SKY_ESTIMATED | Flag.GAIN_ESTIMATED).all()
    assert cut.meta["sky_removed"].all()
    np.testing.assert_allclose(cut.meta["sky"][:, 0], sky, rtol=0.005)
    # one cutout: ~5 % (1 sigma) from 1 792 border pixels; mean of 20: ~1.2 %
    np.testing.assert_allclose(cut.meta["gain"][:, 0], g, rtol=0.2)
    assert np.mean(cut.meta["gain"][:, 0]) == pytest.approx(g, rel=0.04)
    assert abs(np.median(cut.data[:, 0, :6, :6])) < 1.0  # sky subtracted
    # the galaxy is untouched: 5 x 5 core mean within 3 (about 3.6 sigma of 500 pixels)
    assert cut.data[:, 0, 29:34, 30:35].mean() == pytest.approx(gal[29:34, 30:35].mean(), abs=3.0)


def test_estimates_on_sky_subtracted_image():
    """Sky-subtracted data: with the gain given, sky = gain x border variance; with the sky given,
    gain = sky / variance (each within 20 %, 4 sigma for 1 280 border pixels, the mean of 10
    within 5 %); with neither, the default gain."""
    rng = np.random.default_rng(3)
    g, sky = 3.0, 200.0
    data = (rng.poisson(g * sky, size=(10, 48, 48)) / g - sky).astype(np.float32)
    with_gain = read_cutouts(data, layout="stack", meta={"GAIN": g, "EXPTIME": 1.0})
    assert (with_gain.meta["flags"] == Flag.SKY_ESTIMATED).all()
    assert not with_gain.meta["sky_removed"].any()
    np.testing.assert_allclose(with_gain.meta["sky"][:, 0], sky, rtol=0.2)
    assert np.mean(with_gain.meta["sky"][:, 0]) == pytest.approx(sky, rel=0.05)
    with_sky = read_cutouts(data, layout="stack", meta={"SKYLEVEL": sky, "EXPTIME": 1.0})
    assert (with_sky.meta["flags"] == Flag.GAIN_ESTIMATED).all()
    np.testing.assert_allclose(with_sky.meta["gain"][:, 0], g, rtol=0.2)
    assert np.mean(with_sky.meta["gain"][:, 0]) == pytest.approx(g, rel=0.05)
    neither = read_cutouts(data, layout="stack", meta={"EXPTIME": 1.0}, default_gain=1.5)
    np.testing.assert_allclose(neither.meta["gain"], 1.5)
    np.testing.assert_allclose(neither.meta["sky"][:, 0], 1.5 * sky / g, rtol=0.2)
    off = read_cutouts(data, layout="stack", meta={"EXPTIME": 1.0}, estimate=False)
    assert np.isnan(off.meta["sky"]).all()
    assert (off.meta["flags"] == Flag.HEADER_INCOMPLETE).all()


def test_exptime_missing_and_fill(rng):
    d = _cube(rng, 1)[0]
    cut = read_cutouts(d, meta={"GAIN": 1.0, "SKYLEVEL": 2.0})
    assert cut.meta["flags"][0] == Flag.EXPTIME_MISSING and np.isnan(cut.meta["exptime"][0, 0])
    cut = read_cutouts(d, meta={"GAIN": 1.0, "SKYLEVEL": 2.0}, fill={"exptime": 30})
    assert cut.meta["flags"][0] == 0 and cut.meta["exptime"][0, 0] == 30


def test_border_background_direct():
    rng = np.random.default_rng(11)
    img = rng.poisson(900.0, size=(4, 80, 80)).astype(np.float32)
    img[:, 35:45, 35:45] += 5000  # a bright source in the middle does not matter
    level, var = border_background(img)
    np.testing.assert_allclose(level, 900.0, rtol=0.005)
    np.testing.assert_allclose(var, 900.0, rtol=0.1)
    with pytest.raises(GalguardValueError, match="border"):
        border_background(img, border=0)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def _bad_files(tmp_path, rng):
    good = _write_cube(tmp_path / "good.fits", _cube(rng), _sim_header())
    trunc = str(tmp_path / "trunc.fits")
    with open(good, "rb") as fh:
        blob = fh.read()
    with open(trunc, "wb") as fh:
        fh.write(blob[: len(blob) - 2000])
    notfits = tmp_path / "notfits.fits"
    notfits.write_text("hello, this is not FITS\n" * 200)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    zero = str(tmp_path / "zero.fits")
    fits.PrimaryHDU(np.zeros((0, 5), np.float32)).writeto(zero)
    onedim = _write_cube(tmp_path / "onedim.fits", np.arange(10, dtype=np.float32))
    fivedim = _write_cube(tmp_path / "fivedim.fits", np.zeros((1, 1, 1, 4, 4), np.float32))
    table = str(tmp_path / "table.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"a": ["x", "y"]}))]).writeto(table)
    allnan = _write_cube(tmp_path / "allnan.fits", np.full((3, 16, 16), np.nan, np.float32), _sim_header())
    missing = str(tmp_path / "missing.fits")
    return [good, trunc, str(notfits), str(empty), zero, onedim, fivedim, table, allnan, missing, good]


def test_bad_files_become_rows_in_order(tmp_path, rng):
    paths = _bad_files(tmp_path, rng)
    hashes = {p: _sha(p) for p in paths if os.path.exists(p)}
    cut = read_cutouts(paths)
    assert len(cut) == len(paths)
    assert list(cut.meta["source"]) == paths
    bad = (cut.meta["flags"] & Flag.BAD_INPUT) != 0
    assert list(bad) == [False] + [True] * 9 + [False]
    errors = list(cut.meta["error"])
    expect = ["", "truncated", "not FITS", "empty file", "zero-size", "wrong dimension",
              "wrong dimension", "non-numeric", "NaN", "not found", ""]
    for p, e, want in zip(paths, errors, expect):
        if want:
            assert p in e and want.lower() in e.lower(), (p, e)
    assert not cut.data[bad].any() and cut.mask[bad].all()
    assert not cut.mask[~bad].any()
    np.testing.assert_array_equal(cut.data[0], cut.data[-1])
    assert all(_sha(p) == h for p, h in hashes.items())  # nothing modified


def test_bad_arrays_and_objects(rng):
    good = _cube(rng)
    items = [good, np.array(["a", "b"]), np.zeros((0, 4, 4)), np.zeros(5), np.full((3, 16, 16), np.inf),
             {"not": "a source"}, good]
    cut = read_cutouts(items, fill={"gain": 1, "sky": 1, "exptime": 1})
    flags = np.asarray(cut.meta["flags"])
    assert list((flags & Flag.BAD_INPUT) != 0) == [False, True, True, True, True, True, False]
    assert "non-numeric" in cut.meta["error"][1]
    assert "zero-size" in cut.meta["error"][2]
    assert "wrong dimension" in cut.meta["error"][3]
    assert "NaN/inf" in cut.meta["error"][4]
    assert "unsupported source type dict" in cut.meta["error"][5]


def test_all_bad_collection(tmp_path):
    cut = read_cutouts([str(tmp_path / "a.fits"), str(tmp_path / "b.fits")], size=8, bands="g,r")
    assert cut.data.shape == (2, 2, 8, 8) and cut.mask.all()
    assert (cut.meta["flags"] == Flag.BAD_INPUT).all()


def test_nonfinite_pixels_masked(rng):
    d = _cube(rng)
    d[0, 2, 3] = np.nan
    d[2, 5, 5] = -np.inf
    before = d.copy()
    cut = read_cutouts(d, meta={"bands": BANDS, "gain": 1, "sky": 1, "exptime": 1})
    assert cut.meta["flags"][0] == Flag.NONFINITE_MASKED
    assert cut.mask[0, 0, 2, 3] and cut.mask[0, 2, 5, 5] and cut.mask.sum() == 2
    assert cut.data[0, 0, 2, 3] == 0 and cut.data[0, 2, 5, 5] == 0
    np.testing.assert_array_equal(d, before)  # input untouched


def test_resize_crop_and_pad(rng):
    big = _cube(rng, 3, 20, 20)
    small = _cube(rng, 3, 12, 10)
    meta = {"bands": BANDS, "gain": 1, "sky": 1, "exptime": 1}
    cut = read_cutouts([big, small, _cube(rng, 3, 16, 16)], size=16, meta=None,
                       fill={"gain": 1, "sky": 1, "exptime": 1})
    assert cut.data.shape == (3, 3, 16, 16)
    assert list(cut.meta["flags"]) == [Flag.RESIZED, Flag.RESIZED, 0]
    np.testing.assert_array_equal(cut.data[0], big[:, 2:18, 2:18])
    np.testing.assert_array_equal(cut.data[1, :, 2:14, 3:13], small)
    assert cut.mask[1, :, :2].all() and cut.mask[1, :, :, :3].all()
    assert not cut.mask[1, :, 2:14, 3:13].any()
    # without size=, the first good cutout fixes the size
    cut2 = read_cutouts(np.zeros((3, 3, 8, 8), np.float32) + 1, meta=meta)
    assert cut2.data.shape[-2:] == (8, 8)
    cut3 = read_cutouts([_cube(rng, 3, 16, 16), big], fill={"gain": 1, "sky": 1, "exptime": 1})
    assert cut3.data.shape == (2, 3, 16, 16) and cut3.meta["flags"][1] == Flag.RESIZED


def test_band_selection_and_mismatch(tmp_path, rng):
    a = _write_cube(tmp_path / "a.fits", _cube(rng), _sim_header())
    two = _write_cube(tmp_path / "b.fits", _cube(rng, 2), _sim_header(2))
    cut = read_cutouts([a, two])
    assert cut.bands == BANDS
    assert cut.meta["flags"][1] & Flag.BAD_INPUT and "planes" in cut.meta["error"][1]
    cut = read_cutouts([a, two], bands=["r", "g"])
    assert cut.bands == ("r", "g") and (cut.meta["flags"] == 0).all()
    np.testing.assert_allclose(cut.meta["gain"][0], [20, 10])
    cut = read_cutouts([a, two], bands="i")
    assert cut.meta["flags"][1] & Flag.BAD_INPUT and "'i' is not in" in cut.meta["error"][1]
    cut = read_cutouts(a, bands=[2, 0])
    assert cut.bands == ("i", "g")


def test_inputs_never_modified(tmp_path, rng):
    arr = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    arr[0, 0, 0, 0] = np.nan
    arr += 500.0  # raw sky: read_cutouts subtracts from its own copy
    arr.flags.writeable = False
    keep = arr.copy()
    cut = read_cutouts(arr)
    assert cut.meta["sky_removed"].all()
    np.testing.assert_array_equal(arr, keep)
    assert not arr.flags.writeable
    hdu = fits.PrimaryHDU(np.array(keep[0]), header=_sim_header())
    before = hdu.data.copy()
    read_cutouts(hdu, size=8)
    np.testing.assert_array_equal(hdu.data, before)
    p = _write_stack(tmp_path / "s.fits", keep)
    h = _sha(p)
    read_cutouts(p, size=20, chunk_size=2)
    assert _sha(p) == h


# ----------------------------------------------------------------------------------------------
# chunks
# ----------------------------------------------------------------------------------------------
def test_iter_chunks_equal_whole_read_with_bad_rows(tmp_path, rng):
    d = rng.normal(size=(9, 3, 8, 8)).astype(np.float32)
    stack = _write_stack(tmp_path / "stack.fits", d)
    singles = [_write_cube(tmp_path / f"s{i}.fits", _cube(rng, 3, 8, 8), _sim_header(OBJID=i))
               for i in range(3)]
    sources = [str(tmp_path / "nope.fits"), singles[0], stack, str(tmp_path / "nope2.fits"),
               singles[1], singles[2]]
    whole = read_cutouts(sources)
    assert len(whole) == 14
    chunks = list(iter_cutouts(sources, chunk_size=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 2]
    joined = Cutouts.concatenate(chunks)
    np.testing.assert_array_equal(joined.data, whole.data)
    np.testing.assert_array_equal(joined.mask, whole.mask)
    for col in ("id", "index", "source", "row", "flags", "error", "true_label"):
        assert list(joined.meta[col]) == list(whole.meta[col]), col
    np.testing.assert_array_equal(joined.meta["gain"], whole.meta["gain"])
    assert list(whole.meta["index"]) == list(range(14))
    assert list(whole.meta["flags"] & Flag.BAD_INPUT != 0) == [True, False] + [False] * 9 + [True, False, False]
    assert list(chunks[1].meta["index"]) == [4, 5, 6, 7]


def test_iter_bounded_chunks_from_big_stack(tmp_path, rng):
    d = rng.normal(size=(50, 1, 8, 8)).astype(np.float32)
    p = _write_stack(tmp_path / "big.fits", d, catalog=False,
                     header=fits.Header({"FILTER": "r", "GAIN": 1.0, "SKYLEVEL": 1.0, "EXPTIME": 1.0}))
    sizes = [len(c) for c in iter_cutouts(p, chunk_size=16)]
    assert sizes == [16, 16, 16, 2]
    np.testing.assert_array_equal(read_cutouts(p, chunk_size=7).data, d)


# ----------------------------------------------------------------------------------------------
# argument errors
# ----------------------------------------------------------------------------------------------
def test_argument_errors(tmp_path):
    arr = np.zeros((8, 8), np.float32)
    with pytest.raises(GalguardValueError, match=r"size must be .* got -3"):
        read_cutouts(arr, size=-3)
    with pytest.raises(GalguardValueError, match=r"size must be"):
        read_cutouts(arr, size=(4, 4, 4))
    with pytest.raises(GalguardValueError, match=r"bands must .* got 3.5"):
        read_cutouts(arr, bands=["g", 3.5])
    with pytest.raises(GalguardValueError, match=r"bands must not repeat"):
        read_cutouts(arr, bands="g,g")
    with pytest.raises(GalguardValueError, match=r"chunk_size must be a positive int, got 0"):
        iter_cutouts(arr, chunk_size=0)
    with pytest.raises(GalguardValueError, match=r"glob matched no files"):
        read_cutouts(str(tmp_path / "*.fits"))
    with pytest.raises(GalguardValueError, match=r"directory with no FITS files"):
        read_cutouts(str(tmp_path))
    with pytest.raises(GalguardValueError, match=r"layout must be"):
        read_cutouts(arr, layout="cubes")
    with pytest.raises(GalguardValueError, match=r"hdu must be"):
        read_cutouts(arr, hdu=-1)
    with pytest.raises(GalguardValueError, match=r"fill keys"):
        read_cutouts(arr, fill={"gian": 1})
    with pytest.raises(GalguardValueError, match=r"source must be .* got int"):
        read_cutouts(5)
    with pytest.raises(GalguardValueError, match=r"list file"):
        read_cutouts("@" + str(tmp_path / "nolist.txt"))
    # a missing explicit path is not an argument error: it is a bad row
    cut = read_cutouts(str(tmp_path / "missing.fits"))
    assert cut.meta["flags"][0] == Flag.BAD_INPUT and "file not found" in cut.meta["error"][0]


def test_reads_the_shipped_simulator_sample():
    """The galguard.sim sample (tile-compressed, image in HDU 1) reads with all header values."""
    import galguard.sim as sim
    src = sim.sample_path("y10")
    cut = read_cutouts(src)
    assert len(cut) == 33 and cut.data.shape[1:] == (3, 100, 100) and cut.bands == BANDS
    assert (cut.meta["flags"] == 0).all()
    assert set(cut.meta["true_label"]) == {0, 1, 2}
    assert np.isfinite(cut.meta["gain"]).all() and np.isfinite(cut.meta["sky"]).all()
    assert (cut.meta["bunit"] == "electron/s").all()
    same = read_cutouts(src, backend="astropy")
    np.testing.assert_array_equal(same.data, cut.data)


def test_fitsio_failure_falls_back_on_astropy(tmp_path, rng, monkeypatch):
    import galguard.io._fits_blocks as rd

    d = _cube(rng)
    p = _write_cube(tmp_path / "a.fits", d, _sim_header())

    class Broken:
        def __init__(self, *args, **kwargs):
            raise OSError("simulated fitsio failure")

    monkeypatch.setattr(rd, "FitsioAccess", Broken)
    cut = read_cutouts(p)
    np.testing.assert_array_equal(cut.data[0], d)
    assert cut.meta["flags"][0] == 0
    only = read_cutouts(p, backend="fitsio")
    assert only.meta["flags"][0] == Flag.BAD_INPUT
    assert "simulated fitsio failure" in only.meta["error"][0]


def test_missing_hdu_and_empty_sources(tmp_path, rng):
    p = _write_cube(tmp_path / "a.fits", _cube(rng), _sim_header())
    cut = read_cutouts(p, hdu="SCI")
    assert cut.meta["flags"][0] == Flag.BAD_INPUT and "hdu='SCI' is not in the file" in cut.meta["error"][0]
    empty = read_cutouts([], bands="g,r", size=(4, 6))
    assert len(empty) == 0 and empty.data.shape == (0, 2, 4, 6) and empty.bands == ("g", "r")
    assert [len(c) for c in iter_cutouts([])] == [0]


@pytest.mark.parametrize("backend", ["fitsio", "astropy"])
def test_stack_is_read_in_slices(tmp_path, rng, monkeypatch, backend):
    """iter_cutouts never asks the file for more than chunk_size rows at a time."""
    import galguard.io._fits as fa

    d = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    p = _write_stack(tmp_path / "s.fits", d)
    cls = fa.FitsioAccess if backend == "fitsio" else fa.AstropyAccess
    calls = []
    orig = cls.read_image

    def spy(self, i, start=None, stop=None):
        calls.append((start, stop))
        return orig(self, i, start, stop)

    monkeypatch.setattr(cls, "read_image", spy)
    got = Cutouts.concatenate(list(iter_cutouts(p, chunk_size=16, backend=backend)))
    np.testing.assert_array_equal(got.data, d)
    assert calls == [(0, 16), (16, 32), (32, 40)]


def test_subtract_sky_policy():
    rng = np.random.default_rng(5)
    raw = rng.poisson(300.0, size=(2, 32, 32)).astype(np.float32)
    auto = read_cutouts(raw, layout="stack", meta={"GAIN": 1.0, "EXPTIME": 1.0})
    assert auto.meta["sky_removed"].all() and abs(np.median(auto.data)) < 2
    never = read_cutouts(raw, layout="stack", meta={"GAIN": 1.0, "EXPTIME": 1.0}, subtract_sky=False)
    assert not never.meta["sky_removed"].any()
    np.testing.assert_array_equal(never.data[:, 0], raw)
    # sky-subtracted data are left alone by "auto" but forced by True
    flat = (raw - 300.0).astype(np.float32)
    assert not read_cutouts(flat, layout="stack", meta={"GAIN": 1.0}).meta["sky_removed"].any()
    assert read_cutouts(flat, layout="stack", meta={"GAIN": 1.0}, subtract_sky=True).meta["sky_removed"].all()


def test_extensions_of_different_shapes_are_separate_items(tmp_path, rng):
    a, b = _cube(rng, 1, 8, 8)[0], _cube(rng, 1, 12, 12)[0]
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(a, name="A"), fits.ImageHDU(b, name="B")])
    cut = read_cutouts(hdul, fill={"gain": 1, "sky": 1, "exptime": 1})
    assert len(cut) == 2 and list(cut.meta["hdu"]) == ["1", "2"]
    np.testing.assert_array_equal(cut.data[0, 0], a)
    assert cut.meta["flags"][1] == Flag.RESIZED  # cropped to the first item's 8 x 8
    np.testing.assert_array_equal(cut.data[1, 0], b[2:10, 2:10])

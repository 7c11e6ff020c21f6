"""Tests for galguard.io.cutouts_from_image and detect_sources (synthetic images only)."""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import cutouts_from_image, detect_sources

GALAXIES = [(60.0, 70.0), (200.0, 60.0), (150.0, 160.0), (70.0, 230.0), (240.0, 230.0)]
STARS = [(120.0, 100.0), (250.0, 140.0), (40.0, 150.0), (180.0, 260.0)]
PSF_SIGMA = 1.2


def _blob(shape, x0, y0, sx, sy, amp, theta=0.0):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - x0) * c + (yy - y0) * s
    v = -(xx - x0) * s + (yy - y0) * c
    return amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


@pytest.fixture(scope="module")
def field():
    """300 x 300, sky 100 (still in the image), Gaussian noise sigma 2, 5 galaxies, 4 stars."""
    rng = np.random.default_rng(2024)
    shape = (300, 300)
    img = np.full(shape, 100.0)
    for k, (x, y) in enumerate(GALAXIES):
        img += _blob(shape, x, y, 7.0, 4.0, 40.0, theta=0.5 * k)
    for x, y in STARS:
        img += _blob(shape, x, y, PSF_SIGMA, PSF_SIGMA, 300.0)
    img += rng.normal(0.0, 2.0, shape)
    return img.astype(np.float32)


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [150.5, 150.5]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def test_detect_sources_finds_galaxies_and_marks_stars(field):
    t = detect_sources(field, psf_fwhm=2.355 * PSF_SIGMA)
    pos = np.c_[t["x"], t["y"]]
    for gx, gy in GALAXIES + STARS:
        d = np.hypot(pos[:, 0] - gx, pos[:, 1] - gy)
        assert d.min() < 1.5, (gx, gy)
    for gx, gy in GALAXIES:
        k = np.argmin(np.hypot(pos[:, 0] - gx, pos[:, 1] - gy))
        assert not t["point_source"][k]
    for sx, sy in STARS:
        k = np.argmin(np.hypot(pos[:, 0] - sx, pos[:, 1] - sy))
        assert t["point_source"][k]


def test_detection_excludes_point_sources(field):
    before = field.copy()
    cut = cutouts_from_image(field, size=32, exclude_point_sources=True, psf_fwhm=2.355 * PSF_SIGMA)
    np.testing.assert_array_equal(field, before)
    assert len(cut) == len(GALAXIES)
    got = sorted(zip(np.round(cut.meta["x"]), np.round(cut.meta["y"])))
    assert got == sorted(GALAXIES)
    assert cut.data.shape == (5, 1, 32, 32)
    # the sky was still in the image: estimated from each border and subtracted
    assert (cut.meta["flags"] & Flag.SKY_ESTIMATED).all() and cut.meta["sky_removed"].all()
    np.testing.assert_allclose(cut.meta["sky"][:, 0], 100.0, atol=1.0)
    keep_all = cutouts_from_image(field, size=32)
    assert len(keep_all) == len(GALAXIES) + len(STARS)
    with pytest.raises(GalguardValueError, match="psf_fwhm"):
        cutouts_from_image(field, size=32, exclude_point_sources=True)


def test_catalog_xy_partial_overlap_and_off_image(field):
    cat = Table({"id": [11, 12, 13, 14], "x": [60.0, 5.0, 500.0, np.nan], "y": [70.0, 150.0, 20.0, 3.0]})
    cut = cutouts_from_image(field, cat, size=(20, 24), fill={"gain": 1.0, "sky": 0.0, "exptime": 1.0})
    assert cut.data.shape == (4, 1, 20, 24)
    assert list(cut.meta["id"]) == [11, 12, 13, 14]
    np.testing.assert_array_equal(cut.data[0, 0], field[60:80, 48:72])
    assert cut.meta["flags"][0] == 0
    assert cut.meta["flags"][1] == Flag.PARTIAL_OVERLAP
    # x = 5: columns -7 .. 16 of the parent; the first 7 are off the image
    assert cut.mask[1, 0, :, :7].all() and not cut.mask[1, 0, :, 7:].any()
    assert not cut.data[1, 0, :, :7].any()
    np.testing.assert_array_equal(cut.data[1, 0, :, 7:], field[140:160, 0:17])
    assert cut.meta["flags"][2] == Flag.BAD_INPUT and "outside the image" in cut.meta["error"][2]
    assert cut.meta["flags"][3] == Flag.BAD_INPUT and "non-finite position" in cut.meta["error"][3]
    assert cut.mask[2:].all()


def test_catalog_radec_through_header_wcs_multiband(field):
    w = _wcs()
    cube = np.stack([field, 2 * field, 3 * field])
    hdr = w.to_header()
    for n, b in enumerate("gri", 1):
        hdr[f"FILTER{n}"] = b
        hdr[f"GAIN{n}"] = 2.0
        hdr[f"SKYLEV{n}"] = 0.0
        hdr[f"EXPTIM{n}"] = 60.0
    hdu = fits.PrimaryHDU(cube, header=hdr)
    sky = w.pixel_to_world([60.0, 150.0], [70.0, 160.0])
    # odd size: the centre pixel is round(x), robust to the round trip through RA/Dec
    cut = cutouts_from_image(hdu, Table({"ra": sky.ra.deg, "dec": sky.dec.deg}), size=15)
    assert cut.bands == ("g", "r", "i") and cut.data.shape == (2, 3, 15, 15)
    np.testing.assert_array_equal(cut.data[0], cube[:, 63:78, 53:68])
    np.testing.assert_allclose(cut.meta["ra"], sky.ra.deg)
    np.testing.assert_allclose(cut.meta["gain"], 2.0)
    # a SkyCoord catalog with an explicit wcs gives the same cutouts
    cut2 = cutouts_from_image(cube, SkyCoord(sky.ra, sky.dec), size=15, wcs=w,
                              fill={"gain": 2.0, "sky": 0.0})
    np.testing.assert_array_equal(cut2.data, cut.data)
    with pytest.raises(GalguardValueError, match="wcs"):
        cutouts_from_image(cube, SkyCoord(sky.ra, sky.dec), size=16)


def test_image_argument_errors(field):
    with pytest.raises(GalguardValueError, match="size must"):
        cutouts_from_image(field, np.array([[1.0, 2.0]]), size=0)
    with pytest.raises(GalguardValueError, match=r"image must be 2-D .* got shape \(2, 2, 2, 2\)"):
        cutouts_from_image(np.zeros((2, 2, 2, 2)), np.array([[1.0, 1.0]]), size=4)
    with pytest.raises(GalguardValueError, match="catalog must have x/y or ra/dec"):
        cutouts_from_image(field, Table({"a": [1.0]}), size=8)
    with pytest.raises(GalguardValueError, match=r"shape \(N, 2\)"):
        cutouts_from_image(field, np.zeros(3), size=8)


def test_parent_variance_and_mask_planes_are_cut_with_the_image(field, tmp_path):
    """An MEF parent (IMAGE, MASK, VARIANCE) and an NDData with an uncertainty: each cutout
    carries its piece of the variance and mask; the gain comes from the variance."""
    from astropy.nddata import NDData, StdDevUncertainty

    g, sky = 4.0, 100.0
    var = np.maximum(field, 0.0) / g  # the sky is still in: var = (f + s) / g of the raw image
    mask = np.zeros(field.shape, np.int32)
    mask[65, 55] = 1 << 2
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(field, name="IMAGE"),
                         fits.ImageHDU(mask, name="MASK"),
                         fits.ImageHDU(var.astype(np.float32), name="VARIANCE")])
    hdul.writeto(tmp_path / "parent.fits")
    cat = Table({"x": [60.0, 200.0], "y": [70.0, 60.0]})
    for parent in (str(tmp_path / "parent.fits"), hdul):
        cut = cutouts_from_image(parent, cat, size=21)
        np.testing.assert_array_equal(cut.variance[0, 0], var[60:81, 50:71].astype(np.float32))
        assert cut.mask[0, 0, 5, 5] and cut.mask[0].sum() == 1 and not cut.mask[1].any()
        np.testing.assert_allclose(cut.meta["sky"][:, 0], sky, rtol=0.05)
        np.testing.assert_allclose(cut.meta["gain"][:, 0], g, rtol=0.05)
    nd = NDData(field, uncertainty=StdDevUncertainty(np.sqrt(var)))
    cut = cutouts_from_image(nd, cat, size=21)
    np.testing.assert_allclose(cut.variance[1, 0], var[50:71, 190:211], rtol=1e-6)
    with pytest.raises(GalguardValueError, match="variance"):
        cutouts_from_image(field, cat, size=21, variance=np.ones((5, 5)))


def test_detection_defaults_give_a_galaxy_sample_on_the_hubble_xdf():
    """The real XDF (scikit-image's copy): the default minimum area (size / 5)**2 keeps the
    resolved sources, about as many as photutils' own segmentation finds (~45 large galaxies),
    where npixels=10 gave 1643 noise peaks and fragments."""
    from skimage import data as skdata  # a test dependency

    rgb = skdata.hubble_deep_field().transpose(2, 0, 1).astype(np.float32)
    cut = cutouts_from_image(rgb, size=100, fill={"gain": 1.0, "exptime": 1.0})
    assert 30 <= len(cut) <= 70
    assert np.median(cut.meta["fwhm"]) > 10  # resolved, not PSF-sized peaks

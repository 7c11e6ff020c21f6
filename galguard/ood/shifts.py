"""Shifted inputs for evaluating out-of-distribution scores: small generators, no data files.

Each function takes in-domain cutouts (N, C, H, W) in the simulator's units (electron/s,
sky-subtracted; `galguard.sim`) and returns shifted versions of the same shape, or makes new
ones. `SHIFTS` lists them with their kind ("far": the model should never be trusted; "near":
plausible survey data with one property changed).
"""

import numpy as np

__all__ = ["SHIFTS", "make_shift", "border_sigma"]


def border_sigma(images):
    """Robust per-plane noise sigma of the border (N, C)."""
    x = np.asarray(images, np.float64)
    h, w = x.shape[-2:]
    b = max(2, min(h, w) // 8)
    ring = np.ones((h, w), bool)
    ring[b:h - b, b:w - b] = False
    e = x[..., ring]
    return 1.4826 * np.median(np.abs(e - np.median(e, axis=-1, keepdims=True)), axis=-1)


def _fit(img, h, w, fill):
    """Centre-crop or pad a plane stack (..., h', w') to (h, w), padding with ``fill(shape)``."""
    hh, ww = img.shape[-2:]
    out = fill(img.shape[:-2] + (h, w))
    ys, yd = (slice((hh - h) // 2, (hh - h) // 2 + h), slice(0, h)) if hh >= h else \
        (slice(0, hh), slice((h - hh) // 2, (h - hh) // 2 + hh))
    xs, xd = (slice((ww - w) // 2, (ww - w) // 2 + w), slice(0, w)) if ww >= w else \
        (slice(0, ww), slice((w - ww) // 2, (w - ww) // 2 + ww))
    out[..., yd, xd] = img[..., ys, xs]
    return out


def _noise_like(images, rng, scale=1.0):
    s = border_sigma(images)[..., None, None] * scale
    return lambda shape: rng.normal(size=shape) * s


def coarser_pixels(images, rng, factor=2):
    """Pixels ``factor`` times larger (summed, as a camera with larger pixels would count them;
    the flux per pixel grows by factor**2), centred and padded with noise of the new level."""
    n, c, h, w = images.shape
    hh, ww = h // factor, w // factor
    x = images[..., :hh * factor, :ww * factor].reshape(n, c, hh, factor, ww, factor).sum((3, 5))
    return _fit(x, h, w, _noise_like(x, rng)).astype(np.float32)


def finer_pixels(images, rng, factor=2):
    """Pixels ``factor`` times smaller: each pixel's flux shared among factor**2 (the galaxy
    appears larger), the centre kept, noise restored to the per-pixel level of finer pixels."""
    from scipy.ndimage import zoom

    n, c, h, w = images.shape
    z = zoom(images.astype(np.float64), (1, 1, factor, factor), order=1) / factor ** 2
    z = _fit(z, h, w, np.zeros)
    sig = border_sigma(images)[..., None, None]
    extra = np.sqrt(np.maximum((sig / factor) ** 2 - border_sigma(z)[..., None, None] ** 2, 0))
    return (z + rng.normal(size=z.shape) * extra).astype(np.float32)


def wider_psf(images, rng, sigma=2.0):
    """A worse seeing: Gaussian blur of ``sigma`` pixels, the noise restored to its level."""
    from scipy.ndimage import gaussian_filter

    b = gaussian_filter(images.astype(np.float64), (0, 0, sigma, sigma))
    sig = border_sigma(images)[..., None, None]
    extra = np.sqrt(np.maximum(sig ** 2 - border_sigma(b)[..., None, None] ** 2, 0))
    return (b + rng.normal(size=b.shape) * extra).astype(np.float32)


def larger_galaxies(images, rng, factor=2.0):
    """Galaxies ``factor`` times larger at the same surface brightness and noise."""
    from scipy.ndimage import zoom

    z = _fit(zoom(images.astype(np.float64), (1, 1, factor, factor), order=1), *images.shape[-2:],
             np.zeros)
    sig = border_sigma(images)[..., None, None]
    smooth = border_sigma(z)[..., None, None]
    extra = np.sqrt(np.maximum(sig ** 2 - smooth ** 2, 0))
    return (z + rng.normal(size=z.shape) * extra).astype(np.float32)


def swapped_bands(images, rng):
    """Band order reversed (i, r, g given as g, r, i)."""
    return images[:, ::-1].copy()


def missing_band(images, rng, band=0):
    """One band empty (zeros): a band not observed."""
    out = images.copy()
    out[:, band] = 0.0
    return out


def render_8bit(images, rng):
    """A colour render as a user would make it (astropy's Lupton RGB, 8 bits), given back as a
    float cube in [0, 1] (a PNG read as an image)."""
    from .._display import rgb

    out = np.empty(images.shape, np.float32)
    for i in range(len(images)):
        stretch = max(float(np.percentile(images[i], 99.5)), 1e-6)
        img = np.asarray(rgb(images[i], stretch=stretch), np.float32) / 255.0   # (H, W, RGB)
        out[i] = np.moveaxis(img, -1, 0)[::-1][: images.shape[1]]             # B, G, R = g, r, i
    return out


def counts_units(images, rng, gain=None, sky=None):
    """Electron counts with the sky in (integers), where flux in electron/s was expected."""
    g = np.asarray(gain if gain is not None else 5520.0, np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(sky if sky is not None else 30.0, np.float64).reshape(1, -1, 1, 1)
    return np.maximum(np.round(g * (images + s)), 0).astype(np.float32)


def pure_noise(images, rng):
    """Gaussian noise at the cutouts' own noise level: nothing there."""
    return (rng.normal(size=images.shape) * border_sigma(images)[..., None, None]).astype(
        np.float32)


def stars_and_artefacts(images, rng):
    """No galaxy: a few stars (Moffat, beta 3, FWHM 3.5 px) and a cosmic ray, a hot pixel or a
    bad column segment, on noise at the cutouts' own level."""
    n, c, h, w = images.shape
    sig = border_sigma(images)
    yy, xx = np.mgrid[:h, :w]
    out = rng.normal(size=images.shape) * sig[..., None, None]
    alpha = 3.5 / (2 * np.sqrt(2 ** (1 / 3.0) - 1))
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
            amp = rng.uniform(30, 3000) * sig[i]
            prof = (1 + ((yy - y0) ** 2 + (xx - x0) ** 2) / alpha ** 2) ** -3.0
            out[i] += amp[:, None, None] * prof
        kind = rng.integers(3)
        b = rng.integers(c)
        if kind == 0:  # a cosmic ray: a short track
            y, x = rng.integers(5, h - 5), rng.integers(5, w - 5)
            for k in range(rng.integers(3, 8)):
                out[i, b, min(h - 1, y + k), min(w - 1, x + k // 2)] += 500 * sig[i, b]
        elif kind == 1:
            out[i, b, rng.integers(h), rng.integers(w)] += 2000 * sig[i, b]
        else:
            x = rng.integers(w)
            y0 = rng.integers(h // 2)
            out[i, b, y0:y0 + h // 3, x] += 300 * sig[i, b]
    return out.astype(np.float32)


#: name -> (function, kind, description)
SHIFTS = {
    "coarser_pixels": (coarser_pixels, "far", "2x larger pixels (summed)"),
    "finer_pixels": (finer_pixels, "near", "2x smaller pixels"),
    "wider_psf": (wider_psf, "near", "Gaussian seeing blur of 2 px"),
    "larger_galaxies": (larger_galaxies, "near", "galaxies 2x larger"),
    "swapped_bands": (swapped_bands, "near", "band order reversed"),
    "missing_band": (missing_band, "far", "first band empty"),
    "render_8bit": (render_8bit, "far", "8-bit colour render in [0, 1]"),
    "counts_units": (counts_units, "far", "electron counts with sky instead of flux"),
    "pure_noise": (pure_noise, "far", "noise only"),
    "stars_and_artefacts": (stars_and_artefacts, "far", "stars, cosmic rays, hot pixels"),
}


def make_shift(name, images, *, seed=0, **kwargs):
    """Shifted versions of ``images`` (see `SHIFTS`), reproducible for a seed."""
    fn = SHIFTS[name][0]
    return fn(np.asarray(images, np.float32), np.random.default_rng([seed, len(name)]), **kwargs)

"""Shifted inputs for evaluating out-of-distribution scores: small generators, no data files.

Each function takes in-domain cutouts (N, C, H, W) in the simulator's units (electron/s,
sky-subtracted; `galguard.sim` at Y10) and returns shifted versions of the same shape, or makes
new ones. `SHIFTS` lists them with their kind ("far": the model should never be trusted;
"near": plausible survey data with one property changed).

Shifts that change the image (pixel scale, PSF, size, stars, noise) are observed again the way
the simulator observes: the transformed image is taken as the expected flux and Poisson counts
are drawn at the Y10 gain and sky, ``k ~ Poisson(g (f + s))``, ``f' = k / g - s``. The noise
then has the level and the quantisation (steps of 1 / g) of in-domain data, so that a score
cannot tell the shift by an artefact of the generator.
"""

import numpy as np

from .features import border_level_sigma

__all__ = ["SHIFTS", "make_shift", "border_sigma", "observe"]


def border_sigma(images):
    """Robust per-plane noise sigma of the border (N, C): `features.border_level_sigma`'s."""
    return border_level_sigma(images)[1]


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


def _y10():
    from ..sim._survey import depth_params

    p = depth_params("y10")
    return np.asarray(p["gain"], np.float64), np.asarray(p["sky"], np.float64)


def observe(expected, rng, *, sky_factor=1.0):
    """Poisson counts at the Y10 gain and sky (``sky_factor`` x the sky: larger pixels collect
    more) for an expected flux image (N, 3, H, W); sky-subtracted flux back."""
    g, s = _y10()
    g = g.reshape(1, -1, 1, 1)
    s = s.reshape(1, -1, 1, 1) * sky_factor
    lam = np.maximum(g * (np.asarray(expected, np.float64) + s), 0.0)
    return (rng.poisson(lam) / g - s).astype(np.float32)


def coarser_pixels(images, rng, factor=2):
    """Pixels ``factor`` times larger (summed, as a camera with larger pixels counts them: the
    flux per pixel grows by factor**2), centred; the frame outside is empty sky of those pixels."""
    n, c, h, w = images.shape
    hh, ww = h // factor, w // factor
    x = images[..., :hh * factor, :ww * factor].reshape(n, c, hh, factor, ww, factor).sum((3, 5))
    frame = observe(np.zeros((n, c, h, w)), rng, sky_factor=factor ** 2)
    return _fit(x, h, w, lambda shape: frame.astype(np.float64)).astype(np.float32)


def finer_pixels(images, rng, factor=2):
    """Pixels ``factor`` times smaller: the galaxy appears ``factor`` times larger and each pixel
    holds 1 / factor**2 of the flux and of the sky; observed again."""
    from scipy.ndimage import zoom

    z = zoom(images.astype(np.float64), (1, 1, factor, factor), order=1) / factor ** 2
    z = _fit(z, *images.shape[-2:], np.zeros)
    return observe(z, rng, sky_factor=1.0 / factor ** 2)


def wider_psf(images, rng, sigma=2.0):
    """A worse seeing: Gaussian blur of ``sigma`` pixels, observed again."""
    from scipy.ndimage import gaussian_filter

    return observe(gaussian_filter(images.astype(np.float64), (0, 0, sigma, sigma)), rng)


def larger_galaxies(images, rng, factor=2.0):
    """Galaxies ``factor`` times larger at the same surface brightness, observed again."""
    from scipy.ndimage import zoom

    z = _fit(zoom(images.astype(np.float64), (1, 1, factor, factor), order=1),
             *images.shape[-2:], np.zeros)
    return observe(z, rng)


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
    """Empty sky observed at Y10: nothing there."""
    return observe(np.zeros(images.shape), rng)


def stars_and_artefacts(images, rng):
    """No galaxy: a few stars (Moffat, beta 3, FWHM 3.5 px) observed at Y10, and a cosmic ray, a
    hot pixel or a bad column segment."""
    n, c, h, w = images.shape
    sig = border_sigma(observe(np.zeros((1, c, h, w)), rng))[0]
    yy, xx = np.mgrid[:h, :w]
    model = np.zeros(images.shape)
    alpha = 3.5 / (2 * np.sqrt(2 ** (1 / 3.0) - 1))
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
            prof = (1 + ((yy - y0) ** 2 + (xx - x0) ** 2) / alpha ** 2) ** -3.0
            model[i] += rng.uniform(30, 3000) * sig[:, None, None] * prof
    out = observe(model, rng)
    for i in range(n):
        kind, b = rng.integers(3), rng.integers(c)
        if kind == 0:  # a cosmic ray: a short track
            y, x = rng.integers(5, h - 5), rng.integers(5, w - 5)
            for k in range(rng.integers(3, 8)):
                out[i, b, min(h - 1, y + k), min(w - 1, x + k // 2)] += 500 * sig[b]
        elif kind == 1:
            out[i, b, rng.integers(h), rng.integers(w)] += 2000 * sig[b]
        else:
            x, y0 = rng.integers(w), rng.integers(h // 2)
            out[i, b, y0:y0 + h // 3, x] += 300 * sig[b]
    return out


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

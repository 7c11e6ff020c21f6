"""Colour composites of cutouts for figures: the one RGB rendering (Lupton et al. 2004, astropy).
"""

import numpy as np

__all__ = ["rgb"]


def rgb(img, *, weights=None, stretch, Q=10.0):
    """A (H, W, 3) uint8 colour composite of a (C, H, W) cutout.

    Bands (g, r, i) map to (B, G, R); a cutout with fewer than three bands is shown in grey
    from its first band. Each band is multiplied by ``weights`` (per band; e.g. zero-point
    factors to a common flux unit) before the asinh stretch of
    `astropy.visualization.make_lupton_rgb` (``stretch``, ``Q``, minimum 0).
    """
    from astropy.visualization import make_lupton_rgb

    img = np.asarray(img, np.float64)
    w = np.ones(img.shape[0]) if weights is None else np.asarray(weights, np.float64)
    bands = [img[k] * w[k] for k in range(img.shape[0])]
    if len(bands) < 3:
        bands = [bands[0]] * 3
    with np.errstate(invalid="ignore", divide="ignore"):  # black pixels: 0 / 0 inside
        return make_lupton_rgb(bands[2], bands[1], bands[0], stretch=stretch, Q=Q, minimum=0.0)

"""A PNG mosaic of simulated galaxies per class and depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._display import rgb
from .._validate import validate_int
from ..errors import GalguardValueError
from ._render import SimData
from ._survey import CLASSES, DEPTHS, depth_params

# --------------------------------------------------------------------------------------------
# Mosaic
# --------------------------------------------------------------------------------------------

def make_mosaic(sims, path, *, max_per_class=6, dpi=100):
    """Write a PNG grid of colour composites (Lupton et al. 2004), labelled by class.

    Parameters
    ----------
    sims : SimData or dict of depth -> SimData
        With several depths, each galaxy is shown at every depth side by side.
    path : str or os.PathLike
        Output PNG.
    max_per_class : int, optional
        Galaxies per class (the first ones of each class).
    dpi : int, optional

    Returns
    -------
    pathlib.Path

    Raises
    ------
    GalguardValueError
        If ``sims`` is not a `SimData` or a dict of them, or ``max_per_class`` < 1.

    Notes
    -----
    Bands are brought to a common AB flux unit, then i, r, g are shown as red, green, blue
    with an arcsinh stretch (Q = 10) set from each galaxy's first-depth r-band image, so the
    depths of one galaxy share a display scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(sims, SimData):
        sims = {sims.depth: sims}
    if not isinstance(sims, dict) or not sims or not all(isinstance(s, SimData)
                                                         for s in sims.values()):
        raise GalguardValueError(
            f"sims must be a SimData or a dict of SimData, got {type(sims).__name__}")
    max_per_class = validate_int("max_per_class", max_per_class, minimum=1)
    depths = [d for d in DEPTHS if d in sims]
    ref = sims[depths[0]]
    zp = depth_params(depths[0])["zeropoint"]
    chosen = []
    for c in range(3):
        chosen += [int(i) for i in np.flatnonzero(ref.labels == c)[:max_per_class]]
    chosen.sort(key=lambda i: (ref.labels[i], i))
    ncols = max(1, min(max_per_class, 6)) * len(depths)
    panels = [(i, d) for i in chosen for d in depths]
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, d) in zip(axes.ravel(), panels):
        img = sims[d].images[i]
        # stretch from the noiseless-ish Y10 image so both depths share one display scale
        r = sims[depths[0]].images[i][1]
        stretch = max(float(np.percentile(r, 99.5)) / 12.0, 1e-6)
        # common flux unit across bands (the r-band zero point)
        weights = [10.0 ** (0.4 * (zp[1] - zp[k])) for k in range(3)]
        ax.imshow(rgb(img, weights=weights, stretch=stretch), origin="lower")
        idx = int(sims[d].meta["index"][i])
        ax.set_title(f"{CLASSES[int(sims[d].labels[i])]} #{idx} {d.upper()}", fontsize=7)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

"""Simulated LSST-like galaxy cutouts: spirals, ellipticals and mergers at Y10 and Y1 depth.

GalSim renders the smooth (Sersic) components of each galaxy; spiral arms, star-forming knots,
discs and tidal features are drawn as numpy patterns on a 3x oversampled grid and convolved with
the same PSF. Each galaxy is rendered once without noise and then observed at every requested
depth by drawing Poisson counts from the counts model of ``docs/contracts.md``::

    k ~ Poisson(gain * (f + sky)),      f_obs = k / gain - sky

with ``f`` the noiseless flux (electron/s per pixel), ``sky`` the sky level (electron/s per
pixel) and ``gain`` the total exposure time of the coadd in that band (electrons per data unit).

Everything random about galaxy ``index`` comes from ``numpy.random.SeedSequence([seed, index,
...])``, so a galaxy is the same whatever ``n``, ``start`` or ``n_jobs`` it was produced with,
and the noise of each depth comes from its own stream keyed on ``(seed, index, depth)``.
"""

from ._fits import sample_path, write_fits
from ._mosaic import make_mosaic
from ._render import SimData, simulate
from ._survey import (BAND_PARAMS, BANDS, CLASSES, DEPTHS, PAPER_CLASS_FRACTIONS, PIXEL_SCALE,
                      class_labels, depth_params)

__all__ = [
    "CLASSES",
    "BANDS",
    "DEPTHS",
    "PIXEL_SCALE",
    "BAND_PARAMS",
    "PAPER_CLASS_FRACTIONS",
    "SimData",
    "simulate",
    "class_labels",
    "depth_params",
    "write_fits",
    "sample_path",
    "make_mosaic",
]

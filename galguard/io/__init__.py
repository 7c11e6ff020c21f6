"""Cutout ingestion: FITS files, HDUs, NDData, arrays and large images to `Cutouts`.

- `read_cutouts` / `iter_cutouts`: cutouts from files, globs, directories, lists, astropy
  HDUs, NDData/CCDData and numpy arrays; `iter_cutouts` streams in bounded-memory chunks.
- `cutouts_from_image`: cutouts from a large image at catalog positions or at sources that
  photutils detects.
- `Cutouts`: float32 (N, C, H, W) sky-subtracted flux, a bool mask, the variance where the
  source has one, and an astropy Table of per-cutout metadata (see `META_COLUMNS` and
  ``docs/contracts.md``).
- Multi-extension files with image, variance (or inverse variance) and mask planes are read as
  one cutout per image (see `galguard.io._planes` for the EXTNAMEs); `variance_gain` measures
  the gain and sky level from a variance plane.

A bad item never raises: it becomes a row flagged `galguard.flags.Flag.BAD_INPUT` with an error
message, zero data and an all-True mask. Input files and arrays are never modified.
"""

from ._cutouts import META_COLUMNS, Cutouts, empty_meta
from ._estimate import DEFAULT_GAIN, border_background, variance_gain
from ._image import cutouts_from_image, detect_sources
from ._options import DEFAULT_CHUNK_SIZE, FITS_SUFFIXES, MAX_CUBE_BANDS
from ._read import iter_cutouts, read_cutouts

__all__ = ["Cutouts", "META_COLUMNS", "empty_meta", "read_cutouts", "iter_cutouts",
           "cutouts_from_image", "detect_sources", "border_background", "variance_gain",
           "DEFAULT_GAIN",
           "DEFAULT_CHUNK_SIZE", "FITS_SUFFIXES", "MAX_CUBE_BANDS"]

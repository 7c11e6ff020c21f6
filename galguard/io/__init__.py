"""Cutout ingestion: FITS files, HDUs, NDData, arrays and large images to `Cutouts`.

- `read_cutouts` / `iter_cutouts`: cutouts from files, globs, directories, lists, astropy
  HDUs, NDData/CCDData and numpy arrays; `iter_cutouts` streams in bounded-memory chunks.
- `cutouts_from_image`: cutouts from a large image at catalog positions or at sources that
  photutils detects.
- `Cutouts`: float32 (N, C, H, W) sky-subtracted flux, a bool mask and an astropy Table of
  per-cutout metadata (see `META_COLUMNS` and ``docs/contracts.md``).

A bad item never raises: it becomes a row flagged `galguard.flags.Flag.BAD_INPUT` with an error
message, zero data and an all-True mask. Input files and arrays are never modified.
"""

from ._cutouts import META_COLUMNS, Cutouts, empty_meta
from ._estimate import DEFAULT_GAIN, border_background
from ._image import cutouts_from_image, detect_sources
from ._options import DEFAULT_CHUNK_SIZE, FITS_SUFFIXES, MAX_CUBE_BANDS
from ._read import iter_cutouts, read_cutouts

__all__ = ["Cutouts", "META_COLUMNS", "empty_meta", "read_cutouts", "iter_cutouts",
           "cutouts_from_image", "detect_sources", "border_background", "DEFAULT_GAIN",
           "DEFAULT_CHUNK_SIZE", "FITS_SUFFIXES", "MAX_CUBE_BANDS"]

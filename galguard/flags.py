"""The per-cutout flag bitmask shared by ingestion (`galguard.io`) and checks (`galguard.check`).

Bits 0-7 and 16 describe the input cutout; bits 8-15 describe the robustness verdicts.

=====  ======================  =========================================================
bit    name                    meaning
=====  ======================  =========================================================
0      BAD_INPUT               the cutout could not be read or used; see the ``error`` column
1      NONFINITE_MASKED        NaN or inf pixels were found, masked and replaced
2      RESIZED                 the cutout was centre-cropped or padded to the requested size
3      PARTIAL_OVERLAP         the cutout extends past the edge of its parent image (padded, masked)
4      SKY_ESTIMATED           the sky level was not in the header and was estimated
5      GAIN_ESTIMATED          the gain was not in the header; estimated or a default used
6      EXPTIME_MISSING         the exposure time was not in the header
7      HEADER_INCOMPLETE       another header value the noise model needs was missing
8      ONEPIXEL_FLIP           a single pixel change flips the predicted class
9      NOISE_UNSTABLE          shallower-depth noise realisations flip the class too often
10     LATENT_SHIFT            a perturbation moves the latent vector unusually far
11     OUT_OF_DISTRIBUTION     the latent vector is far from the training distribution
12     LOW_CONFIDENCE          the predicted class probability is low
13     NOISE_SKIPPED           the noise check could not run on this cutout: no usable gain or
                               sky level (missing, <= 0 or negative sky); NaN noise columns
14     NOISE_MODEL_ESTIMATED   the gain came from a guess (the border estimate or the default:
                               no gain keyword, no variance plane): the noise columns are computed,
                               but no NOISE_UNSTABLE verdict is drawn from a guessed noise model
                               (`CheckConfig.noise_estimated_verdict` turns the verdict back on)
16     VARIANCE_INVALID        pixels with a non-finite or non-positive variance (inverse variance
                               0: no data) were masked
=====  ======================  =========================================================
"""

import enum

__all__ = ["Flag", "INPUT_FLAGS", "VERDICT_FLAGS", "describe", "fragile_mask", "count_rows"]


class Flag(enum.IntFlag):
    """Bitmask of per-cutout flags (see the module docstring for the meaning of each bit)."""

    NONE = 0
    BAD_INPUT = 1 << 0
    NONFINITE_MASKED = 1 << 1
    RESIZED = 1 << 2
    PARTIAL_OVERLAP = 1 << 3
    SKY_ESTIMATED = 1 << 4
    GAIN_ESTIMATED = 1 << 5
    EXPTIME_MISSING = 1 << 6
    HEADER_INCOMPLETE = 1 << 7
    ONEPIXEL_FLIP = 1 << 8
    NOISE_UNSTABLE = 1 << 9
    LATENT_SHIFT = 1 << 10
    OUT_OF_DISTRIBUTION = 1 << 11
    LOW_CONFIDENCE = 1 << 12
    NOISE_SKIPPED = 1 << 13
    NOISE_MODEL_ESTIMATED = 1 << 14
    VARIANCE_INVALID = 1 << 16


INPUT_FLAGS = (Flag.BAD_INPUT | Flag.NONFINITE_MASKED | Flag.RESIZED | Flag.PARTIAL_OVERLAP
               | Flag.SKY_ESTIMATED | Flag.GAIN_ESTIMATED | Flag.EXPTIME_MISSING
               | Flag.HEADER_INCOMPLETE | Flag.VARIANCE_INVALID)
VERDICT_FLAGS = (Flag.ONEPIXEL_FLIP | Flag.NOISE_UNSTABLE | Flag.LATENT_SHIFT
                 | Flag.OUT_OF_DISTRIBUTION | Flag.LOW_CONFIDENCE | Flag.NOISE_SKIPPED
                 | Flag.NOISE_MODEL_ESTIMATED)


def describe(value):
    """Return the names of the flags set in an integer bitmask, e.g. ``['BAD_INPUT']``."""
    value = int(value)
    return [f.name for f in Flag if f.value and value & f.value]


def fragile_mask(flags, fragile_flags):
    """The one definition of ``fragile``: a verdict bit of ``fragile_flags`` is set, or the row
    could not be checked (BAD_INPUT): either way its classification is not to be trusted.

    Parameters
    ----------
    flags : array-like of int
        Per-row flag bitmasks.
    fragile_flags : int
        The verdict bits that make a row fragile (`CheckConfig.fragile_flags`).

    Returns
    -------
    numpy.ndarray of bool
    """
    import numpy as np

    flags = np.asarray(flags, np.int64)
    return ((flags & int(fragile_flags)) != 0) | ((flags & int(Flag.BAD_INPUT)) != 0)


def count_rows(table):
    """Counts every summary reports (the CLI, ``galguard demo``, the report), from a table's
    ``flags`` and ``fragile`` columns: ``{"n", "bad", "fragile", "fragile_checked"}``.

    ``fragile`` counts every row of the ``fragile`` column (`fragile_mask`: bad rows
    included); ``fragile_checked`` the fragile rows that were checked (not BAD_INPUT).
    """
    import numpy as np

    flags = np.asarray(table["flags"], np.int64)
    fragile = np.asarray(table["fragile"], bool)
    bad = (flags & int(Flag.BAD_INPUT)) != 0
    return {"n": int(len(flags)), "bad": int(bad.sum()), "fragile": int(fragile.sum()),
            "fragile_checked": int((fragile & ~bad).sum())}


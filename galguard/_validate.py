"""One validation vocabulary for every public entry point.

Each helper takes the argument's name first and returns the value converted (``int``, ``float``,
...). Failures raise `~galguard.errors.GalguardValueError` with a message that names the argument,
what was expected and what was received, in one form everywhere::

    batch_size must be an integer >= 1, got 0
    seed must be an integer, got float 1.5
    depth_fraction must be in (0.0, 1.0], got 0
    noise_mode must be one of ('thin', 'poisson'), got 'x'
"""

import math

import numpy as np

from .errors import GalguardValueError

__all__ = ["validate_int", "validate_real", "validate_choice", "validate_bool", "int_range"]


def int_range(minimum=None, maximum=None):
    """The words for an integer range: ">= 1", "<= 9", "in [0, 9]" or ""."""
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""


def validate_int(name, value, *, minimum=None, maximum=None):
    """``value`` as an ``int`` in [minimum, maximum] (bools and floats are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GalguardValueError(f"{name} must be an integer, got {type(value).__name__} "
                                 f"{value!r}")
    expected = f"an integer {int_range(minimum, maximum)}".rstrip()
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise GalguardValueError(f"{name} must be {expected}, got {value}")
    return value


def validate_real(name, value, *, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    """``value`` as a finite-or-bounded ``float`` in the interval (strings and bools refused)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise GalguardValueError(f"{name} must be a real number, got {type(value).__name__} "
                                 f"{value!r}")
    v = float(value)
    ok = not math.isnan(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open
                                                                    else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise GalguardValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def validate_choice(name, value, choices):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise GalguardValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def validate_bool(name, value):
    """``value`` if it is a bool (numpy bools become ``bool``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise GalguardValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)

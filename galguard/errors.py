"""Exception and warning classes used throughout galguard."""

from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["GalguardError", "GalguardValueError", "GalguardWarning", "CoreUnavailableWarning"]


class GalguardError(Exception):
    """Base class for galguard errors."""


class GalguardValueError(GalguardError, ValueError):
    """An argument has the wrong type, shape, dtype, device or value.

    The message always names the argument, what was expected and what was received.
    """


class GalguardWarning(AstropyUserWarning):
    """Base class for galguard warnings."""


class CoreUnavailableWarning(GalguardWarning):
    """The compiled core could not be loaded; the slower reference implementation is used."""

"""galguard: which machine-learned galaxy morphologies should a survey pipeline not trust?

galguard runs robustness checks on galaxy cutouts classified by a convolutional network:
a batched one-pixel attack, stability under shallower-depth Poisson noise, and latent-space
distances, and returns a per-galaxy catalog of flags.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("galguard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .errors import GalguardError, GalguardValueError, GalguardWarning
from .flags import Flag

__all__ = ["__version__", "Flag", "GalguardError", "GalguardValueError", "GalguardWarning"]



def __getattr__(name):
    # `galguard.check` is imported on first use so that `import galguard` stays light (no torch).
    # The submodule galguard.check is itself callable, so `galguard.check(...)` works whichever
    # of the function or the submodule the attribute holds.
    if name == "check":
        from .check import check
        globals()["check"] = check
        return check
    if name == "train":  # galguard.train(...): the training entry point, also imported lazily
        from .training import train
        return train
    raise AttributeError(f"module 'galguard' has no attribute {name!r}")

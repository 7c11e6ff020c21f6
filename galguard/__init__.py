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
from .checks import CheckConfig, check
from .training import train

__all__ = ["__version__", "check", "CheckConfig", "Flag", "GalguardError", "GalguardValueError",
           "GalguardWarning", "train"]


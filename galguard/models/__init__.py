"""Galaxy-morphology models: the paper's networks, the `GalaxyClassifier` wrapper and the
weights shipped with galguard.

>>> from galguard import models
>>> model = models.load("default")           # doctest: +SKIP
>>> probs = model.predict(cutouts)            # doctest: +SKIP
"""

from .classifier import GalaxyClassifier, Preprocess, fit_latent_stats
from .networks import ARCHITECTURES, ConvNet, ResNet18, build_network
from .calibrate import calibrate
from .store import available, load, read_card, save, sha256_file, weights_dir
from .wrap import NoPreprocess, WrappedNetwork, wrap

__all__ = ["GalaxyClassifier", "Preprocess", "fit_latent_stats", "ConvNet", "ResNet18",
           "build_network", "ARCHITECTURES", "available", "load", "save", "sha256_file",
           "weights_dir", "read_card", "calibrate", "wrap", "WrappedNetwork", "NoPreprocess"]

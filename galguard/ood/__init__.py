"""Out-of-distribution detection: input statistics, post-hoc scorers, shifted test inputs and the
per-batch domain-shift test.

- `galguard.ood.features`: what a cutout's pixels say about units, depth, resolution and bands;
- `galguard.ood.scorers`: Mahalanobis, deep kNN, energy, ViM and input-statistics scorers,
  fitted on a model's reference set, and their combinations;
- `galguard.ood.shifts`: generators of shifted inputs (pixel scale, PSF, band order, renders,
  units, noise, stars and artefacts) for evaluating them.
"""

from .features import describe_feature, feature_names, input_features
from .scorers import SCORERS, auroc, fit_scorer, score
from .shifts import SHIFTS, make_shift

__all__ = ["input_features", "feature_names", "describe_feature", "SCORERS", "fit_scorer",
           "score", "auroc", "SHIFTS", "make_shift"]

"""galguard's checks: `check` runs them on cutouts and returns the per-galaxy flag table.

* `CheckConfig` (`galguard.checks.config`): every setting, declared once with its doc, range and
  command-line spelling.
* Check objects (`galguard.checks.base`): `Prediction`, `NoiseStability`, `OnePixelCheck`,
  `LatentMetrics`, run in the order of `CHECKS`.
* `check` and `check_cutouts` (`galguard.checks.run`): reading, chunking, the table and its meta.
"""

from .base import (CHECKS, Check, Context, LatentMetrics, NoiseStability, OnePixelCheck,
                   Prediction, physical_bounds, threat_models)
from .config import CheckConfig
from .run import COLUMNS, check, check_cutouts, empty_table, resolve_model, table_meta

__all__ = ["check", "check_cutouts", "CheckConfig", "COLUMNS", "resolve_model", "table_meta",
           "empty_table", "Check", "Context", "CHECKS", "Prediction", "NoiseStability",
           "OnePixelCheck", "LatentMetrics", "physical_bounds", "threat_models"]

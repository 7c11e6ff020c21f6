"""galguard as a Rubin survey-pipeline plug-in.

`GalguardCheckTask` runs `galguard.check` inside a Rubin pipeline (``pipetask run``, BPS); the
pipeline definition is ``pipeline_tasks/pipelines/galguard_check.yaml`` in the galguard source
tree. `CutoutStackFitsFormatter` lets a Butler read and write FITS cutout stacks as
``galguard_cutouts`` tables. Needs the ``lsst`` extra: ``pip install "galguard[lsst]"``.

``import galguard`` never imports this package or lsst.
"""

try:
    import lsst.daf.butler  # noqa: F401
    import lsst.pipe.base  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "galguard_tasks needs the Rubin middleware: pip install \"galguard[lsst]\" "
        f"({exc})") from exc

from .check import GalguardCheckConfig, GalguardCheckConnections, GalguardCheckTask
from .formatters import CutoutStackFitsFormatter
from .tables import make_cutouts_table, read_cutout_stack, split_cutouts_table, write_cutout_stack

__all__ = [
    "GalguardCheckConfig",
    "GalguardCheckConnections",
    "GalguardCheckTask",
    "CutoutStackFitsFormatter",
    "make_cutouts_table",
    "read_cutout_stack",
    "split_cutouts_table",
    "write_cutout_stack",
]

"""`GalguardCheckTask`: galguard robustness checks as a Rubin PipelineTask.

The task reads a ``galguard_cutouts`` table (storage class ``ArrowAstropy``; see
`galguard_tasks.tables` for the columns), runs `galguard.check` on its cutouts and writes the
result table as ``galguard_flags`` (``ArrowAstropy``). The quantum dimensions default to none
(one quantum for the whole input) and are configurable, for example ``["skymap", "tract",
"patch"]`` for one quantum per patch.
"""

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .tables import split_cutouts_table

__all__ = ["GalguardCheckConnections", "GalguardCheckConfig", "GalguardCheckTask"]


class GalguardCheckConnections(pipeBase.PipelineTaskConnections, dimensions=()):
    """Connections of `GalguardCheckTask`: cutouts in, flag table out.

    Both connections take the task's quantum dimensions (``config.dimensions``).
    """

    cutouts = cT.Input(
        doc="Galaxy cutouts: table with 'id' and 'image' (N, C, H, W) columns and optional "
            "per-cutout 'gain', 'sky', 'exptime' and 'band' columns.",
        name="galguard_cutouts",
        storageClass="ArrowAstropy",
        dimensions=(),
    )
    flags = cT.Output(
        doc="galguard.check result table: one row per input cutout, in input order.",
        name="galguard_flags",
        storageClass="ArrowAstropy",
        dimensions=(),
    )

    def __init__(self, *, config=None):
        dimensions = frozenset(config.dimensions)
        self.dimensions = set(dimensions)
        self.cutouts = cT.Input(
            doc=self.cutouts.doc, name=self.cutouts.name,
            storageClass=self.cutouts.storageClass, dimensions=dimensions)
        self.flags = cT.Output(
            doc=self.flags.doc, name=self.flags.name,
            storageClass=self.flags.storageClass, dimensions=dimensions)


class GalguardCheckConfig(pipeBase.PipelineTaskConfig,
                          pipelineConnections=GalguardCheckConnections):
    """Configuration of `GalguardCheckTask`; the check fields mirror `galguard.check`."""

    dimensions = pexConfig.ListField(
        dtype=str,
        default=[],
        doc="Quantum dimensions, also the dimensions of the input and output dataset types; "
            "empty for one quantum over the whole input, e.g. ['skymap', 'tract', 'patch'] for "
            "one quantum per patch.",
    )
    model = pexConfig.Field(
        dtype=str,
        default="default",
        doc="Model name (see galguard.models.available()) or path to a model file.",
    )
    preset = pexConfig.Field(
        dtype=str,
        default="default",
        doc="galguard.check budget preset.",
    )
    seed = pexConfig.RangeField(
        dtype=int,
        default=0,
        min=0,
        doc="Random seed; the same seed gives the same flags for the same cutouts.",
    )
    device = pexConfig.Field(
        dtype=str,
        default=None,
        optional=True,
        doc="Torch device to run on ('cpu', 'cuda', 'cuda:1'); None lets galguard choose.",
    )


class GalguardCheckTask(pipeBase.PipelineTask):
    """Flag the galaxy-morphology classifications that should not be trusted.

    `run` is free of the Butler: it takes the cutout table and returns a
    `~lsst.pipe.base.Struct` whose ``flags`` is the `galguard.check` table. A cutout that
    cannot be used becomes a row with the ``BAD_INPUT`` flag and an ``error`` message; it never
    fails the quantum.
    """

    ConfigClass = GalguardCheckConfig
    _DefaultName = "galguardCheck"

    def run(self, cutouts):
        """Run galguard.check on a cutout table.

        Parameters
        ----------
        cutouts : astropy.table.Table
            ``galguard_cutouts`` table. Not modified.

        Returns
        -------
        result : lsst.pipe.base.Struct
            ``flags``: `astropy.table.Table`, one row per input cutout, in input order.

        Raises
        ------
        lsst.pipe.base.NoWorkFound
            If the table has no rows.
        galguard.errors.GalguardValueError
            If the table does not have the cutout layout (no ``image`` column, ...).
        """
        if len(cutouts) == 0:
            raise pipeBase.NoWorkFound("the cutout table has no rows")
        rows = split_cutouts_table(cutouts)
        n_bad = int(np.count_nonzero(~rows.good))
        if n_bad:
            self.log.warning("%d of %d cutouts cannot be used; they become error rows",
                             n_bad, len(rows))
        table = self._check(rows)
        self.log.info("checked %d cutouts", len(table))
        return pipeBase.Struct(flags=table)

    def _check(self, rows):
        raise NotImplementedError

"""`GalguardCheckTask`: galguard robustness checks as a Rubin PipelineTask.

The task reads a ``galguard_cutouts`` table (storage class ``ArrowAstropy``; see
`galguard_tasks.tables` for the columns), runs `galguard.check` on its cutouts and writes the
result table as ``galguard_flags`` (``ArrowAstropy``). The quantum dimensions default to none
(one quantum for the whole input) and are configurable, for example ``["skymap", "tract",
"patch"]`` for one quantum per patch.
"""

import dataclasses

import numpy as np

import galguard
import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from galguard.checks import CheckConfig
from galguard.checks.config import (CARD_THRESHOLDS, OPTIONS, VERDICT_NAMES, flag_names,
                                    flags_from_names)

from .tables import split_cutouts_table

__all__ = ["GalguardCheckConnections", "GalguardCheckConfig", "GalguardCheckTask", "CHECK_OPTIONS"]


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
        self.cutouts = dataclasses.replace(self.cutouts, dimensions=dimensions)
        self.flags = dataclasses.replace(self.flags, dimensions=dimensions)


def _pex_field(name, opt, default):
    """The pex_config field of one `CheckConfig` field, from its `Option` declaration."""
    if opt.kind == "bool":
        return pexConfig.Field(dtype=bool, default=default, doc=opt.doc)
    if opt.kind == "str":
        return pexConfig.Field(dtype=str, default=default, optional=opt.optional, doc=opt.doc)
    if opt.kind == "choice":
        return pexConfig.ChoiceField(dtype=str, default=default, optional=False,
                                     allowed=dict(opt.choices), doc=opt.doc)
    if opt.kind in ("int", "real"):
        dtype = int if opt.kind == "int" else float
        if opt.minimum is None and opt.maximum is None:
            return pexConfig.Field(dtype=dtype, default=default, optional=opt.optional,
                                   doc=opt.doc)
        return pexConfig.RangeField(dtype=dtype, default=default, optional=opt.optional,
                                    min=opt.minimum, max=opt.maximum,
                                    inclusiveMin=not opt.lo_open, inclusiveMax=not opt.hi_open,
                                    doc=opt.doc)
    if opt.kind == "flags":
        return pexConfig.ListField(dtype=str, default=flag_names(default),
                                   itemCheck=lambda v: v in VERDICT_NAMES,
                                   doc=f"{opt.doc} Names among {', '.join(VERDICT_NAMES)}.")
    if opt.kind == "bounds":  # a choice here; explicit values go in fixed_bounds
        return pexConfig.ChoiceField(
            dtype=str, default=default, optional=False, doc=opt.doc,
            allowed={"cutout": "each band's own [min, max] in the cutout: a plausible bad pixel",
                     "paper": "the [0, 1] normalised space of DeepAdversaries",
                     "fixed": "the explicit [lo, hi] of fixed_bounds"})
    raise TypeError(f"no pex_config field for option kind {opt.kind!r} ({name})")


def _check_fields():
    """A Config class holding one field per `CheckConfig` field, generated from OPTIONS."""
    defaults = {f.name: f.default for f in dataclasses.fields(CheckConfig)}
    fields = {name: _pex_field(name, opt, defaults[name]) for name, opt in OPTIONS.items()}
    for name in CARD_THRESHOLDS:  # None: the model card's calibrated value, else the default
        opt = OPTIONS[name]
        fields[name] = pexConfig.RangeField(
            dtype=float, default=None, optional=True, min=opt.minimum, max=opt.maximum,
            doc=f"{opt.doc} None (default): the model card's calibrated value where it has "
                f"one, else {defaults[name]}.")
    fields["fixed_bounds"] = pexConfig.ListField(
        dtype=float, default=None, optional=True, length=2,
        doc="[lo, hi] pixel value bounds in data units, used when bounds is 'fixed'.")
    return type("CheckConfigFields", (pexConfig.Config,), fields)


#: Config fields passed to `galguard.check` as keyword options (``model`` and ``device`` are
#: passed as its own arguments; ``bounds`` and ``fragile_flags`` are converted).
CHECK_OPTIONS = tuple(name for name in OPTIONS if name != "model")


class GalguardCheckConfig(pipeBase.PipelineTaskConfig, _check_fields(),
                          pipelineConnections=GalguardCheckConnections):
    """Configuration of `GalguardCheckTask`.

    Apart from ``dimensions``, ``device`` and ``fixed_bounds`` the fields are generated from
    `galguard.CheckConfig` (same names, defaults, ranges and docs); `check_options` turns them
    into the keyword arguments of `galguard.check`.
    """

    dimensions = pexConfig.ListField(
        dtype=str,
        default=[],
        doc="Quantum dimensions, also the dimensions of the input and output dataset types; "
            "empty for one quantum over the whole input, e.g. ['skymap', 'tract', 'patch'] for "
            "one quantum per patch.",
    )
    device = pexConfig.Field(
        dtype=str,
        default=None,
        optional=True,
        doc="Torch device to load the model on and compute ('cpu', 'cuda', 'cuda:1'); None: "
            "CPU. Results do not depend on it.",
    )

    def validate(self):
        super().validate()
        if (self.bounds == "fixed") != (self.fixed_bounds is not None):
            raise pexConfig.FieldValidationError(
                GalguardCheckConfig.fixed_bounds, self,
                "fixed_bounds must be set exactly when bounds is 'fixed', got "
                f"bounds={self.bounds!r}, fixed_bounds={self.fixed_bounds}")
        if self.fixed_bounds is not None and not self.fixed_bounds[0] <= self.fixed_bounds[1]:
            raise pexConfig.FieldValidationError(
                GalguardCheckConfig.fixed_bounds, self,
                f"fixed_bounds must be [lo, hi] with lo <= hi, got {list(self.fixed_bounds)}")

    def check_options(self):
        """The keyword options of `galguard.check` that this configuration sets.

        Returns
        -------
        dict
            ``galguard.check(cutouts, model=config.model, device=config.device,
            **config.check_options())`` runs the check the task runs.
        """
        options = {name: getattr(self, name) for name in CHECK_OPTIONS}
        for name in CARD_THRESHOLDS:
            if options[name] is None:  # the card's value (galguard.check applies it)
                del options[name]
        if self.bounds == "fixed":
            options["bounds"] = tuple(float(v) for v in self.fixed_bounds)
        options["fragile_flags"] = flags_from_names(self.fragile_flags)
        return options


class GalguardCheckTask(pipeBase.PipelineTask):
    """Flag the galaxy-morphology classifications that should not be trusted.

    `run` is free of the Butler: it takes the cutout table and returns a
    `~lsst.pipe.base.Struct` whose ``flags`` is the `galguard.check` table, with the input's
    ``id`` values. A cutout that cannot be used (unreadable image, wrong shape for the model, no
    finite pixel) becomes a row with the ``BAD_INPUT`` flag and an ``error`` message; it never
    fails the quantum.
    """

    ConfigClass = GalguardCheckConfig
    _DefaultName = "galguardCheck"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        """Read the cutouts, run `run` with ``butlerQC.resources.num_cores`` torch threads
        (``pipetask run --cores-per-quantum``), write the flags."""
        import torch

        ref = inputRefs.cutouts
        inputs = butlerQC.get(inputRefs)
        source = f"{ref.datasetType.name}@{dict(ref.dataId.required)}" if ref.dataId.required \
            else ref.datasetType.name
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(butlerQC.resources.num_cores)))
        try:
            outputs = self.run(**inputs, source=source)
        finally:
            torch.set_num_threads(threads)
        butlerQC.put(outputs, outputRefs)

    def run(self, cutouts, *, source=""):
        """Run galguard.check on a cutout table.

        Parameters
        ----------
        cutouts : astropy.table.Table
            ``galguard_cutouts`` table (see `galguard_tasks.tables`). Not modified.
        source : str, optional
            Written to the ``source`` column (`runQuantum` gives the dataset type and data ID).

        Returns
        -------
        result : lsst.pipe.base.Struct
            ``flags``: `astropy.table.Table`, one row per input cutout, in input order, with the
            columns and metadata of `galguard.check` and the input's ``id`` values.

        Raises
        ------
        lsst.pipe.base.NoWorkFound
            If the table has no rows.
        galguard.errors.GalguardValueError
            If the table as a whole does not have the cutout layout (no ``image`` column, an
            ``image`` column that is not (N, C, H, W), ...).
        """
        if len(cutouts) == 0:
            raise pipeBase.NoWorkFound("the cutout table has no rows")
        rows = split_cutouts_table(cutouts)
        if not rows.good.all():
            self.log.warning("%d of %d cutouts cannot be used and become error rows; first: %s",
                             np.count_nonzero(~rows.good), len(rows),
                             rows.errors[~rows.good][0])
        images, read_kwargs = rows.check_input()
        flags = galguard.check(images, model=self.config.model, device=self.config.device,
                               read_kwargs=read_kwargs, **self.config.check_options())
        # The table's own ids (which may be strings), its source, and our reason for each row
        # that could not be used (galguard.io saw those as fully masked cutouts).
        flags.replace_column("id", rows.ids)
        if source:
            flags.replace_column("source", np.full(len(flags), str(source)))
        if not rows.good.all():
            errors = np.array(flags["error"], dtype=object)
            errors[~rows.good] = rows.errors[~rows.good]
            flags.replace_column("error", np.array(errors, dtype=str))
        n_fragile = int(np.count_nonzero(flags["fragile"]))
        self.log.info("checked %d cutouts: %d fragile, %d with errors", len(flags), n_fragile,
                      int(np.count_nonzero(flags["error"] != "")))
        return pipeBase.Struct(flags=flags)

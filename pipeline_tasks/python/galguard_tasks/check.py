"""`GalguardCheckTask`: galguard robustness checks as a Rubin PipelineTask.

The task reads a ``galguard_cutouts`` table (storage class ``ArrowAstropy``; see
`galguard_tasks.tables` for the columns), runs `galguard.check` on its cutouts and writes the
result table as ``galguard_flags`` (``ArrowAstropy``). The quantum dimensions default to none
(one quantum for the whole input) and are configurable, for example ``["skymap", "tract",
"patch"]`` for one quantum per patch.
"""

import dataclasses

import numpy as np

import galguard.check
import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from galguard.check import CheckConfig
from galguard.flags import VERDICT_FLAGS, Flag
from galguard.robustness.noise import MODES
from galguard.robustness.onepixel import PRESETS

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


_VERDICT_NAMES = tuple(f.name for f in Flag if f.value and f & VERDICT_FLAGS)

# The defaults are galguard.check's own (CheckConfig), so the task and the library never drift.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CheckConfig)}
_PRESET_DOCS = {name: ", ".join(f"{k}={v}" for k, v in sorted(p.items()))
                for name, p in PRESETS.items()}
_MODE_DOCS = {"thin": "exact binomial thinning of the electron counts",
              "poisson": "additive Poisson noise (an approximation)"}

#: Config fields passed to `galguard.check` as keyword options (``model`` and ``device`` are
#: passed as its own arguments; ``bounds`` and ``fragile_flags`` are converted).
CHECK_OPTIONS = ("preset", "seed", "noise", "noise_realisations", "depth_fraction", "noise_mode",
                 "onepixel", "pixels", "bounds", "low_confidence", "noise_flip_threshold",
                 "latent_shift_threshold", "ood_threshold", "fragile_flags", "batch_size",
                 "attack_batch_size", "chunk_size")


class GalguardCheckConfig(pipeBase.PipelineTaskConfig,
                          pipelineConnections=GalguardCheckConnections):
    """Configuration of `GalguardCheckTask`.

    Apart from ``dimensions`` and ``device`` the fields mirror `galguard.check.CheckConfig`,
    with the same names, defaults and ranges; `check_options` turns them into the keyword
    arguments of `galguard.check`.
    """

    dimensions = pexConfig.ListField(
        dtype=str,
        default=[],
        doc="Quantum dimensions, also the dimensions of the input and output dataset types; "
            "empty for one quantum over the whole input, e.g. ['skymap', 'tract', 'patch'] for "
            "one quantum per patch.",
    )
    model = pexConfig.Field(
        dtype=str,
        default=_DEFAULTS["model"],
        doc="Model name (see galguard.models.available()) or path to a model's .safetensors "
            "file (its .json card beside it).",
    )
    device = pexConfig.Field(
        dtype=str,
        default=None,
        optional=True,
        doc="Torch device to load the model on and compute ('cpu', 'cuda', 'cuda:1'); None: "
            "CPU. Results do not depend on it.",
    )
    preset = pexConfig.ChoiceField(
        dtype=str,
        default=_DEFAULTS["preset"],
        optional=False,
        allowed=_PRESET_DOCS,
        doc="One-pixel attack budget preset (galguard.robustness.PRESETS).",
    )
    seed = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["seed"],
        min=0,
        doc="Seed of every random draw (noise and attack); same seed, same flags.",
    )
    noise = pexConfig.Field(
        dtype=bool,
        default=_DEFAULTS["noise"],
        doc="Run the noise-stability check (needs per-cutout gain and sky).",
    )
    noise_realisations = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["noise_realisations"],
        min=1,
        doc="Shallower-depth noise realisations per cutout.",
    )
    depth_fraction = pexConfig.RangeField(
        dtype=float,
        default=_DEFAULTS["depth_fraction"],
        min=0.0,
        max=1.0,
        inclusiveMin=False,
        inclusiveMax=True,
        doc="Fraction p of the exposure kept in each noise realisation (0.1: LSST Y10 -> Y1).",
    )
    noise_mode = pexConfig.ChoiceField(
        dtype=str,
        default=_DEFAULTS["noise_mode"],
        optional=False,
        allowed={mode: _MODE_DOCS.get(mode, mode) for mode in MODES},
        doc="How shallower-depth realisations are drawn.",
    )
    onepixel = pexConfig.Field(
        dtype=bool,
        default=_DEFAULTS["onepixel"],
        doc="Run the one-pixel attack.",
    )
    pixels = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["pixels"],
        min=1,
        doc="Pixels changed by the attack.",
    )
    bounds = pexConfig.ChoiceField(
        dtype=str,
        default=_DEFAULTS["bounds"],
        optional=False,
        allowed={
            "cutout": "each band's own [min, max] in the cutout: a plausible bad pixel",
            "paper": "the [0, 1] normalised space of DeepAdversaries",
            "fixed": "the explicit [lo, hi] of fixed_bounds",
        },
        doc="Value bounds of the attacked pixel.",
    )
    fixed_bounds = pexConfig.ListField(
        dtype=float,
        default=None,
        optional=True,
        length=2,
        doc="[lo, hi] pixel value bounds in data units, used when bounds is 'fixed'.",
    )
    low_confidence = pexConfig.RangeField(
        dtype=float,
        default=_DEFAULTS["low_confidence"],
        min=0.0,
        max=1.0,
        inclusiveMax=True,
        doc="LOW_CONFIDENCE when the predicted class probability is below this.",
    )
    noise_flip_threshold = pexConfig.RangeField(
        dtype=float,
        default=_DEFAULTS["noise_flip_threshold"],
        min=0.0,
        max=1.0,
        inclusiveMax=True,
        doc="NOISE_UNSTABLE when the fraction of noise realisations that flip the class "
            "exceeds this.",
    )
    latent_shift_threshold = pexConfig.RangeField(
        dtype=float,
        default=_DEFAULTS["latent_shift_threshold"],
        min=0.0,
        doc="LATENT_SHIFT when a latent shift, in units of the model's mean class-centroid "
            "separation, exceeds this.",
    )
    ood_threshold = pexConfig.RangeField(
        dtype=float,
        default=_DEFAULTS["ood_threshold"],
        min=0.0,
        doc="OUT_OF_DISTRIBUTION when the out-of-distribution score (about 1 for "
            "training-like cutouts) exceeds this.",
    )
    fragile_flags = pexConfig.ListField(
        dtype=str,
        default=[name for name in _VERDICT_NAMES
                 if int(Flag[name]) & int(_DEFAULTS["fragile_flags"])],
        itemCheck=lambda name: name in _VERDICT_NAMES,
        doc=f"Verdict flags (names among {', '.join(_VERDICT_NAMES)}) that make a row "
            "'fragile'.",
    )
    batch_size = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["batch_size"],
        min=1,
        doc="Images per model call for predictions and noise; affects speed and memory only.",
    )
    attack_batch_size = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["attack_batch_size"],
        optional=True,
        min=1,
        doc="Candidate images per model call in the one-pixel attack (None: the attack's "
            "default); affects speed and memory only.",
    )
    chunk_size = pexConfig.RangeField(
        dtype=int,
        default=_DEFAULTS["chunk_size"],
        min=1,
        doc="Cutouts processed together; affects memory only.",
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
        if self.bounds == "fixed":
            options["bounds"] = tuple(float(v) for v in self.fixed_bounds)
        options["fragile_flags"] = int(sum(int(Flag[name]) for name in set(self.fragile_flags)))
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
        flags = galguard.check.check(images, model=self.config.model, device=self.config.device,
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

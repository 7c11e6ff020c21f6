"""`CheckConfig`: everything that decides a `check` result, declared once.

Each field is declared with `option`: its default, its doc, its kind and range, its command-line
spelling and its option group. From that one declaration come

* the validation in `CheckConfig.__post_init__` (the `galguard._validate` vocabulary),
* the ``galguard check`` / ``galguard demo`` options (`add_arguments`, `from_args`),
* the Rubin task's pex_config fields (``galguard_tasks.check``, from `OPTIONS`),
* the JSON stored in the table meta (`CheckConfig.to_json`) and the resume hash
  (`CheckConfig.result_dict`: the fields that can change a row).

Adding a check's setting is adding one field here.
"""

import argparse
import dataclasses
import json
import math

import numpy as np

from .._validate import validate_bool, validate_choice, validate_int, validate_real
from ..errors import GalguardValueError
from ..flags import VERDICT_FLAGS, Flag
from ..robustness._threats import DEFAULT_LENGTH, THREATS
from ..robustness.certify import THREATS as CERTIFY_THREATS
from ..robustness.onepixel import BOUND_SPECS, PRESETS, validate_bounds

__all__ = ["CheckConfig", "Option", "option", "OPTIONS", "add_arguments", "from_args",
           "VERDICT_NAMES", "flags_from_names", "flag_names", "given_options",
           "with_card_thresholds", "CARD_THRESHOLDS"]

#: The thresholds a calibrated model card may carry (`galguard.models.calibrate`); `check`
#: takes them from the card unless they are given.
CARD_THRESHOLDS = ("ood_threshold", "latent_shift_threshold")


class _Default(float):
    """A command-line default: equal to the field's default, but known not to be given."""

#: Names of the verdict flags (the bits `CheckConfig.fragile_flags` may hold).
VERDICT_NAMES = tuple(f.name for f in Flag if f.value and f & VERDICT_FLAGS)

_MAX_SEED = 2**64 - 1  # the core's counter-based streams take a 64-bit key


@dataclasses.dataclass(frozen=True)
class Option:
    """How one `CheckConfig` field is documented, validated and spelled.

    Attributes
    ----------
    doc : str
        One-paragraph description (the ``--help`` text, the pex_config ``doc``).
    kind : {"str", "int", "real", "bool", "choice", "bounds", "flags"}
        The value's type. "bounds" is "cutout", "paper" or a (lo, hi) pair; "flags" is an int
        bitmask of verdict flags, spelled as flag names on the command line and in pex_config.
    minimum, maximum : number, optional
        Range of an "int" or "real".
    lo_open, hi_open : bool
        Whether a "real" range excludes its end points.
    choices : dict, optional
        For "choice": each allowed value and its meaning.
    optional : bool
        The field may be None (an "int" meaning "the default of the component").
    cli : str, optional
        The long option; default ``--`` + the name with ``-`` for ``_`` (``--no-NAME`` for a bool
        that defaults to True).
    metavar : str, optional
    group : str
        Option group in ``--help``: "input", "checks", "verdicts" or "computation".
    in_result : bool
        False for fields that change speed and memory only (not part of the resume hash).
    normalise : callable, optional
        Validates and normalises a value in place of the kind's own check (a "str" field with
        a grammar of its own, e.g. ``mask_bits``).
    """

    doc: str
    kind: str
    minimum: object = None
    maximum: object = None
    lo_open: bool = False
    hi_open: bool = False
    choices: dict = None
    optional: bool = False
    cli: str = None
    metavar: str = None
    group: str = "checks"
    in_result: bool = True
    normalise: object = None

    def validate(self, name, value):
        """``value`` checked and normalised (raises GalguardValueError naming ``name``)."""
        if value is None and self.optional:
            return None
        if self.normalise is not None:
            return self.normalise(value)
        if self.kind == "str":
            if not isinstance(value, str):
                raise GalguardValueError(f"{name} must be a str, got {value!r}")
            return value
        if self.kind == "int":
            return validate_int(name, value, minimum=self.minimum, maximum=self.maximum)
        if self.kind == "real":
            return validate_real(name, value, lo=-math.inf if self.minimum is None
                                 else self.minimum, hi=math.inf if self.maximum is None
                                 else self.maximum, lo_open=self.lo_open, hi_open=self.hi_open)
        if self.kind == "bool":
            return validate_bool(name, value)
        if self.kind == "choice":
            return validate_choice(name, value, self.choices)
        if self.kind == "bounds":
            b = validate_bounds(value, name=name)
            return b if isinstance(b, str) else tuple(np.asarray(v, np.float64).tolist()
                                                      for v in b)
        if self.kind == "flags":
            v = validate_int(name, value, minimum=0)
            if v & ~int(VERDICT_FLAGS):
                raise GalguardValueError(
                    f"{name} must only hold verdict bits ({int(VERDICT_FLAGS)}: "
                    f"{', '.join(VERDICT_NAMES)}), got {value}")
            return v
        raise AssertionError(f"unknown option kind {self.kind!r}")  # a declaration bug

    def flag(self, name, default):
        """The command-line spelling of field ``name``."""
        if self.cli:
            return self.cli
        stem = name.replace("_", "-")
        return f"--no-{stem}" if self.kind == "bool" and default else f"--{stem}"


def option(default, doc, kind, **kw):
    """A `CheckConfig` field: ``default`` plus its `Option` as field metadata."""
    return dataclasses.field(default=default, metadata={"option": Option(doc, kind, **kw)})


def _mask_bits_text(value):
    """mask_bits as a normalised comma-separated string (validated as `read_cutouts` does)."""
    from ..io._planes import validate_mask_bits

    return ",".join(str(b) for b in validate_mask_bits(value))


def _preset_docs():
    return {name: f"population {p['popsize']} x {p['max_iter']} generations, DE {p['strategy']}"
            + (f", crossover {p['crossover']}" if p["crossover"] else ", no crossover")
            for name, p in PRESETS.items()}


_DEFAULT_FRAGILE = int(Flag.ONEPIXEL_FLIP | Flag.NOISE_UNSTABLE | Flag.OUT_OF_DISTRIBUTION
                       | Flag.LOW_CONFIDENCE)


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    model: str = option(
        "default", "Model name (galguard.models.available()) or path to NAME.safetensors with "
        "its NAME.json card (or the name of a model object passed in).", "str")
    preset: str = option(
        "default", "One-pixel attack budget (galguard.robustness.PRESETS). 'default' suits a "
        "CPU; 'paper' is the DeepAdversaries budget.", "choice", choices=_preset_docs())
    seed: int = option(0, "Seed of every random draw (noise and attack): same seed, same "
                       "result.", "int", minimum=0, maximum=_MAX_SEED)
    mask_bits: object = option(
        None, "Bits of mask planes (MASK, BITMASK, DQ, FLAGS extensions) that mark bad pixels: "
        "bit numbers or the mask header's MP_ names, comma-separated (e.g. BAD,SAT,CR,NO_DATA "
        "for Rubin, whose DETECTED bit covers every source). Default: every set bit.", "str",
        optional=True, group="input", metavar="BITS", normalise=_mask_bits_text)
    noise: bool = option(True, "Run the noise-stability check (needs gain and sky levels).",
                         "bool")
    noise_realisations: int = option(10, "Shallower-depth noise realisations per cutout.",
                                     "int", minimum=1, metavar="K")
    depth_fraction: float = option(
        0.1, "Fraction p of the exposure kept in each noise realisation (0.1: LSST Y10 -> Y1).",
        "real", minimum=0.0, maximum=1.0, lo_open=True, metavar="P")
    noise_mode: str = option(
        "thin", "How shallower-depth realisations are drawn.", "choice",
        choices={"thin": "exact binomial thinning of the electron counts",
                 "poisson": "additive Poisson noise (an approximation)"})
    onepixel: bool = option(True, "Run the one-pixel attack.", "bool")
    pixels: int = option(1, "Pixels changed by the attack.", "int", minimum=1, metavar="N")
    bounds: object = option(
        "cutout", "Value bounds of the attacked pixel: 'cutout' (each band's own [min, max] in "
        "the cutout: a plausible bad pixel), 'saturation' (from the cutout's minimum up to its "
        "saturation level, the header's SATURATE less the sky, where known; else as 'cutout'), "
        "'paper' (the [0, 1] normalised space of DeepAdversaries) or LO,HI in data units.",
        "bounds", metavar="BOUNDS")
    threat: str = option(
        "pixel", "What the attack (and --certify) may change: the threat model.", "choice",
        choices=THREATS)
    artefact_length: int = option(
        DEFAULT_LENGTH, "Pixels of a cosmic_ray track or a bad_column segment.", "int",
        minimum=1, metavar="N")
    certify: bool = option(
        False, "Exact one-pixel verdicts (experimental, slower than the attack): where the "
        "attack finds no flip, bound every position's logits over the whole value box and "
        "split the boxes until the galaxy is proved robust (onepixel_status 'certified'), a "
        "flip is found, or certify_boxes runs out ('unknown'). Every threat.",
        "bool")
    certify_boxes: int = option(
        500000, "Most value boxes bounded per galaxy (and cosmic_ray track direction) by "
        "--certify (its first pass, one box per position and changed band, always runs; a "
        "galaxy is 'unknown' when they run out). On 48 fresh simulated galaxies (default "
        "model) 600 000 gives a pixel verdict for 46 (the most a certified one took: 325 630), "
        "120 000 for 36; band_pixel: 120 000 gives 48 and 47 of 48 (default model, no DA), "
        "40 000 44 and 35. Only undecided galaxies spend more with a larger budget.", "int",
        minimum=1, metavar="N")
    low_confidence: float = option(
        0.5, "LOW_CONFIDENCE when the predicted class probability is below this.", "real",
        minimum=0.0, maximum=1.0, group="verdicts", metavar="P")
    noise_flip_threshold: float = option(
        0.2, "NOISE_UNSTABLE when the fraction of noise realisations that flip the class "
        "exceeds this.", "real", minimum=0.0, maximum=1.0, group="verdicts", metavar="F")
    noise_estimated_verdict: bool = option(
        False, "Also draw NOISE_UNSTABLE verdicts where the gain is a guess (no gain keyword, no "
        "variance plane: flag NOISE_MODEL_ESTIMATED). Off: such rows get their noise columns "
        "but no verdict (docs/experiments.md measures how often a guessed gain changes it).",
        "bool", group="verdicts")
    latent_shift_threshold: float = option(
        0.8, "LATENT_SHIFT when a latent shift (noise mean, or the one-pixel version's), in "
        "units of the model's mean class-centroid separation, exceeds this. 0.8 is the 99th "
        "percentile of one Y1 realisation's shifts of simulated Y10 galaxies with the default "
        "model (docs/experiments.md).", "real", minimum=0.0, group="verdicts", metavar="S")
    ood_threshold: float = option(
        5.0, "OUT_OF_DISTRIBUTION when the out-of-distribution score (about 1 for "
        "training-like latents; 99th percentile 3.9-5.1 with the shipped ConvNets on simulated "
        "Y10 galaxies) exceeds this. Recalibrate on your own data.", "real", minimum=0.0,
        group="verdicts", metavar="S")
    domain_shift_alpha: float = option(
        0.01, "Significance level of the per-batch domain-shift test (table meta domain_shift: "
        "are there more OUT_OF_DISTRIBUTION cutouts than in-domain data give?).", "real",
        minimum=0.0, maximum=1.0, lo_open=True, group="verdicts", metavar="ALPHA")
    fragile_flags: int = option(
        _DEFAULT_FRAGILE, "Verdict flags that make a row fragile (a bitmask; flag names on the "
        f"command line, comma-separated, among {', '.join(VERDICT_NAMES)}).", "flags",
        group="verdicts", metavar="NAMES")
    batch_size: int = option(256, "Images per model call for predictions and noise.", "int",
                             minimum=1, group="computation", metavar="N", in_result=False)
    attack_batch_size: object = option(
        None, "Candidate images per model call in the attack (default: the attack's own).",
        "int", minimum=1, optional=True, group="computation", metavar="N")
    chunk_size: int = option(
        256, "Cutouts read and checked together; the unit of the journal of galguard check, "
        "so --resume needs the same value.", "int", minimum=1, group="computation",
        metavar="N")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = f.metadata["option"].validate(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        if self.threat != "pixel" and self.pixels != 1:
            raise GalguardValueError(
                f"pixels must be 1 with threat={self.threat!r} (artefact_length sets the pixels "
                f"of an artefact), got {self.pixels}")
        if self.certify and self.threat not in CERTIFY_THREATS:
            raise GalguardValueError(
                f"certify supports the threats {CERTIFY_THREATS}, got threat={self.threat!r}")
        if self.certify and self.pixels != 1:
            raise GalguardValueError(f"certify needs pixels=1, got {self.pixels}")

    def changed_pixels(self):
        """Pixels one attack candidate changes (the shape of the onepixel_x/y columns)."""
        if self.threat == "pixel":
            return self.pixels
        return 1 if self.threat == "band_pixel" else self.artefact_length

    def to_dict(self):
        """The configuration as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        if not isinstance(d["bounds"], str):
            d["bounds"] = [b for b in d["bounds"]]
        return d

    def result_dict(self):
        """`to_dict` without the fields that change only speed and memory (the resume hash)."""
        d = self.to_dict()
        for name, opt in OPTIONS.items():
            if not opt.in_result:
                d.pop(name)
        return d

    def to_json(self):
        """The configuration as a JSON string (as stored in the table meta)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        """Rebuild a configuration from `to_dict` output (unknown keys raise)."""
        unknown = sorted(set(d) - set(OPTIONS))
        if unknown:
            raise GalguardValueError(f"config has unknown option(s) {unknown}; known: "
                                     f"{sorted(OPTIONS)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text):
        """Rebuild a configuration from `to_json` output."""
        return cls.from_dict(json.loads(text))


#: Field name -> `Option`, in declaration order.
OPTIONS = {f.name: f.metadata["option"] for f in dataclasses.fields(CheckConfig)}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CheckConfig)}


def _doc():
    lines = ["Everything that decides the result of `check` (recorded in the table's meta).",
             "", "Attributes", "----------"]
    for name, opt in OPTIONS.items():
        lines.append(f"{name} : {opt.kind}, default {_DEFAULTS[name]!r}")
        lines.append(f"    {opt.doc}")
    return "\n".join(lines)


CheckConfig.__doc__ = _doc()


def flags_from_names(names, *, name="fragile_flags"):
    """The bitmask of verdict flag names (a sequence, or a comma-separated string)."""
    if isinstance(names, str):
        names = [s for s in (p.strip() for p in names.split(",")) if s]
    out = 0
    for n in names:
        key = str(n).strip().upper()
        if key not in VERDICT_NAMES:
            raise GalguardValueError(f"{name} must name verdict flags among "
                                     f"{', '.join(VERDICT_NAMES)}, got {n!r}")
        out |= int(Flag[key])
    return out


def flag_names(bits):
    """The verdict flag names set in ``bits``, in bit order."""
    return [n for n in VERDICT_NAMES if int(Flag[n]) & int(bits)]


def _parse_bounds(text):
    if text in BOUND_SPECS:
        return text
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'cutout', 'saturation', 'paper' or LO,HI, got {text!r}") from None
    return (lo, hi)


def _cli_value(text, kind):
    if kind == "int":
        return int(text)
    if kind == "real":
        return float(text)
    if kind == "bounds":
        return _parse_bounds(text)
    if kind == "flags":
        return flags_from_names(text)
    return text


_GROUP_TITLES = {"input": "input",
                 "checks": "checks",
                 "verdicts": "verdict thresholds",
                 "computation": "computation (speed and memory only; results do not change)"}


def add_arguments(parser, *, skip=()):
    """Add one command-line option per `CheckConfig` field to an argparse ``parser``.

    The options set attributes named as the fields; `from_args` builds the config from them.
    Values are checked by `CheckConfig` itself, so its messages reach the user.
    """
    groups = {}
    for name, opt in OPTIONS.items():
        if name in skip:
            continue
        g = groups.get(opt.group)
        if g is None:
            g = groups[opt.group] = parser.add_argument_group(_GROUP_TITLES[opt.group])
        default = _DEFAULTS[name]
        spelling = opt.flag(name, default)
        if opt.kind == "bool":
            doc = opt.doc[0].lower() + opt.doc[1:]
            g.add_argument(spelling, dest=name, action="store_false" if default else "store_true",
                           default=default,
                           help=f"do not {doc}" if default else f"{opt.doc} (default: off)")
            continue
        if opt.kind == "flags":
            shown = ",".join(flag_names(default))
        elif opt.kind == "choice":
            shown = default
        else:
            shown = "%(default)s"
        choices = ""
        if opt.kind == "choice":
            choices = " Choices: " + "; ".join(f"'{k}' ({v})" for k, v in opt.choices.items()) \
                + "."
        kind = opt.kind

        def parse(text, kind=kind):
            try:
                return _cli_value(text, kind)
            except GalguardValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
            except ValueError:
                what = {"int": "an integer", "real": "a number"}.get(kind, "a value")
                raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

        g.add_argument(spelling, dest=name,
                       default=_Default(default) if kind == "real" else default,
                       type=None if kind in ("str", "choice") else parse,
                       choices=tuple(opt.choices) if kind == "choice" else None,
                       metavar=opt.metavar or ("NAME" if kind == "str" else None),
                       help=f"{opt.doc}{choices} (default: {shown})".replace("%", "%%")
                       .replace("%%(default)s", "%(default)s"))


def given_options(args):
    """The names of the real-valued options given on the command line (not defaults)."""
    return {name for name in OPTIONS if hasattr(args, name)
            and not isinstance(getattr(args, name), _Default)}


def with_card_thresholds(config, card, *, given=()):
    """``config`` with the thresholds of a calibrated model ``card`` (`CARD_THRESHOLDS`), for
    those not in ``given`` (the options the user set)."""
    thresholds = (card or {}).get("thresholds") or {}
    take = {k: float(v) for k, v in thresholds.items() if k in CARD_THRESHOLDS
            and k not in given}
    return dataclasses.replace(config, **take) if take else config


def from_args(args, **overrides):
    """A `CheckConfig` from options added by `add_arguments` (raises GalguardValueError)."""
    values = {name: (float(getattr(args, name)) if isinstance(getattr(args, name), _Default)
                     else getattr(args, name)) for name in OPTIONS if hasattr(args, name)}
    values.update(overrides)
    if values.get("model") is not None:
        values["model"] = str(values["model"])
    return CheckConfig(**values)

"""`galguard.check`: run every robustness check on a set of cutouts and return a flag table.

For each cutout the model's prediction is checked three ways:

* noise stability: K realisations at a shallower depth (`galguard.robustness.noise`);
* a one-pixel attack on the predicted class (`galguard.robustness.OnePixelAttack`);
* latent-space metrics: the shift each perturbation causes and an out-of-distribution score
  (`galguard.robustness.latent`).

The result is an astropy Table with one row per input cutout, in input order.
"""

import dataclasses
import json
import logging
import math
import sys
import types

import numpy as np
import torch
from astropy.table import Table, vstack

from . import __version__
from .errors import GalguardValueError
from .flags import INPUT_FLAGS, VERDICT_FLAGS, Flag
from .robustness.latent import get_latent_stats, latent_shift, model_latent, ood_score
from .robustness.noise import MODES, noise_stability
from .robustness.onepixel import PRESETS, OnePixelAttack, model_logits

__all__ = ["check", "check_cutouts", "CheckConfig", "COLUMNS", "resolve_model"]

log = logging.getLogger(__name__)

#: The columns of the table `check` returns, in order (DESIGN.md's contract).
COLUMNS = ("id", "source", "pred_label", "pred_prob", "probs", "noise_flip_rate",
           "noise_prob_drop", "onepixel_success", "onepixel_x", "onepixel_y", "onepixel_values",
           "onepixel_label", "onepixel_prob", "onepixel_queries", "latent_shift_noise",
           "latent_shift_onepixel", "ood_score", "flags", "fragile", "error")


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Everything that decides the result of `check` (recorded in the table's meta).

    Attributes
    ----------
    model : str
        Model name or path for `galguard.models.load` (or the name of a model object passed in).
    preset : {"default", "fast", "paper"}
        One-pixel attack budget (`galguard.robustness.PRESETS`). "default" suits a 2-core CPU;
        "paper" is the DeepAdversaries budget (population 400, 100 generations).
    seed : int
        Seed for every random draw (noise and attack).
    noise : bool
        Run the noise-stability check.
    noise_realisations : int
        Shallower-depth realisations per cutout.
    depth_fraction : float
        Fraction p of the exposure kept in each realisation (0.1: LSST Y10 -> Y1).
    noise_mode : {"thin", "poisson"}
        Exact binomial thinning or the additive-Poisson approximation.
    onepixel : bool
        Run the one-pixel attack.
    pixels : int
        Pixels changed by the attack.
    bounds : str or (lo, hi)
        Attack value bounds ("cutout", "paper" or a pair); see `OnePixelAttack`.
    low_confidence : float
        LOW_CONFIDENCE when the predicted class probability is below this.
    noise_flip_threshold : float
        NOISE_UNSTABLE when the fraction of noise realisations that flip the class exceeds this.
    latent_shift_threshold : float
        LATENT_SHIFT when a normalised latent shift (noise mean, or the one-pixel version's)
        exceeds this (1 = the model's mean distance between class centroids). The default 0.8
        is the 99th percentile of the shifts that one Y1-depth realisation of a simulated Y10
        galaxy causes with the default model (docs/experiments.md).
    ood_threshold : float
        OUT_OF_DISTRIBUTION when the OOD score exceeds this (about 1 for training-like latents;
        with the shipped ConvNets on simulated Y10 galaxies the 99th percentile is 3.9-5.1, so
        the default 5.0 flags about one percent). Recalibrate both on your own data.
    fragile_flags : int
        Verdict bits that make a row ``fragile``.
    batch_size : int
        Images per model call for predictions and noise. Affects speed and memory only.
    attack_batch_size : int or None
        Candidate images per model call in the attack (None: the attack's default). Affects
        speed and memory only.
    chunk_size : int
        Cutouts processed together; affects memory only.
    """

    model: str = "default"
    preset: str = "default"
    seed: int = 0
    noise: bool = True
    noise_realisations: int = 10
    depth_fraction: float = 0.1
    noise_mode: str = "thin"
    onepixel: bool = True
    pixels: int = 1
    bounds: object = "cutout"
    low_confidence: float = 0.5
    noise_flip_threshold: float = 0.2
    latent_shift_threshold: float = 0.8
    ood_threshold: float = 5.0
    fragile_flags: int = int(Flag.ONEPIXEL_FLIP | Flag.NOISE_UNSTABLE | Flag.OUT_OF_DISTRIBUTION
                             | Flag.LOW_CONFIDENCE)
    batch_size: int = 256
    attack_batch_size: object = None
    chunk_size: int = 256

    def __post_init__(self):
        _check_int("seed", self.seed, 0)
        _check_int("noise_realisations", self.noise_realisations, 1)
        _check_int("pixels", self.pixels, 1)
        _check_int("batch_size", self.batch_size, 1)
        if self.attack_batch_size is not None:
            _check_int("attack_batch_size", self.attack_batch_size, 1)
        _check_int("chunk_size", self.chunk_size, 1)
        _check_int("fragile_flags", self.fragile_flags, 0)
        if int(self.fragile_flags) & ~int(VERDICT_FLAGS):
            raise GalguardValueError(
                f"fragile_flags must only hold verdict bits ({int(VERDICT_FLAGS)}), got "
                f"{self.fragile_flags}")
        if self.preset not in PRESETS:
            raise GalguardValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        if self.noise_mode not in MODES:
            raise GalguardValueError(f"noise_mode must be one of {MODES}, got {self.noise_mode!r}")
        if not isinstance(self.model, str):
            raise GalguardValueError(f"model must be a str in CheckConfig, got {self.model!r}")
        for name in ("noise", "onepixel"):
            if not isinstance(getattr(self, name), bool):
                raise GalguardValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _check_float("depth_fraction", self.depth_fraction, 0.0, 1.0, lo_open=True)
        for name in ("low_confidence", "noise_flip_threshold"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
        for name in ("latent_shift_threshold", "ood_threshold"):
            _check_float(name, getattr(self, name), 0.0, math.inf)
        # Validate the attack settings now rather than in the middle of a run.
        OnePixelAttack(torch.nn.Identity(), pixels=self.pixels, bounds=self.bounds)
        if not isinstance(self.bounds, str):
            object.__setattr__(self, "bounds", tuple(np.asarray(b, dtype=np.float64).tolist()
                                                      for b in self.bounds))

    def to_dict(self):
        """The configuration as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        if not isinstance(d["bounds"], str):
            d["bounds"] = [b for b in d["bounds"]]
        return d

    def to_json(self):
        """The configuration as a JSON string (as stored in the table meta)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        """Rebuild a configuration from `to_dict` output (unknown keys raise)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise GalguardValueError(f"config has unknown option(s) {unknown}; known: "
                                     f"{sorted(fields)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text):
        """Rebuild a configuration from `to_json` output."""
        return cls.from_dict(json.loads(text))


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise GalguardValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name, value, lo, hi, *, lo_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GalguardValueError(f"{name} must be a number, got {value!r}") from None
    bad = v <= lo if lo_open else v < lo
    if math.isnan(v) or bad or v > hi:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise GalguardValueError(f"{name} must be in {interval}, got {value!r}")


def resolve_model(model, *, device=None):
    """Return ``(module, name, sha256)`` for a model name, path or module.

    Parameters
    ----------
    model : str, os.PathLike or torch.nn.Module
        A name or path for `galguard.models.load`, or a module (a `GalaxyClassifier` or any module
        returning logits or ``(latent, logits)``).
    device : str or torch.device, optional
        Where to load a named model (default CPU). A module passed in is used where it is.
    """
    if isinstance(model, torch.nn.Module):
        name = getattr(model, "name", None) or type(model).__name__
        return model, str(name), str(getattr(model, "sha256", None) or "")
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from . import models
        m = models.load(model, device=device or "cpu")
        return m, str(m.name), str(m.sha256 or "")
    raise GalguardValueError(
        f"model must be a model name, a path or a torch.nn.Module, got {type(model).__name__}")


def _model_device(model):
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _empty_table(n, n_classes, channels, pixels):
    t = Table()
    t["id"] = np.full(n, -1, np.int64)
    t["source"] = np.full(n, "", dtype="U1")
    t["pred_label"] = np.full(n, -1, np.int64)
    t["pred_prob"] = np.full(n, np.nan, np.float32)
    t["probs"] = np.full((n, n_classes), np.nan, np.float32)
    t["noise_flip_rate"] = np.full(n, np.nan, np.float32)
    t["noise_prob_drop"] = np.full(n, np.nan, np.float32)
    t["onepixel_success"] = np.zeros(n, bool)
    pshape = (n,) if pixels == 1 else (n, pixels)
    t["onepixel_x"] = np.full(pshape, -1, np.int64)
    t["onepixel_y"] = np.full(pshape, -1, np.int64)
    t["onepixel_values"] = np.full(pshape + (channels,), np.nan, np.float32)
    t["onepixel_label"] = np.full(n, -1, np.int64)
    t["onepixel_prob"] = np.full(n, np.nan, np.float32)
    t["onepixel_queries"] = np.zeros(n, np.int64)
    t["latent_shift_noise"] = np.full(n, np.nan, np.float32)
    t["latent_shift_onepixel"] = np.full(n, np.nan, np.float32)
    t["ood_score"] = np.full(n, np.nan, np.float32)
    t["flags"] = np.zeros(n, np.int64)
    t["fragile"] = np.zeros(n, bool)
    t["error"] = np.full(n, "", dtype="U1")
    return t


def _forward(model, x, batch_size):
    lat, probs = [], []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size])
        probs.append(torch.softmax(model_logits(out).float(), dim=1))
        z = model_latent(out)
        lat.append(None if z is None else z.float())
    latent = None if not lat or any(z is None for z in lat) else torch.cat(lat)
    return latent, torch.cat(probs)


def _shape_problem(model, shape):
    """A message when cutouts of (C, H, W) `shape` cannot go through `model`, else ""."""
    bands = getattr(model, "bands", None)
    size = getattr(model, "input_size", None)
    if bands is None or size is None:
        return ""
    want = (len(bands), int(size), int(size))
    if tuple(shape) != want:
        return (f"cutout shape {tuple(shape)} does not match the model input {want} "
                f"(bands {','.join(bands)})")
    return ""


def check_cutouts(cutouts, config, model, *, offset=0, device=None, n_classes=None):
    """Run the checks on one in-memory batch of cutouts (the streaming entry point).

    Parameters
    ----------
    cutouts : galguard.io.Cutouts
        One chunk of cutouts.
    config : CheckConfig
    model : torch.nn.Module
        The loaded model (see `resolve_model`).
    offset : int, optional
        Global position of the chunk's first cutout in the whole input. Random streams are keyed
        on ``offset + i``, so splitting an input into chunks does not change any result.
    device : str or torch.device, optional
        Where to compute (default: the model's device). Data are moved there; the model is not.
    n_classes : int, optional
        Number of classes when no row can be evaluated (default: from the model).

    Returns
    -------
    astropy.table.Table
        The rows of `check`'s table for these cutouts (no table meta).
    """
    if not isinstance(config, CheckConfig):
        raise GalguardValueError(f"config must be a CheckConfig, got {type(config).__name__}")
    _check_int("offset", offset, 0)
    device = torch.device(device) if device is not None else _model_device(model)
    n = len(cutouts)
    C = cutouts.data.shape[1]
    if n_classes is None:
        n_classes = len(getattr(model, "classes", ())) or None
    meta = cutouts.meta
    in_flags = np.asarray(meta["flags"], np.int64) if "flags" in meta.colnames else \
        np.zeros(n, np.int64)
    errors = [str(e) for e in meta["error"]] if "error" in meta.colnames else [""] * n
    good = (in_flags & int(Flag.BAD_INPUT)) == 0
    problem = _shape_problem(model, cutouts.data.shape[1:])
    if problem:
        errors = [e or problem for e in errors]
        in_flags = in_flags | int(Flag.BAD_INPUT)
        good[:] = False

    keys_all = offset + np.arange(n, dtype=np.int64)
    idx = np.flatnonzero(good)
    res = {}
    if idx.size:
        res = _run_checks(cutouts, idx, keys_all[idx], config, model, device)
        n_classes = res["probs"].shape[1]
    if n_classes is None:
        n_classes = 0
    t = _empty_table(n, n_classes, C, config.pixels)
    ids = np.asarray(meta["id"], np.int64) if "id" in meta.colnames else keys_all
    t["id"] = np.where(ids >= 0, ids, keys_all)  # unknown ids: the global input position
    if "source" in meta.colnames:
        t["source"] = np.asarray(meta["source"]).astype(str)
    for name, values in res.items():
        t[name][idx] = values
    verdict = np.zeros(n, np.int64)
    if idx.size:
        verdict[idx] = res["flags"]
    t["flags"] = in_flags | verdict
    bad = ~good
    t["fragile"] = ((t["flags"] & int(config.fragile_flags)) != 0) | bad
    t["error"] = np.asarray(errors, dtype=str) if n else np.zeros(0, "U1")
    return t


def _run_checks(cutouts, idx, keys, config, model, device):
    """Checks on the good rows `idx`; returns a dict column -> values for those rows."""
    x = torch.from_numpy(np.ascontiguousarray(cutouts.data[idx])).to(device)
    keys_t = torch.as_tensor(keys, dtype=torch.int64, device=device)
    m = len(idx)
    out = {}
    stats = get_latent_stats(model)
    sep = float(stats["centroid_separation"]) if stats is not None else None
    if sep is not None and not sep > 0:
        sep = None
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            latent0, probs0 = _forward(model, x, config.batch_size)
    finally:
        model.train(was_training)
    pred = probs0.argmax(dim=1)
    pred_prob = probs0.gather(1, pred[:, None])[:, 0]
    out["pred_label"] = pred.cpu().numpy()
    out["pred_prob"] = pred_prob.cpu().numpy()
    out["probs"] = probs0.cpu().numpy()
    flags = np.zeros(m, np.int64)
    flags[out["pred_prob"] < config.low_confidence] |= int(Flag.LOW_CONFIDENCE)

    if stats is not None and latent0 is not None:
        out["ood_score"] = ood_score(latent0, stats).cpu().numpy()
        flags[out["ood_score"] > config.ood_threshold] |= int(Flag.OUT_OF_DISTRIBUTION)

    shift_flag = np.zeros(m, bool)
    if config.noise:
        gain = np.asarray(cutouts.meta["gain"], np.float64)[idx].reshape(m, -1)
        sky = np.asarray(cutouts.meta["sky"], np.float64)[idx].reshape(m, -1)
        ok = np.all(np.isfinite(gain) & (gain > 0), axis=1) & np.all(np.isfinite(sky), axis=1)
        if not ok.all():
            log.warning("%d cutout(s) have no usable gain or sky level; their noise check is "
                        "skipped (NaN)", int((~ok).sum()))
        sel = np.flatnonzero(ok)
        if sel.size:
            sel_t = torch.as_tensor(sel, device=device)
            clean = (None if latent0 is None else latent0[sel_t], probs0[sel_t])
            nr = noise_stability(model, x[sel_t], gain=gain[sel], sky=sky[sel],
                                 p=config.depth_fraction, realisations=config.noise_realisations,
                                 mode=config.noise_mode, seed=config.seed, index=keys_t[sel_t],
                                 batch_size=config.batch_size, clean=clean)
            for name, values in (("noise_flip_rate", nr.flip_rate), ("noise_prob_drop",
                                                                     nr.prob_drop)):
                col = np.full(m, np.nan, np.float32)
                col[sel] = values.cpu().numpy()
                out[name] = col
            flags[out["noise_flip_rate"] > config.noise_flip_threshold] |= \
                int(Flag.NOISE_UNSTABLE)
            if sep is not None and latent0 is not None:
                col = np.full(m, np.nan, np.float32)
                col[sel] = nr.latent_shift.cpu().numpy() / sep
                out["latent_shift_noise"] = col
                shift_flag |= col > config.latent_shift_threshold

    if config.onepixel:
        attack = OnePixelAttack.from_preset(config.preset, model, seed=config.seed,
                                            pixels=config.pixels, bounds=config.bounds,
                                            batch_size=config.attack_batch_size)
        r = attack(x, pred, ids=keys_t, return_images=True)
        succ = r.success.cpu().numpy()
        out["onepixel_success"] = succ
        out["onepixel_x"] = r.x.cpu().numpy()
        out["onepixel_y"] = r.y.cpu().numpy()
        out["onepixel_values"] = r.values.cpu().numpy()
        out["onepixel_label"] = r.label.cpu().numpy()
        out["onepixel_prob"] = r.prob.cpu().numpy()
        out["onepixel_queries"] = r.queries.cpu().numpy()
        flags[succ] |= int(Flag.ONEPIXEL_FLIP)
        if sep is not None and latent0 is not None and succ.any():
            s_t = torch.as_tensor(np.flatnonzero(succ), device=device)
            was_training = model.training
            try:
                model.eval()
                with torch.inference_mode():
                    lat_adv, _ = _forward(model, r.images[s_t], config.batch_size)
            finally:
                model.train(was_training)
            col = np.full(m, np.nan, np.float32)
            col[succ] = (latent_shift(latent0[s_t], lat_adv) / sep).cpu().numpy()
            out["latent_shift_onepixel"] = col
            shift_flag |= col > config.latent_shift_threshold
    flags[shift_flag] |= int(Flag.LATENT_SHIFT)
    out["flags"] = flags
    return out


def _table_meta(config, name, sha256, model):
    meta = {
        "galguard_version": __version__,
        "model_name": name,
        "model_sha256": sha256,
        "seed": int(config.seed),
        "preset": config.preset,
        "config": config.to_json(),
        "flag_bits": json.dumps({f.name: int(f.value) for f in Flag if f.value}),
    }
    classes = getattr(model, "classes", None)
    if classes:
        meta["classes"] = ",".join(classes)
    if config.onepixel:
        meta["onepixel_attack"] = json.dumps(PRESETS[config.preset], sort_keys=True)
    return meta


def _iter_chunks(cutouts, config, read_kwargs, model):
    """Yield (offset, Cutouts) chunks in input order."""
    from .io._cutouts import Cutouts
    if isinstance(cutouts, Cutouts):
        for s in range(0, len(cutouts), config.chunk_size):
            yield s, cutouts[s:s + config.chunk_size]
        return
    from . import io as gio
    kwargs = dict(read_kwargs or {})
    size = getattr(model, "input_size", None)
    if size is not None and "size" not in kwargs:
        kwargs["size"] = int(size)
    bands = getattr(model, "bands", None)
    if bands and all(bands) and "bands" not in kwargs:
        kwargs["bands"] = tuple(bands)
    offset = 0
    iter_cutouts = getattr(gio, "iter_cutouts", None)
    if iter_cutouts is not None:
        chunks = iter_cutouts(cutouts, chunk_size=config.chunk_size, **kwargs)
    else:
        chunks = [gio.read_cutouts(cutouts, **kwargs)]
    for chunk in chunks:
        for s in range(0, len(chunk), config.chunk_size):
            part = chunk[s:s + config.chunk_size]
            yield offset, part
            offset += len(part)


def check(cutouts, *, model="default", config=None, device=None, progress=False,
          read_kwargs=None, **options):
    """Check galaxy cutouts: prediction, noise stability, one-pixel attack, latent metrics.

    Parameters
    ----------
    cutouts : path, directory, glob, HDU, HDUList, array or galguard.io.Cutouts
        Anything `galguard.io.read_cutouts` reads. Inputs are never modified.
    model : str, os.PathLike or torch.nn.Module, optional
        Model name or path for `galguard.models.load`, or a loaded model.
    config : CheckConfig, optional
        Base configuration (default ``CheckConfig()``).
    device : str or torch.device, optional
        Where to compute. Default: the model's device (CPU for a named model). Results do not
        depend on it.
    progress : bool, optional
        Show a progress bar (tqdm) over chunks.
    read_kwargs : dict, optional
        Extra keyword arguments for `galguard.io.read_cutouts` (e.g. ``hdu``, ``bands``). By
        default ``size`` is the model's input size.
    **options
        Any `CheckConfig` field, overriding ``config``: ``preset`` ("default", "fast", "paper"),
        ``seed`` (0), ``noise_realisations`` (10), ``depth_fraction`` (0.1), ``noise_mode``
        ("thin"), ``noise`` and ``onepixel`` (True: run that check), ``pixels`` (1), ``bounds``
        ("cutout"), ``low_confidence`` (0.5), ``noise_flip_threshold`` (0.2),
        ``latent_shift_threshold`` (0.8), ``ood_threshold`` (5.0), ``fragile_flags``,
        ``batch_size`` (256), ``attack_batch_size`` (None), ``chunk_size`` (256).

    Returns
    -------
    astropy.table.Table
        One row per input cutout, in input order, with the columns of `COLUMNS`:

        ``id``, ``source``
            From the input metadata.
        ``pred_label``, ``pred_prob``, ``probs``
            Predicted class, its probability and all class probabilities (-1 / NaN for bad
            rows).
        ``noise_flip_rate``, ``noise_prob_drop``
            Fraction of shallower-depth realisations whose class differs, and the mean drop of
            the predicted class probability (NaN when not run or no gain/sky is known).
        ``onepixel_success``, ``onepixel_x``, ``onepixel_y``, ``onepixel_values``,
        ``onepixel_label``, ``onepixel_prob``, ``onepixel_queries``
            Attack on the predicted class: whether a pixel flips it (re-verified), the pixel
            ``image[..., y, x]``, the per-band values written, the class and probability after
            the attack, and the model evaluations spent.
        ``latent_shift_noise``, ``latent_shift_onepixel``
            Mean latent distance to the noisy versions and the distance to the successful
            one-pixel version, divided by the model's mean class-centroid separation (NaN when
            not available).
        ``ood_score``
            ``min_k sqrt(Mahalanobis^2 / D)`` to the training class centroids (about 1 in
            distribution).
        ``flags``
            `galguard.flags.Flag` bitmask: the input flags OR the verdicts ONEPIXEL_FLIP,
            NOISE_UNSTABLE, LATENT_SHIFT, OUT_OF_DISTRIBUTION, LOW_CONFIDENCE.
        ``fragile``
            True when a verdict bit in ``config.fragile_flags`` is set, or the row is bad.
        ``error``
            "" for a good row, else why the cutout could not be checked (BAD_INPUT is set).

        ``meta`` holds ``galguard_version``, ``model_name``, ``model_sha256``, ``seed``,
        ``preset``, ``config`` (JSON of the full `CheckConfig`), ``flag_bits`` and ``classes``.

    Raises
    ------
    GalguardValueError
        For invalid options or model. Bad cutouts never raise: they become rows with an error.

    Notes
    -----
    Same inputs, model and seed give the same table, whatever ``chunk_size``, ``batch_size`` or
    device: every random draw is keyed on (seed, global row position, realisation/generation).
    """
    config = config if config is not None else CheckConfig()
    if not isinstance(config, CheckConfig):
        raise GalguardValueError(f"config must be a CheckConfig, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(CheckConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise GalguardValueError(f"unknown check option(s) {unknown}; known: {sorted(fields)}")
    module, name, sha = resolve_model(model, device=device)
    options = dict(options)
    options["model"] = str(model) if isinstance(model, str) or hasattr(model, "__fspath__") \
        else name
    config = dataclasses.replace(config, **options)
    if device is not None and isinstance(model, torch.nn.Module):
        dev = torch.device(device)
        if _model_device(module).type != dev.type:
            raise GalguardValueError(
                f"device must be where the model is ({_model_device(module)}), got {device!r}; "
                "move the model first")
    n_classes = len(getattr(module, "classes", ())) or None
    tables = []
    chunks = _iter_chunks(cutouts, config, read_kwargs, module)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="galguard check", unit="chunk")
    for offset, chunk in chunks:
        tables.append(check_cutouts(chunk, config, module, offset=offset, device=device,
                                    n_classes=n_classes))
        if n_classes is None and len(tables[-1]) and tables[-1]["probs"].shape[1]:
            n_classes = tables[-1]["probs"].shape[1]
    widths = {t["probs"].shape[1] for t in tables if len(t)}
    if len(widths) > 1:  # chunks of bad rows only, from a model that does not name its classes
        k = max(widths)
        for t in tables:
            if t["probs"].shape[1] != k:
                t.replace_column("probs", np.full((len(t), k), np.nan, np.float32))
    if not tables:
        channels = len(getattr(module, "bands", ())) or 0
        table = _empty_table(0, n_classes or 0, channels, config.pixels)
    elif len(tables) == 1:
        table = tables[0]
    else:
        table = vstack(tables, join_type="exact", metadata_conflicts="silent")
    table = table[list(COLUMNS)]
    table.meta.clear()
    table.meta.update(_table_meta(config, name, sha, module))
    return table


class _CallableModule(types.ModuleType):
    """Lets ``galguard.check(...)`` work even where the attribute is this submodule."""

    def __call__(self, *args, **kwargs):
        return check(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""`check` and `check_cutouts`: run the configured check objects on cutouts and build the table.

For each cutout the model's prediction is checked three ways (`galguard.checks.base.CHECKS`):

* noise stability: K realisations at a shallower depth (`galguard.robustness.noise`);
* a one-pixel attack on the predicted class (`galguard.robustness.OnePixelAttack`);
* latent-space metrics: the shift each perturbation causes and an out-of-distribution score
  (`galguard.robustness.latent`).

The result is an astropy Table with one row per input cutout, in input order.
"""

import dataclasses
import json
import logging

import numpy as np
import torch
from astropy.table import Table, vstack

from .. import __version__
from .._model_io import model_device, validate_device
from .._validate import validate_int
from ..errors import GalguardValueError
from ..flags import Flag, fragile_mask
from ..robustness.onepixel import PRESETS
from .base import CHECKS, Context, threat_models
from .config import OPTIONS, CheckConfig, with_card_thresholds

__all__ = ["check", "check_cutouts", "COLUMNS", "resolve_model", "table_meta", "empty_table"]

log = logging.getLogger(__name__)

#: The columns of the table `check` returns, in order (DESIGN.md's contract).
COLUMNS = ("id", "source", "pred_label", "pred_class", "pred_prob", "probs", "noise_flip_rate",
           "noise_prob_drop", "onepixel_success", "onepixel_x", "onepixel_y", "onepixel_values",
           "onepixel_label", "onepixel_class", "onepixel_prob", "onepixel_queries",
           "onepixel_band", "onepixel_status", "onepixel_certified", "latent_shift_noise",
           "latent_shift_onepixel", "ood_score", "ood_reason", "flags", "fragile", "error")


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
    device = validate_device(device)
    if isinstance(model, torch.nn.Module):
        name = getattr(model, "name", None) or type(model).__name__
        return model, str(name), str(getattr(model, "sha256", None) or "")
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from .. import models
        m = models.load(model, device=device or "cpu")
        return m, str(m.name), str(m.sha256 or "")
    raise GalguardValueError(
        f"model must be a model name, a path or a torch.nn.Module, got {type(model).__name__}")


def _input_hw(model):
    """(H, W) a model takes, from ``input_hw`` or an int ``input_size``; None if unknown."""
    hw = getattr(model, "input_hw", None)
    if hw is not None:
        return tuple(int(v) for v in hw)
    size = getattr(model, "input_size", None)
    return None if size is None else (int(size), int(size))


def _shape_problem(model, shape):
    """A message when cutouts of (C, H, W) `shape` cannot go through `model`, else ""."""
    bands = getattr(model, "bands", None)
    hw = _input_hw(model)
    if bands is None or hw is None:
        return ""
    want = (len(bands), *hw)
    if tuple(shape) != want:
        return (f"cutout shape {tuple(shape)} does not match the model input {want} "
                f"(bands {','.join(bands)})")
    return ""


def class_names(model, n_classes):
    """The model's class names (``"0"``, ``"1"``... for a model that names none)."""
    names = tuple(getattr(model, "classes", ()) or ())
    return names if len(names) == n_classes else tuple(str(k) for k in range(n_classes))


def empty_table(n, n_classes, channels, pixels, names=None):
    """The `check` table of ``n`` rows with nothing computed (bad rows' values)."""
    names = tuple(names) if names else tuple(str(k) for k in range(n_classes))
    width = max([1, *(len(c) for c in names)])
    dims = {"classes": n_classes, "channels": channels, "pixels": pixels, "name_width": width}
    t = Table()
    t["id"] = np.full(n, -1, np.int64)
    t["source"] = np.full(n, "", dtype="U1")
    for cls in CHECKS:
        for name, values in cls().empty(n, dims).items():
            t[name] = values
    t["flags"] = np.zeros(n, np.int64)
    t["fragile"] = np.zeros(n, bool)
    t["error"] = np.full(n, "", dtype="U1")
    return t


def _run_checks(cutouts, idx, keys, config, model, device):
    """The enabled checks on the good rows ``idx``; returns a dict column -> values."""
    x = torch.from_numpy(np.ascontiguousarray(cutouts.data[idx])).to(device)
    ctx = Context(config=config, images=x,
                  keys=torch.as_tensor(keys, dtype=torch.int64, device=device),
                  meta=cutouts.meta[idx], flags=np.zeros(len(idx), np.int64),
                  variance=None if cutouts.variance is None else cutouts.variance[idx],
                  mask=cutouts.mask[idx])
    out = {}
    for cls in CHECKS:
        if cls.enabled(config):
            out.update(cls()(model, ctx))
    out["flags"] = ctx.flags
    return out


def _run_guarded(cutouts, idx, keys_all, config, model, device):
    """`_run_checks` on the rows ``idx``; where the chunk fails, row by row, so that one cutout
    (a pixel value, a header value) can never stop the others. Returns the rows that were
    checked, their results, and {row: message} for the rows that failed."""
    try:
        return idx, _run_checks(cutouts, idx, keys_all[idx], config, model, device), {}
    except GalguardValueError:
        raise  # a bad configuration or model, not a bad cutout
    except Exception as exc:  # noqa: BLE001 - retried row by row below
        log.warning("checks failed on a chunk of %d cutouts (%s: %s); checking them one by one",
                    len(idx), type(exc).__name__, exc)
    done, parts, failed = [], [], {}
    name = getattr(model, "name", None) or type(model).__name__
    for i in idx:
        try:
            parts.append(_run_checks(cutouts, np.array([i]), keys_all[[i]], config, model,
                                     device))
            done.append(i)
        except GalguardValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - this row's error
            failed[int(i)] = (f"the checks failed on this cutout (shape "
                              f"{tuple(cutouts.data.shape[1:])}, model {name}): "
                              f"{type(exc).__name__}: {exc}")
    if not parts:
        return np.zeros(0, np.int64), {}, failed
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.asarray(done, np.int64), res, failed


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
    offset = validate_int("offset", offset, minimum=0)
    device = validate_device(device) if device is not None else model_device(model)
    n = len(cutouts)
    C = cutouts.data.shape[1]
    if n_classes is None:
        n_classes = len(getattr(model, "classes", ())) or None
    meta = cutouts.meta
    in_flags = np.array(meta["flags"], np.int64) if "flags" in meta.colnames else \
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
        idx, res, failed = _run_guarded(cutouts, idx, keys_all, config, model, device)
        for i, msg in failed.items():
            errors[i] = msg
            in_flags[i] |= int(Flag.BAD_INPUT)
        if res:
            n_classes = res["probs"].shape[1]
    if n_classes is None:
        n_classes = 0
    names = class_names(model, n_classes)
    t = empty_table(n, n_classes, C, config.changed_pixels(), names)
    ids = np.asarray(meta["id"], np.int64) if "id" in meta.colnames else keys_all
    t["id"] = np.where(ids >= 0, ids, keys_all)  # unknown ids: the global input position
    if "source" in meta.colnames:
        t["source"] = np.asarray(meta["source"]).astype(str)
    for name, values in res.items():
        values = np.asarray(values)
        if values.dtype.kind == "U" and values.dtype.itemsize > t[name].dtype.itemsize:
            t[name] = t[name].astype(values.dtype)  # room for the longest text
        t[name][idx] = values
    lookup = np.array([""] + list(names))  # label -1 (not computed) -> ""
    for label, col in (("pred_label", "pred_class"), ("onepixel_label", "onepixel_class")):
        t[col] = lookup[np.asarray(t[label]) + 1]
    verdict = np.zeros(n, np.int64)
    if idx.size:
        verdict[idx] = res["flags"]
    t["flags"] = in_flags | verdict
    t["fragile"] = fragile_mask(t["flags"], config.fragile_flags)
    t["error"] = np.asarray(errors, dtype=str) if n else np.zeros(0, "U1")
    return t


def table_meta(config, name, sha256, model):
    """The table meta of a `check` result: version, model and hash, seed, config, flag bits."""
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
        meta["threat_models"] = json.dumps(threat_models(config), sort_keys=True)
    return meta


def _iter_chunks(cutouts, config, read_kwargs, model):
    """Yield (offset, Cutouts) chunks in input order."""
    from ..io import Cutouts
    if isinstance(cutouts, Cutouts):
        for s in range(0, len(cutouts), config.chunk_size):
            yield s, cutouts[s:s + config.chunk_size]
        return
    from .. import io as gio
    kwargs = dict(read_kwargs or {})
    hw = _input_hw(model)
    if hw is not None and "size" not in kwargs:
        kwargs["size"] = hw
    bands = getattr(model, "bands", None)
    if bands and all(bands) and "bands" not in kwargs:
        kwargs["bands"] = tuple(bands)
    if config.mask_bits is not None:
        kwargs.setdefault("mask_bits", config.mask_bits)
    offset = 0
    for chunk in gio.iter_cutouts(cutouts, chunk_size=config.chunk_size, **kwargs):
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
        ``pred_label``, ``pred_class``, ``pred_prob``, ``probs``
            Predicted class, its name, its probability and all class probabilities (-1, "",
            NaN for bad rows).
        ``noise_flip_rate``, ``noise_prob_drop``
            Fraction of shallower-depth realisations whose class differs, and the mean drop of
            the predicted class probability (NaN when not run or no gain/sky is known).
        ``onepixel_success``, ``onepixel_x``, ``onepixel_y``, ``onepixel_values``,
        ``onepixel_label``, ``onepixel_class``, ``onepixel_prob``, ``onepixel_queries``
            Attack on the predicted class: whether a pixel flips it (re-verified), the pixel
            ``image[..., y, x]``, the per-band values written, the class and probability after
            the attack, and the model evaluations spent.
        ``onepixel_band``, ``onepixel_status``, ``onepixel_certified``
            The band changed by a single-band threat (-1: all bands, or not run); the verdict
            "flip" (a change inside the bounds flips the class), "certified" (``certify``
            proved that none does), "unknown" (no flip found, nothing proved: the attack alone,
            or the certificate's budget spent) or "" (not run); and ``status ==
            "certified"``.
        ``latent_shift_noise``, ``latent_shift_onepixel``
            Mean latent distance to the noisy versions and the distance to the successful
            one-pixel version, divided by the model's mean class-centroid separation (NaN when
            not available).
        ``ood_score``, ``ood_reason``
            The out-of-distribution score (`galguard.ood`: with the model's reference, the root
            mean square of the input-statistics (Mahalanobis and kNN) and latent-kNN scores,
            each 1 at the reference's 99th percentile; without one, ``min_k sqrt(Mahalanobis^2
            / D)`` to the class centroids) and, where it passes ``ood_threshold``, why in words.
        ``flags``
            `galguard.flags.Flag` bitmask: the input flags OR the verdicts ONEPIXEL_FLIP,
            NOISE_UNSTABLE, LATENT_SHIFT, OUT_OF_DISTRIBUTION, LOW_CONFIDENCE.
        ``fragile``
            True when a verdict bit in ``config.fragile_flags`` is set, or the row is bad.
        ``error``
            "" for a good row, else why the cutout could not be checked (BAD_INPUT is set).

        ``meta`` holds ``galguard_version``, ``model_name``, ``model_sha256``, ``seed``,
        ``preset``, ``config`` (JSON of the full `CheckConfig`), ``flag_bits``, ``classes``
        and ``domain_shift``: the per-batch test (`galguard.ood.reference.domain_shift`), a
        dict with ``statistic`` (the OUT_OF_DISTRIBUTION fraction), ``p_value``, ``n``,
        ``shifted`` ...

    Raises
    ------
    GalguardValueError
        For invalid options or model. Bad cutouts never raise: they become rows with an error.

    Notes
    -----
    Same inputs, model and seed give the same table, whatever ``chunk_size``, ``batch_size`` or
    device: every random draw is keyed on (seed, global row position, realisation/generation).
    """
    explicit_config = config
    config = config if config is not None else CheckConfig()
    if not isinstance(config, CheckConfig):
        raise GalguardValueError(f"config must be a CheckConfig, got {type(config).__name__}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GalguardValueError(f"unknown check option(s) {unknown}; known: {sorted(OPTIONS)}")
    module, name, sha = resolve_model(model, device=device)
    options = dict(options)
    options["model"] = str(model) if isinstance(model, str) or hasattr(model, "__fspath__") \
        else name
    config = dataclasses.replace(config, **options)
    if explicit_config is None:  # a calibrated model's thresholds, unless given
        config = with_card_thresholds(config, getattr(module, "card", None), given=set(options))
    if device is not None and isinstance(model, torch.nn.Module):
        dev = torch.device(device)
        if model_device(module).type != dev.type:
            raise GalguardValueError(
                f"device must be where the model is ({model_device(module)}), got {device!r}; "
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
        table = empty_table(0, n_classes or 0, channels, config.changed_pixels(),
                            class_names(module, n_classes or 0))
    elif len(tables) == 1:
        table = tables[0]
    else:
        table = vstack(tables, join_type="exact", metadata_conflicts="silent")
    table = table[list(COLUMNS)]
    table.meta.clear()
    table.meta.update(table_meta(config, name, sha, module))
    from ..ood.reference import domain_shift_of

    table.meta["domain_shift"] = domain_shift_of(table["flags"], module,
                                                 config.domain_shift_alpha)
    return table

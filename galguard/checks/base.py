"""Check objects: each computes some columns of the `check` table and sets its verdict flags.

A check is a `Check` subclass with

* ``enabled(config)``: whether the configuration runs it (its columns are always present, NaN
  or the fill value when it does not run);
* ``empty(n, dims)``: its columns for ``n`` rows, filled with "not computed";
* ``run(model, ctx)``: its values for the good rows of one chunk, as a dict of columns, with the
  verdict bits it sets ORed into ``ctx.flags``.

`Check.__call__` runs ``run`` with the model in eval mode under `torch.inference_mode` and
restores the model's mode afterwards. `CHECKS` lists the checks in the order they run (later
checks may read what earlier ones left in the context); adding a check is adding one class
here and its `CheckConfig` fields.
"""

import dataclasses
import logging

import numpy as np
import torch

from .._model_io import evaluating, forward_probs
from ..flags import Flag
from ..robustness.latent import get_latent_stats, latent_shift, ood_score
from ..robustness.noise import effective_gain, noise_stability
from ..robustness._threats import THREATS
from ..robustness.onepixel import OnePixelAttack

__all__ = ["Check", "Context", "Prediction", "OutOfDistribution", "NoiseStability",
           "OnePixelCheck", "LatentMetrics", "CHECKS", "physical_bounds", "threat_models"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
    """What the checks of one chunk share.

    Attributes
    ----------
    config : CheckConfig
    images : torch.Tensor
        (M, C, H, W) good rows on the compute device.
    keys : torch.Tensor
        (M,) int64 global row keys of the random streams.
    meta : astropy.table.Table
        The good rows' metadata (gain, sky, ...).
    variance, mask : numpy.ndarray or None
        The good rows' variance (None: the cutouts carry none) and bad-pixel mask.
    flags : numpy.ndarray
        (M,) int64 verdict bits, ORed into by each check.
    latent, probs, pred : torch.Tensor
        The clean prediction (set by `Prediction`; latent None for a logits-only model).
    extras : dict
        Values one check leaves for a later one (e.g. perturbed latents).
    """

    config: object
    images: torch.Tensor
    keys: torch.Tensor
    meta: object
    flags: np.ndarray
    variance: object = None
    mask: object = None
    latent: object = None
    probs: object = None
    pred: object = None
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def n(self):
        return int(self.images.shape[0])


def _nan(n, *shape):
    return np.full((n, *shape), np.nan, np.float32)


class Check:
    """Base class: a check contributes columns and verdict flags (see the module docstring)."""

    #: Short name, used in logs.
    name = "check"

    @staticmethod
    def enabled(config):
        return True

    def empty(self, n, dims):  # pragma: no cover - every check overrides it
        raise NotImplementedError

    def run(self, model, ctx):  # pragma: no cover - every check overrides it
        raise NotImplementedError

    def __call__(self, model, ctx):
        with evaluating(model):
            return self.run(model, ctx)


class Prediction(Check):
    """The model's class, its probability and all probabilities; LOW_CONFIDENCE."""

    name = "prediction"

    def empty(self, n, dims):
        return {"pred_label": np.full(n, -1, np.int64),
                "pred_class": np.full(n, "", f"U{dims.get('name_width', 1)}"),
                "pred_prob": _nan(n), "probs": _nan(n, dims["classes"])}

    def run(self, model, ctx):
        ctx.latent, ctx.probs = forward_probs(model, ctx.images, ctx.config.batch_size)
        ctx.pred = ctx.probs.argmax(dim=1)
        prob = ctx.probs.gather(1, ctx.pred[:, None])[:, 0].cpu().numpy()
        ctx.flags[prob < ctx.config.low_confidence] |= int(Flag.LOW_CONFIDENCE)
        return {"pred_label": ctx.pred.cpu().numpy(), "pred_prob": prob,
                "probs": ctx.probs.cpu().numpy()}


class NoiseStability(Check):
    """Flip rate and probability drop under shallower-depth realisations; NOISE_UNSTABLE (not
    from a guessed gain: NOISE_MODEL_ESTIMATED instead, unless ``noise_estimated_verdict``).
    With a variance plane the gain is the per-pixel effective gain (f + s) / var."""

    name = "noise"

    @staticmethod
    def enabled(config):
        return config.noise

    def empty(self, n, dims):
        return {"noise_flip_rate": _nan(n), "noise_prob_drop": _nan(n)}

    def run(self, model, ctx):
        cfg, m = ctx.config, ctx.n
        gain = np.asarray(ctx.meta["gain"], np.float64).reshape(m, -1)
        sky = np.asarray(ctx.meta["sky"], np.float64).reshape(m, -1)
        ok = np.all(np.isfinite(gain) & (gain > 0), axis=1) & \
            np.all(np.isfinite(sky) & (sky >= 0), axis=1)
        if not ok.all():
            log.warning("%d cutout(s) have no usable gain or sky level; their noise check is "
                        "skipped (NaN, flag NOISE_SKIPPED)", int((~ok).sum()))
            ctx.flags[~ok] |= int(Flag.NOISE_SKIPPED)
        in_flags = np.asarray(ctx.meta["flags"], np.int64) if "flags" in ctx.meta.colnames \
            else np.zeros(m, np.int64)
        guessed = (in_flags & int(Flag.GAIN_ESTIMATED)) != 0
        ctx.flags[ok & guessed] |= int(Flag.NOISE_MODEL_ESTIMATED)
        sel = np.flatnonzero(ok)
        out = self.empty(m, {})
        if not sel.size:
            return out
        sel_t = torch.as_tensor(sel, device=ctx.images.device)
        g = gain[sel]
        if ctx.variance is not None:
            g = torch.as_tensor(effective_gain(ctx.images[sel_t].cpu().numpy(), ctx.variance[sel],
                                               sky=sky[sel], gain=g, mask=ctx.mask[sel]),
                                device=ctx.images.device)
        clean = (None if ctx.latent is None else ctx.latent[sel_t], ctx.probs[sel_t])
        nr = noise_stability(model, ctx.images[sel_t], gain=g, sky=sky[sel],
                             p=cfg.depth_fraction, realisations=cfg.noise_realisations,
                             mode=cfg.noise_mode, seed=cfg.seed, index=ctx.keys[sel_t],
                             batch_size=cfg.batch_size, clean=clean)
        out["noise_flip_rate"][sel] = nr.flip_rate.cpu().numpy()
        out["noise_prob_drop"][sel] = nr.prob_drop.cpu().numpy()
        unstable = out["noise_flip_rate"] > cfg.noise_flip_threshold
        if not cfg.noise_estimated_verdict:
            unstable &= ~guessed
        ctx.flags[unstable] |= int(Flag.NOISE_UNSTABLE)
        ctx.extras["noise_latent_shift"] = (sel, nr.latent_shift.cpu().numpy())
        return out


class OnePixelCheck(Check):
    """The batched one-pixel attack on the predicted class, under the configured threat model,
    and with ``certify`` the exact verdict where it finds no flip; ONEPIXEL_FLIP."""

    name = "onepixel"

    @staticmethod
    def enabled(config):
        return config.onepixel

    def empty(self, n, dims):
        pshape = (n,) if dims["pixels"] == 1 else (n, dims["pixels"])
        return {"onepixel_success": np.zeros(n, bool),
                "onepixel_x": np.full(pshape, -1, np.int64),
                "onepixel_y": np.full(pshape, -1, np.int64),
                "onepixel_values": np.full(pshape + (dims["channels"],), np.nan, np.float32),
                "onepixel_label": np.full(n, -1, np.int64),
                "onepixel_class": np.full(n, "", f"U{dims.get('name_width', 1)}"),
                "onepixel_prob": _nan(n),
                "onepixel_queries": np.zeros(n, np.int64),
                "onepixel_band": np.full(n, -1, np.int64),
                "onepixel_status": np.full(n, "", "U9"),
                "onepixel_certified": np.zeros(n, bool)}

    def run(self, model, ctx):
        cfg = ctx.config
        lo, hi = physical_bounds(cfg.bounds, model, ctx.images, ctx.meta)
        attack = OnePixelAttack.from_preset(
            cfg.preset, model, seed=cfg.seed, pixels=cfg.pixels, batch_size=cfg.attack_batch_size,
            threat=cfg.threat, length=cfg.artefact_length)
        r = attack(ctx.images, ctx.pred, ids=ctx.keys, return_images=True, bounds=(lo, hi))
        out = {"onepixel_success": r.success.cpu().numpy(), "onepixel_x": r.x.cpu().numpy(),
               "onepixel_y": r.y.cpu().numpy(), "onepixel_values": r.values.cpu().numpy(),
               "onepixel_label": r.label.cpu().numpy(), "onepixel_prob": r.prob.cpu().numpy(),
               "onepixel_queries": r.queries.cpu().numpy(), "onepixel_band": r.band.cpu().numpy()}
        succ = out["onepixel_success"]
        status = np.where(succ, "flip", "unknown").astype("U9")
        adv = r.images
        if cfg.certify and not succ.all():
            adv = self._certify(model, ctx, lo, hi, out, status, adv, attack)
            succ = out["onepixel_success"]
        ctx.flags[succ] |= int(Flag.ONEPIXEL_FLIP)
        ctx.extras["onepixel_images"] = (succ, adv)
        out["onepixel_status"] = status
        out["onepixel_certified"] = status == "certified"
        return out

    @staticmethod
    def _certify(model, ctx, lo, hi, out, status, adv, attack):
        """Exact verdicts for the rows the attack did not flip, the attack run again on the
        sites the certificate's first pass leaves open; a flip found there fills the attack's
        columns (its queries add the boxes bounded and the second attack's evaluations)."""
        from ..robustness.certify import certify_onepixel

        cfg = ctx.config
        rows = np.flatnonzero(~out["onepixel_success"])
        rt = torch.as_tensor(rows, device=ctx.images.device)
        one = cfg.threat in ("pixel", "band_pixel")     # the open-site attack: one pixel only
        res = certify_onepixel(model, ctx.images[rt], ctx.pred[rt], bounds=(lo[rt], hi[rt]),
                               threat=cfg.threat, max_boxes=cfg.certify_boxes,
                               attack=attack if one else None, ids=ctx.keys[rt],
                               length=cfg.artefact_length)
        status[rows] = np.asarray(res.status, dtype="U9")
        for i, why in zip(rows, res.reason):
            if why:
                log.info("row %d: one-pixel verdict unknown: %s", int(ctx.keys[i]), why)
        out["onepixel_queries"][rows] += res.queries
        flip = np.flatnonzero(np.asarray(res.status) == "flip")
        if not flip.size:
            return adv
        adv = adv.clone()
        C = adv.shape[1]
        for j in flip:
            i = rows[j]
            adv[i] = ctx.images[i]
            ys = torch.as_tensor(np.atleast_1d(res.y[j]), device=adv.device)
            xs = torch.as_tensor(np.atleast_1d(res.x[j]), device=adv.device)
            vals = torch.as_tensor(res.values[j], device=adv.device).reshape(-1, C)
            adv[i][:, ys, xs] = vals.T
        idx = torch.as_tensor(rows[flip], device=adv.device)
        _, probs = forward_probs(model, adv[idx], cfg.batch_size)
        label = probs.argmax(dim=1)
        out["onepixel_success"] = out["onepixel_success"].copy()
        out["onepixel_success"][rows[flip]] = True
        out["onepixel_x"][rows[flip]] = res.x[flip]
        out["onepixel_y"][rows[flip]] = res.y[flip]
        out["onepixel_values"][rows[flip]] = res.values[flip]
        out["onepixel_label"][rows[flip]] = label.cpu().numpy()
        out["onepixel_prob"][rows[flip]] = probs.gather(1, label[:, None])[:, 0].cpu().numpy()
        out["onepixel_queries"][rows[flip]] += res.boxes[flip]
        if cfg.threat != "pixel":           # the band whose values differ from the image's
            diff = (adv[idx] - ctx.images[idx]).abs().sum(dim=(2, 3))
            out["onepixel_band"][rows[flip]] = diff.argmax(dim=1).cpu().numpy()
        return adv


def physical_bounds(spec, model, images, meta=None):
    """(M, C) value bounds of the attacked pixel per cutout, as `OnePixelAttack` takes them.

    ``spec`` is a `CheckConfig` ``bounds``: "cutout" (each band's own [min, max] in the
    cutout), "saturation" (from the cutout's minimum up to its saturation level where the
    header gives one, ``saturation - sky`` in the data's units, since the data are sky
    subtracted; not below the cutout's own maximum; "cutout" where unknown), "paper" or a
    (lo, hi) pair."""
    from ..robustness.onepixel import _resolve_bounds

    lo, hi = _resolve_bounds("cutout" if spec == "saturation" else spec, model, images)
    if spec == "saturation" and meta is not None and "saturation" in meta.colnames:
        m = images.shape[0]
        sat = np.asarray(meta["saturation"], np.float64).reshape(m, -1)
        sky = np.asarray(meta["sky"], np.float64).reshape(m, -1) if "sky" in meta.colnames \
            else np.zeros_like(sat)
        level = sat - np.where(np.isfinite(sky), sky, 0.0)
        level = torch.as_tensor(level, dtype=hi.dtype, device=hi.device)
        known = torch.isfinite(level)
        hi = torch.where(known, torch.maximum(hi, torch.nan_to_num(level)), hi)
    return lo, hi


def threat_models(config):
    """What the one-pixel check ran, for the table meta ``threat_models``: a list of dicts."""
    return [{"threat": config.threat, "changes": THREATS[config.threat],
             "pixels": config.changed_pixels(), "bounds": config.to_dict()["bounds"],
             "certified": bool(config.certify),
             "certify_boxes": int(config.certify_boxes) if config.certify else None}]


class OutOfDistribution(Check):
    """The out-of-distribution score and, for flagged rows, why in words; OUT_OF_DISTRIBUTION.

    With the model's OOD reference (`galguard.ood`; the shipped models carry one): the input
    statistics' Mahalanobis and nearest-neighbour distances, the deep-kNN latent distance and
    the resolution check (``psf``), each scaled by its reference percentile, combined by their
    weighted mean (`galguard.ood.scorers.combine`, with the power the reference was fitted
    with; the image parts alone for a model without a latent). Without
    one: the latent Mahalanobis score of ``latent_stats``."""

    name = "ood"

    def empty(self, n, dims):
        return {"ood_score": _nan(n), "ood_reason": np.full(n, "", "U1")}

    def run(self, model, ctx):
        from ..ood.reference import explain, score_cutouts

        cfg, m = ctx.config, ctx.n
        out = self.empty(m, {})
        ref = getattr(model, "ood_reference", None)
        if ref is not None:
            scorer, state = ref
            latent = None if ctx.latent is None else ctx.latent.double().cpu().numpy()
            # the parts that need no latent (a model with logits only: these alone)
            pixel = [p for p in scorer.split("+") if p in ("input", "inputknn", "psf")]
            if latent is None and len(pixel) < len(scorer.split("+")):
                scorer, state = ("+".join(pixel), {p: state[p] for p in pixel}) if pixel \
                    else (None, None)
            if scorer is not None:
                total, parts, feats = score_cutouts(scorer, state, ctx.images.cpu().numpy(),
                                                    latent=latent)
                out["ood_score"] = total.astype(np.float32)
                bad = out["ood_score"] > cfg.ood_threshold
                names = list((model.card.get("ood") or {}).get("features") or [])
                if bad.any() and names:
                    words = explain({k: v[bad] for k, v in parts.items()}, feats[bad], state,
                                    names, cfg.ood_threshold)
                    out["ood_reason"] = out["ood_reason"].astype(object)
                    out["ood_reason"][bad] = words
                    out["ood_reason"] = out["ood_reason"].astype(str)
                ctx.flags[bad] |= int(Flag.OUT_OF_DISTRIBUTION)
                return out
        stats = get_latent_stats(model)
        if stats is None or ctx.latent is None:
            return out
        out["ood_score"] = ood_score(ctx.latent, stats).cpu().numpy()
        bad = out["ood_score"] > cfg.ood_threshold
        out["ood_reason"] = np.where(bad, "the latent vector is far from every class centroid",
                                     "")
        ctx.flags[bad] |= int(Flag.OUT_OF_DISTRIBUTION)
        return out


class LatentMetrics(Check):
    """Normalised latent shifts of the perturbed versions; LATENT_SHIFT. Needs a model with
    ``latent_stats`` and a latent output."""

    name = "latent"

    def empty(self, n, dims):
        return {"latent_shift_noise": _nan(n), "latent_shift_onepixel": _nan(n)}

    def run(self, model, ctx):
        cfg, m = ctx.config, ctx.n
        out = self.empty(m, {})
        stats = get_latent_stats(model)
        if stats is None or ctx.latent is None:
            return out
        sep = float(stats["centroid_separation"])
        if not sep > 0:
            return out
        shifted = np.zeros(m, bool)
        if "noise_latent_shift" in ctx.extras:
            sel, raw = ctx.extras["noise_latent_shift"]
            out["latent_shift_noise"][sel] = raw / sep
            shifted |= out["latent_shift_noise"] > cfg.latent_shift_threshold
        succ, images = ctx.extras.get("onepixel_images", (np.zeros(m, bool), None))
        if succ.any():
            s_t = torch.as_tensor(np.flatnonzero(succ), device=ctx.images.device)
            lat_adv, _ = forward_probs(model, images[s_t], cfg.batch_size)
            out["latent_shift_onepixel"][succ] = \
                (latent_shift(ctx.latent[s_t], lat_adv) / sep).cpu().numpy()
            shifted |= out["latent_shift_onepixel"] > cfg.latent_shift_threshold
        ctx.flags[shifted] |= int(Flag.LATENT_SHIFT)
        return out


#: The checks `check` runs, in order.
CHECKS = (Prediction, OutOfDistribution, NoiseStability, OnePixelCheck, LatentMetrics)

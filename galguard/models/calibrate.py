"""Calibrating a model on your own reference galaxies: latent statistics and verdict thresholds.
"""

import copy
import hashlib
import logging

import numpy as np

from .._validate import validate_real
from ..errors import GalguardValueError
from .classifier import GalaxyClassifier, fit_latent_stats

__all__ = ["calibrate"]

log = logging.getLogger(__name__)


def calibrate(model, reference, *, labels=None, percentile=99.0, seed=0, progress=False):
    """A copy of ``model`` calibrated on reference cutouts you trust.

    Fits the latent statistics (class means from ``labels`` or, without them, the model's own
    predictions; tied covariance) and the out-of-distribution reference (`galguard.ood`: input
    statistics and a bank of latents for kNN, input statistics alone for a model without a
    latent; a fifth of the reference, from 100 cutouts up, held out to measure the in-domain
    OOD rate the per-batch domain-shift test expects) on the reference galaxies, then sets the
    OUT_OF_DISTRIBUTION and LATENT_SHIFT thresholds to the ``percentile`` of the reference set's
    OOD scores and of the latent shifts one shallower-depth noise realisation causes. The card records how
    (percentile, number of galaxies used and skipped, labels given or predicted, a hash of the
    inputs' names); `galguard.check` uses these thresholds unless they are set explicitly.

    Parameters
    ----------
    model : GalaxyClassifier
    reference : anything `galguard.io.read_cutouts` reads
        Bad cutouts are skipped and counted, never fatal.
    labels : array-like of int, optional
        One class index per reference cutout (in input order, bad ones included).
    percentile : float, optional
        In (50, 100]; default 99 (about 1 percent of galaxies like the reference set flagged).
    seed : int, optional
        Seed of the noise realisation.
    progress : bool, optional

    Returns
    -------
    GalaxyClassifier
    """
    from ..checks import check
    from ..io import read_cutouts

    if not isinstance(model, GalaxyClassifier):
        raise GalguardValueError(f"model must be a GalaxyClassifier, got {type(model).__name__}")
    percentile = validate_real("percentile", percentile, lo=50.0, hi=100.0, lo_open=True)
    cut = read_cutouts(reference, size=model.input_hw, bands=model.bands)
    good = (np.asarray(cut.meta["flags"]) & 1) == 0
    n_bad = int((~good).sum())
    if good.sum() < 2 * model.n_classes:
        raise GalguardValueError(f"reference holds {int(good.sum())} usable cutouts; "
                                 f"calibration needs at least {2 * model.n_classes}")
    ref = cut[np.flatnonzero(good)]
    out = copy.deepcopy(model)
    try:
        latent = out.embed(ref)
    except GalguardValueError:  # a logits-only model: input statistics only
        latent = None
    if labels is None:
        y = out.predict(ref).argmax(1)
        source = "predicted"
    else:
        y_all = np.asarray(labels)
        if y_all.shape != (len(cut),):
            raise GalguardValueError(f"labels must have one value per reference cutout "
                                     f"({len(cut)}), got shape {y_all.shape}")
        if y_all.dtype.kind not in "iu":
            raise GalguardValueError(f"labels must be class indices, got dtype {y_all.dtype}")
        y = y_all[good].astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= out.n_classes):
            raise GalguardValueError(f"labels of the usable reference cutouts must be in "
                                     f"0..{out.n_classes - 1}, got values in {y.min()}.."
                                     f"{y.max()}")
        source = "given"
    missing = sorted(set(range(out.n_classes)) - set(int(v) for v in y))
    if missing:
        names = [out.classes[k] for k in missing]
        raise GalguardValueError(f"the reference set has no galaxy of class(es) {names} "
                                 f"({source} labels); give labels or more galaxies")
    if latent is not None:
        stats = fit_latent_stats(latent, y, out.n_classes)
        stats.pop("shrinkage", None)
        out.set_latent_stats(stats)
    # the out-of-distribution reference (input statistics + latent kNN; input only for a model
    # without a latent), its threshold at the same percentile; a seeded fifth of the reference
    # is held out to measure the in-domain rate the per-batch test expects
    from ..ood.reference import DEFAULT_SCORER, MIN_REFERENCE, fit_reference

    if len(ref) >= MIN_REFERENCE:
        order = np.random.default_rng([seed, 3]).permutation(len(ref))
        n_hold = len(ref) // 5 if len(ref) >= 100 else 0
        fit_idx, hold_idx = np.sort(order[n_hold:]), np.sort(order[:n_hold])
        scorer = DEFAULT_SCORER if latent is not None else "input+inputknn+psf"
        fit_reference(out, ref.data[fit_idx], labels=y[fit_idx], scorer=scorer,
                      held_out=ref.data[hold_idx] if n_hold else None, percentile=percentile,
                      seed=seed, note=f"galguard calibrate: {len(fit_idx)} reference cutouts"
                      + (f", {n_hold} held out for the expected rate" if n_hold else ""))
    else:
        log.warning("%d reference cutouts: too few for an out-of-distribution reference (at "
                    "least %d); the latent Mahalanobis score is used", len(ref), MIN_REFERENCE)
        if "ood" in out.card:  # the old reference belongs to other data
            out.set_ood_reference("", {}, None)
            out.card = {k: v for k, v in out.card.items() if k != "ood"}
    t = check(ref, model=out, onepixel=False, noise_realisations=1, seed=seed,
              progress=progress)
    thresholds = {}
    if "ood" in out.card:
        thresholds["ood_threshold"] = float(out.card["ood"]["threshold"])
    for name, col in (("ood_threshold", "ood_score"),
                      ("latent_shift_threshold", "latent_shift_noise")):
        if name in thresholds:
            continue
        v = np.asarray(t[col], np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            thresholds[name] = float(np.percentile(v, percentile))
    sources = sorted(set(str(s) for s in cut.meta["source"]))
    card = dict(out.card)
    card["thresholds"] = thresholds
    card["calibration"] = {
        "percentile": percentile, "n_reference": int(good.sum()), "n_skipped": n_bad,
        "labels": source, "noise": "one realisation at the default depth fraction, seed "
        f"{seed}", "inputs_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        "n_inputs": len(sources)}
    out.card = card
    log.info("calibrated %s on %d reference galaxies (%d skipped): %s", out.name,
             int(good.sum()), n_bad, thresholds)
    return out

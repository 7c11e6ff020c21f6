"""A model's out-of-distribution reference: fitting it, scoring cutouts with it, and the per-batch
domain-shift test.

The default scorer, chosen by measurement (``docs/experiments.md``, "Out-of-distribution
scores"), is ``"input+inputknn+knn+psf"``: the input statistics (`galguard.ood.features`) by
their Mahalanobis distance (Ledoit-Wolf) and by their k-nearest-neighbour distance to the
reference's, the deep k-nearest-neighbour distance of the normalised latent, and the light
profile's steepness at the peak against reference galaxies of the same size and brightness
(``psf``, a resolution check), each divided by its reference 99th percentile, combined by their
weighted mean (`galguard.ood.scorers.WEIGHTS`, `POWER`). The reference (feature mean, scale
and precision; banks of at most 2000 reference feature vectors, normalised latents and profile
slopes) is stored with the model's weights, and the threshold (the reference's 99th percentile
of the combined score) in its card. References fitted before ``psf`` existed keep their scorer.
"""

import math

import numpy as np

from ..errors import GalguardValueError
from .features import describe_feature, feature_names, input_features, profile_features
from .scorers import _K, BANKS, SCORERS, combine, combined_names, fit_scorer, power_of, score

__all__ = ["DEFAULT_SCORER", "CHECK_SCORERS", "fit_reference", "score_cutouts", "domain_shift",
           "domain_shift_of", "explain"]

DEFAULT_SCORER = "input+inputknn+knn+psf"
#: the parts a check can compute from the images and the latent alone
CHECK_SCORERS = ("input", "inputknn", "knn", "mahalanobis", "psf")
#: the reference percentile of the combined score taken as the OUT_OF_DISTRIBUTION threshold
THRESHOLD_PERCENTILE = 99.0
BANK_SIZE = 2000
#: the fewest reference cutouts a reference is fitted on (kNN leaves each one out of its own k)
MIN_REFERENCE = _K + 2


def _latents(model, images, batch_size=256):
    import torch

    from .._model_io import evaluating, forward_probs

    x = torch.as_tensor(np.ascontiguousarray(images, np.float32))
    with evaluating(model), torch.inference_mode():
        latent, probs = forward_probs(model, x, batch_size)
    return (None if latent is None else latent.double().cpu().numpy()), probs.double().numpy()


def fit_reference(model, images, *, labels=None, scorer=DEFAULT_SCORER, held_out=None,
                  percentile=THRESHOLD_PERCENTILE, bank_size=BANK_SIZE, seed=0, note=""):
    """Fit and attach ``model``'s out-of-distribution reference on in-domain cutouts.

    Parameters
    ----------
    model : GalaxyClassifier
        Modified in place: `GalaxyClassifier.set_ood_reference` and the card's
        ``thresholds["ood_threshold"]``.
    images : array-like, (N, C, H, W)
        In-domain reference cutouts (held out from training: the kNN distances of training
        galaxies are smaller than those of new ones).
    labels : array-like of int, optional
        For the Mahalanobis part (default: the model's predictions).
    scorer : str
        A combination of `CHECK_SCORERS` joined by ``+``.
    held_out : array-like, optional
        More in-domain cutouts, not used for fitting: the fraction of them above the threshold
        is recorded as the expected in-domain rate (the per-batch test's null hypothesis).
    percentile : float
        The reference percentile taken as the threshold (default 99).
    bank_size : int
        At most this many reference latents are kept for kNN (a seeded subset).
    note : str
        What the reference is (recorded in the card).

    Returns
    -------
    dict
        The card's ``ood`` entry.
    """
    parts = combined_names(scorer)
    bad = [p for p in parts if p not in CHECK_SCORERS]
    if bad:
        raise GalguardValueError(f"scorer must combine {CHECK_SCORERS}, got {scorer!r}")
    x = np.asarray(images, np.float32)
    if len(x) < MIN_REFERENCE:
        raise GalguardValueError(f"images must hold at least {MIN_REFERENCE} reference cutouts, "
                                 f"got {len(x)}")
    latent, probs = _latents(model, x)
    if latent is None and any(p in ("knn", "mahalanobis") for p in parts):
        raise GalguardValueError(f"scorer {scorer!r} needs a latent, and the model returns none; "
                                 f"use scorer='input'")
    ref = {"features": input_features(x), "latent": latent,
           "labels": probs.argmax(1) if labels is None else np.asarray(labels, np.int64)}
    if "psf" in parts:
        ref["profile"] = profile_features(x)
    state = fit_scorer(scorer, ref)
    for part in BANKS:  # (fit_scorer scaled them leaving each point out of its own k)
        if part not in state:
            continue
        n_bank = len(state[part]["bank"])
        if n_bank > bank_size:
            keep = np.sort(np.random.default_rng([seed, 5]).choice(n_bank, bank_size,
                                                                   replace=False))
            for key in ("bank", "slopes"):     # the bank and what goes with its rows
                if key in state[part]:
                    state[part][key] = state[part][key][keep]
    ref_scores = _reference_scores(scorer, state, ref)
    threshold = float(np.percentile(ref_scores, percentile))
    expected, expected_from = 1.0 - percentile / 100.0, "the threshold percentile"
    if held_out is not None:
        h = score_cutouts(scorer, state, np.asarray(held_out, np.float32), model)[0]
        expected = float(np.mean(h > threshold))
        expected_from = f"{len(h)} held-out in-domain cutouts"
    info = {"threshold": threshold, "threshold_percentile": percentile,
            "expected_rate": expected, "expected_rate_from": expected_from,
            "n_reference": int(len(x)), "features": list(feature_names(model.bands)),
            "k": _K, "note": note}
    model.set_ood_reference(scorer, state, info)
    card = dict(model.card)
    card["thresholds"] = {**(card.get("thresholds") or {}), "ood_threshold": threshold}
    model.card = card
    return card["ood"]


def _reference_scores(scorer, state, ref):
    """The combined score of the reference itself, kNN left-self-out."""
    each = {}
    for part in combined_names(scorer):
        if part in BANKS:
            each[part] = SCORERS[part][1](state[part], ref, self_out=True) / \
                float(state[part]["scale"])
        else:
            each[part] = score(part, {part: state[part]}, ref)
    return combine(each, power=power_of(state))


def score_cutouts(scorer, state, images, model=None, *, latent=None):
    """Combined score, scaled part scores and input features of cutouts."""
    batch = {"features": input_features(images)}
    if "psf" in combined_names(scorer):
        batch["profile"] = profile_features(images)
    if any(p in ("knn", "mahalanobis") for p in combined_names(scorer)):
        if latent is None:
            latent, _ = _latents(model, images)
        batch["latent"] = np.asarray(latent, np.float64)
    total, parts = score(scorer, state, batch, parts=True)
    return total, parts, batch["features"]


def explain(parts, features, state, names, threshold):
    """Words for each row: which part of the score is past the threshold and, for the input
    statistics, the feature furthest from the reference."""
    n = len(features)
    out = [""] * n
    inp = state.get("input") or state.get("inputknn")
    for i in range(n):
        words = []
        pixel = max(parts.get("input", np.zeros(n))[i], parts.get("inputknn", np.zeros(n))[i])
        if pixel > threshold and inp is not None:
            z = (features[i] - inp["mean"]) / inp["std"]
            k = int(np.argmax(np.abs(z)))
            one = describe_feature(names[k], float(z[k]))
            words.append(one if abs(z[k]) >= 3 else
                         f"its pixel statistics together are unlike the training data (the "
                         f"largest deviation: {one})")
        for part, what in (("psf", "its light profile is flatter (or steeper) at the peak than "
                                   "in training galaxies of the same size and brightness: "
                                   "another PSF or resolution"),
                           ("knn", "the model's latent representation is far from every "
                                   "reference galaxy"),
                           ("mahalanobis", "the latent vector is far from every class centroid")):
            if part in parts and parts[part][i] > threshold:
                words.append(what)
        out[i] = "; ".join(words)
    return out


def domain_shift(n_flagged, n, expected_rate, *, alpha=0.01, margin=2.0):
    """The per-batch test: are there more OUT_OF_DISTRIBUTION galaxies than in-domain data give?

    One-sided exact binomial test of ``n_flagged`` of ``n`` against the null rate
    ``p0 = max(margin * expected_rate, 0.02)`` (twice the in-domain rate measured on held-out
    galaxies, at least 2 %: a batch of in-domain galaxies of another mixture, e.g. all at one
    depth, must not raise the alarm). Deterministic; exact for any batch size.

    Returns
    -------
    dict
        ``statistic`` (the flagged fraction), ``p_value``, ``n``, ``n_flagged``, ``null_rate``,
        ``alpha``, ``shifted`` (p < alpha), ``test``.
    """
    from scipy.stats import binomtest

    n, k = int(n), int(n_flagged)
    p0 = min(max(margin * float(expected_rate), 0.02), 0.5)
    p = float(binomtest(k, n, p0, alternative="greater").pvalue) if n else math.nan
    return {"test": "one-sided binomial test of the OUT_OF_DISTRIBUTION fraction",
            "statistic": (k / n) if n else math.nan, "p_value": p, "n": n, "n_flagged": k,
            "null_rate": p0, "alpha": float(alpha), "shifted": bool(n and p < alpha)}


def domain_shift_of(flags, model, alpha):
    """`domain_shift` of a batch from its rows' flags (BAD_INPUT rows left out) and the model's
    expected in-domain OUT_OF_DISTRIBUTION rate (its card's ``ood.expected_rate``; for a model
    without an OOD reference, 1 %: the rate a threshold at the reference's 99th percentile
    gives)."""
    from ..flags import Flag

    f = np.asarray(flags, np.int64)
    good = (f & int(Flag.BAD_INPUT)) == 0
    k = int(np.count_nonzero(good & ((f & int(Flag.OUT_OF_DISTRIBUTION)) != 0)))
    info = (getattr(model, "card", None) or {}).get("ood") or {}
    expected = info.get("expected_rate")
    out = domain_shift(k, int(good.sum()), 0.01 if expected is None else float(expected),
                       alpha=alpha)
    out["expected_rate"] = 0.01 if expected is None else float(expected)
    out["expected_rate_from"] = info.get("expected_rate_from", "assumed (no OOD reference)")
    return out


def describe_shift(ds):
    """One line about a `domain_shift` dict, for summaries and reports."""
    if not ds or not ds.get("n"):
        return "domain shift: no usable cutout"
    verdict = "SHIFTED: this batch looks unlike the model's training data" if ds["shifted"] \
        else "no domain shift detected"
    return (f"{verdict} ({ds['n_flagged']} of {ds['n']} cutouts out of distribution, "
            f"{100 * ds['statistic']:.1f} % against {100 * ds['null_rate']:.1f} % allowed; "
            f"p = {ds['p_value']:.2g})")

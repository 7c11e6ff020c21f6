"""Post-hoc out-of-distribution scorers, each fitted on a reference set of in-domain galaxies.

Every scorer has ``fit(ref)`` (a dict of reference arrays: ``features`` input statistics,
``latent``, ``logits``, ``labels``) returning its state (a dict of arrays), and
``score(state, batch)`` returning one float per cutout, larger = less like the reference:

==============  ==============================================================================
name            score
==============  ==============================================================================
mahalanobis     min over classes of the latent Mahalanobis distance (tied covariance), per
                dimension (galguard's first score; Lee et al. 2018)
knn             distance of the L2-normalised latent to its k-th nearest reference latent
                (deep k-nearest neighbours, Sun et al. 2022; k = 10)
energy          -logsumexp of the logits (Liu et al. 2020)
vim             the virtual logit of ViM (Wang et al. 2022): the latent's residual off the
                reference's principal subspace, scaled to the logits, as a class probability
                (needs a linear last layer)
input           Mahalanobis distance of the input statistics (`galguard.ood.features`) with
                Ledoit-Wolf shrinkage, per feature
inputknn        distance of the standardised input statistics to their k-th nearest reference
                (k = 10): unlike the Gaussian distance it sees gaps in a multimodal reference
                (a noise level between Y10's and Y1's)
psf             how much flatter the light profile is at its peak (`profile_features`) than
                in the 50 reference galaxies nearest in size and brightness (input statistics
                ``size`` and the mean ``peak``): z, the sum of the robust z-scores of the two
                slopes and the adaptive-moment sharpness (where measured) below their
                neighbours' medians, as ``max(z, 0) + 0.5 max(-z, 0)`` (flatter counts
                fully: a wider PSF; steeper half: coarser pixels); NaN without a measured
                sharpness (no source). A resolution check
==============  ==============================================================================

Combinations (``"input+inputknn+knn+psf"`` ...) take the weighted mean (`POWER` 1; the root
mean square for references fitted before 2026-12-07) of the scores, each clipped at 0 and
divided by its value at the reference's 99th percentile, so that each contributes on the same
scale; ``psf`` weighs 2 (`WEIGHTS`), the others 1: it alone sees a wider PSF, and
with weight 1 the three other parts dilute it (AUROC 0.870 against 0.906 on the default model;
the weight and the 0.5 for steeper profiles were chosen on validation galaxies,
``docs/experiments.md``).
"""

import numpy as np

__all__ = ["SCORERS", "BANKS", "WEIGHTS", "POWER", "fit_scorer", "score", "combine", "auroc",
           "combined_names"]

_K = 10
#: the reference galaxies of the same size and brightness the ``psf`` scorer compares with
_K_PSF = 50
#: steeper-than-neighbours profiles count this much of a flatter one in the ``psf`` score
_PSF_STEEP = 0.5
#: weights of the parts in a combination (1 when not listed)
WEIGHTS = {"psf": 2.0}
#: the power of the weighted mean that combines the parts: 1, the weighted mean (chosen on
#: validation galaxies over 1.5, 2, 3, 4, 6 and the maximum: the parts that do not see a shift
#: dilute the one that does least; ``docs/experiments.md``). Stored with each fitted reference
#: (``"power"`` in every part's state); a reference without it was fitted with the root mean
#: square (`LEGACY_POWER`) and scores as before.
POWER = 1.0
LEGACY_POWER = 2.0


def _ledoit_wolf_precision(x):
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(x)
    return lw.precision_


def _standardise(ref):
    """Mean, std (floored at 0.02: a feature constant in the reference) and the standardised
    reference features."""
    f = np.asarray(ref["features"], np.float64)
    mean = f.mean(axis=0)
    std = np.maximum(f.std(axis=0), 0.02)
    return mean, std, (f - mean) / std


def _fit_input(ref):
    mean, std, z = _standardise(ref)
    return {"mean": mean, "std": std, "precision": _ledoit_wolf_precision(z)}


def _score_input(state, batch):
    z = (np.asarray(batch["features"], np.float64) - state["mean"]) / state["std"]
    m2 = np.einsum("nd,de,ne->n", z, state["precision"], z)
    return np.sqrt(np.maximum(m2, 0.0) / z.shape[1])


def _fit_inputknn(ref):
    mean, std, z = _standardise(ref)
    return {"mean": mean, "std": std, "bank": z.astype(np.float32)}


def _score_inputknn(state, batch, self_out=False):
    z = (np.asarray(batch["features"], np.float64) - state["mean"]) / state["std"]
    return _kth_distance(z, state["bank"], _K + self_out)


def _psf_given(features):
    """The ``psf`` scorer's neighbourhood variables: the input statistics ``size`` and the
    mean ``peak`` over the bands (`feature_names`: C noise, C peak, C - 1 colour, then size,
    core, distinct, integer)."""
    f = np.asarray(features, np.float64)
    c = (f.shape[1] - 3) // 3
    return np.stack([f[:, -4], f[:, c:2 * c].mean(axis=1)], axis=1)


def _fit_psf(ref):
    g = _psf_given(ref["features"])
    mean, std = g.mean(axis=0), np.maximum(g.std(axis=0), 0.02)
    return {"mean": mean, "std": std, "bank": ((g - mean) / std).astype(np.float32),
            "slopes": np.asarray(ref["profile"], np.float32)}


def _score_psf(state, batch, self_out=False):
    import torch

    q = torch.as_tensor((_psf_given(batch["features"]) - state["mean"]) / state["std"],
                        dtype=torch.float32)
    bank = torch.as_tensor(state["bank"], dtype=torch.float32)
    slopes = torch.as_tensor(state["slopes"], dtype=torch.float32)
    mine = torch.as_tensor(np.asarray(batch["profile"], np.float64), dtype=torch.float32)
    mine = mine[:, :slopes.shape[1]]     # a reference fitted before ``sharpness``: its columns
    k = min(_K_PSF + self_out, bank.shape[0])
    out = []
    for i in range(0, len(q), 2048):
        idx = torch.cdist(q[i:i + 2048], bank).topk(k, dim=1, largest=False).indices
        v = slopes[idx[:, int(self_out):]]                                   # (n, k, 3)
        med = v.nanmedian(dim=1).values            # reference sharpness not measured: left out
        mad = (v - med[:, None]).abs().nanmedian(dim=1).values
        # NaN where the cutout's sharpness was not measured (no source): left out of a
        # combination
        z = ((med - mine[i:i + 2048]) / (1.4826 * mad + 1e-3)).sum(dim=1)
        out.append(z.clamp(min=0.0) + _PSF_STEEP * (-z).clamp(min=0.0))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _kth_distance(q, bank, k):
    import torch

    q = torch.as_tensor(q, dtype=torch.float32)
    bank = torch.as_tensor(bank, dtype=torch.float32)
    out = []
    for i in range(0, len(q), 2048):
        d = torch.cdist(q[i:i + 2048], bank)
        out.append(d.topk(min(k, bank.shape[0]), dim=1, largest=False).values[:, -1])
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _fit_maha(ref):
    z = np.asarray(ref["latent"], np.float64)
    y = np.asarray(ref["labels"], np.int64)
    k = int(y.max()) + 1
    means = np.stack([z[y == c].mean(axis=0) if np.any(y == c) else z.mean(axis=0)
                      for c in range(k)])
    return {"means": means, "precision": _ledoit_wolf_precision(z - means[y])}


def _score_maha(state, batch):
    z = np.asarray(batch["latent"], np.float64)
    d = z[:, None, :] - state["means"][None]
    m2 = np.einsum("nkd,de,nke->nk", d, state["precision"], d)
    return np.sqrt(np.maximum(m2.min(axis=1), 0.0) / z.shape[1])


def _normalise(z):
    z = np.asarray(z, np.float64)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _fit_knn(ref):
    return {"bank": _normalise(ref["latent"]).astype(np.float32)}


def _score_knn(state, batch, self_out=False):
    return _kth_distance(_normalise(batch["latent"]), state["bank"], _K + self_out)


def _fit_energy(ref):
    return {}


def _score_energy(state, batch):
    from scipy.special import logsumexp

    return -logsumexp(np.asarray(batch["logits"], np.float64), axis=1)


def _fit_vim(ref):
    w, b = ref.get("weight"), ref.get("bias")
    if w is None:
        raise ValueError("ViM needs the last linear layer (weight, bias) on the latent")
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    u = -np.linalg.pinv(w) @ b
    x = np.asarray(ref["latent"], np.float64) - u
    _, vecs = np.linalg.eigh(x.T @ x / len(x))
    dim = x.shape[1]
    keep = max(1, dim // 2) if dim > 16 else max(1, dim - 2)
    ns = vecs[:, : dim - keep]                                        # the residual space
    resid = np.linalg.norm(x @ ns, axis=1)
    logits = np.asarray(ref["logits"], np.float64)
    alpha = logits.max(axis=1).mean() / max(resid.mean(), 1e-12)
    return {"u": u, "ns": ns, "alpha": np.array(alpha)}


def _score_vim(state, batch):
    from scipy.special import logsumexp

    x = np.asarray(batch["latent"], np.float64) - state["u"]
    v = float(state["alpha"]) * np.linalg.norm(x @ state["ns"], axis=1)
    logits = np.asarray(batch["logits"], np.float64)
    return v - logsumexp(np.concatenate([logits, v[:, None]], axis=1), axis=1)


SCORERS = {"mahalanobis": (_fit_maha, _score_maha), "knn": (_fit_knn, _score_knn),
           "energy": (_fit_energy, _score_energy), "vim": (_fit_vim, _score_vim),
           "input": (_fit_input, _score_input), "inputknn": (_fit_inputknn, _score_inputknn),
           "psf": (_fit_psf, _score_psf)}
#: the parts that compare with a bank of reference points (each left out of its own neighbours
#: when the reference itself is scored: ``self_out=True``)
BANKS = ("knn", "inputknn", "psf")


def combined_names(name):
    """The scorers of a name (``"input+knn"`` -> ``("input", "knn")``)."""
    parts = tuple(p.strip() for p in str(name).split("+"))
    for p in parts:
        if p not in SCORERS:
            raise ValueError(f"unknown OOD scorer {p!r}; known: {sorted(SCORERS)}")
    return parts


def fit_scorer(name, ref, *, percentile=99.0):
    """The state of scorer ``name`` (or a ``+`` combination) fitted on ``ref``, with each
    part's reference ``percentile`` as its scale (``"scale:<part>"`` keys)."""
    state = {}
    for part in combined_names(name):
        fit, fn = SCORERS[part]
        st = fit(ref)
        # a bank's own points are their nearest neighbours: leave each out of its own k
        s = fn(st, ref, self_out=True) if part in BANKS else fn(st, ref)
        s = s[np.isfinite(s)] if np.isfinite(s).any() else np.zeros(1)   # psf: not measured
        st["scale"] = np.array(max(float(np.percentile(s, percentile)), 1e-12)
                               if part != "energy" else
                               float(np.percentile(s, percentile) - np.percentile(s, 50)) or 1.0)
        if part == "energy":
            st["offset"] = np.array(float(np.percentile(s, 50)))
        st["power"] = np.array(POWER)
        state[part] = st
    return state


def score(name, state, batch, *, parts=False):
    """The score of ``name`` for ``batch``: each part divided by its reference scale, and for a
    combination their weighted power mean (`combine`, with the power the state was fitted
    with: a shift that moves every part a little counts more than with the maximum, and one
    that only one part sees is diluted least by the mean). ``parts=True`` also returns the
    scaled part scores (a dict)."""
    each = {}
    for part in combined_names(name):
        st = state[part]
        s = SCORERS[part][1](st, batch)
        if part == "energy":
            s = 1.0 + (s - float(st["offset"])) / float(st["scale"])
        else:
            s = s / float(st["scale"])
        each[part] = s
    out = combine(each, power=power_of(state))
    return (out, each) if parts else out


def power_of(state):
    """The combination power a fitted ``state`` was fitted with (`POWER`; `LEGACY_POWER` for
    a reference fitted before it was stored)."""
    for st in state.values():
        if "power" in st:
            return float(np.asarray(st["power"]))
    return LEGACY_POWER


def combine(parts, *, power=POWER):
    """The weighted power mean (`POWER`; 2, the root mean square, for older references) of
    scaled part scores (a dict of arrays), each clipped at 0 and weighted by `WEIGHTS`; one
    part: itself. A NaN part (``psf`` where no profile was measured) is left out of its row's
    mean; a row with no part measured scores 0."""
    a = np.stack([np.asarray(v, np.float64) for v in parts.values()])
    if len(a) == 1:
        return np.nan_to_num(a[0], nan=0.0)
    power = float(power)
    if not (np.isfinite(power) and power > 0):
        raise ValueError(f"power must be a positive number, got {power!r}")
    w = np.array([WEIGHTS.get(k, 1.0) for k in parts], np.float64)[:, None]
    ok = np.isfinite(a)
    w = np.where(ok, w, 0.0)
    num = (w * np.maximum(np.where(ok, a, 0.0), 0.0) ** power).sum(axis=0)
    return (num / np.maximum(w.sum(axis=0), 1e-300)) ** (1.0 / power)


def auroc(inside, outside):
    """Area under the ROC curve separating ``outside`` (positives) from ``inside`` scores."""
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(outside, np.float64), np.asarray(inside, np.float64)
    if not (len(a) and len(b)):
        return float("nan")
    u = mannwhitneyu(a, b, alternative="two-sided").statistic
    return float(u / (len(a) * len(b)))

"""Out-of-distribution scorers compared on shifted inputs, per shipped model.

For each shipped model: a reference set of held-out simulated galaxies at the depths the model
was trained for (Y10, and Y1 for the domain-adapted ones; galaxy indices 20000.., the training
magnitude law of its card) fits every scorer of `galguard.ood.scorers`; in-domain test galaxies
(indices 30000.., both depths) and the shifts of `galguard.ood.shifts` made from them, plus
cutouts of the Hubble XDF (scikit-image), are scored. Printed: AUROC per scorer and shift, and
the fraction of in-domain galaxies above the reference's 98th percentile. About 5 minutes on 2
CPU cores (simulation included; ``--cache-dir`` keeps the galaxies).

Usage: ``python benchmarks/experiment_ood.py [--n-ref 800] [--n-test 300] [--models all]
[--test-start 30000] [--psf-weights 2,3] [--powers 1,2,max]``; ``--test-start 35000`` scores
validation galaxies instead (for choosing settings), ``--psf-weights`` and ``--powers`` add the
default combination with each ``psf`` weight (``WEIGHTS``) or power (``POWER``, or the maximum)
of `galguard.ood.scorers` as extra columns.
"""

import argparse
import time

import numpy as np


def model_outputs(model, x, batch=256):
    import torch

    lat, log = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            z, lg = model(torch.as_tensor(np.ascontiguousarray(x[i:i + batch])))
            lat.append(z.double().numpy())
            log.append(lg.double().numpy())
    return np.concatenate(lat), np.concatenate(log)


def batch_of(model, x):
    from galguard.ood import input_features
    from galguard.ood.features import profile_features

    lat, logits = model_outputs(model, x)
    return {"features": input_features(x), "profile": profile_features(x), "latent": lat,
            "logits": logits}


def xdf_cutouts(size):
    from skimage import data

    from galguard.io import cutouts_from_image

    rgb = data.hubble_deep_field().transpose(2, 0, 1).astype(np.float32)[::-1] / 255.0
    cut = cutouts_from_image(rgb, size=size, fill={"gain": 1.0, "sky": 0.0, "exptime": 1.0})
    return cut.data[cut.good]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-ref", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--models", default="all")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-batches", action="store_true", help="skip the shipped reference's "
                    "per-batch tests")
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--test-start", type=int, default=30000,
                    help="first galaxy index of the in-domain test sets (35000: validation)")
    ap.add_argument("--psf-weights", default="",
                    help="comma-separated psf weights to compare in the default combination")
    ap.add_argument("--powers", default="",
                    help="comma-separated powers of the default combination to compare "
                         "(numbers or 'max')")
    args = ap.parse_args()

    from galguard.models import available, load
    from galguard.ood import SHIFTS, auroc, fit_scorer, make_shift
    from galguard.ood import scorers as scoring
    from galguard.training import load_sim_split

    names = available() if args.models == "all" else args.models.split(",")
    names = [n for n in names if n != "default"]
    scorers = ["mahalanobis", "knn", "energy", "vim", "input", "inputknn", "psf",
               "input+inputknn", "input+knn", "input+inputknn+knn", "input+inputknn+knn+psf"]
    # the default combination with other psf weights or powers (extra columns)
    extra = {f"default, psf weight {w}": (float(w), None) for w in args.psf_weights.split(",") if w}
    extra.update({f"default, power {p}": (None, p) for p in args.powers.split(",") if p})

    def score(s, state, batch):
        if s not in extra:
            return scoring.score(s, state, batch)
        w, p = extra[s]
        saved = dict(scoring.WEIGHTS)
        if w is not None:
            scoring.WEIGHTS["psf"] = w
        try:
            _, parts = scoring.score("input+inputknn+knn+psf", state, batch, parts=True)
            if p is None:
                return scoring.combine(parts, power=scoring.power_of(state))
            if p == "max":
                return np.max([np.nan_to_num(v, nan=0.0) for v in parts.values()], axis=0)
            return scoring.combine(parts, power=float(p))
        finally:
            scoring.WEIGHTS.clear()
            scoring.WEIGHTS.update(saved)

    for name in names:
        t0 = time.time()
        model = load(name)
        td = model.card.get("training_data") or {}
        law = {k: td[k] for k in ("mag_range", "counts_slope") if td.get(k)}
        depths = ["y10"] + (["y1"] if model.card.get("domain_adaptation", "none") != "none" else [])
        sim = dict(seed=td.get("seed", 0), size=model.input_size, cache_dir=args.cache_dir, **law)
        ref_x, ref_y = [], []
        for d in depths:
            x, y = load_sim_split(start=20000, n=args.n_ref, depth=d, **sim)
            ref_x.append(x)
            ref_y.append(y)
        ref_x, ref_y = np.concatenate(ref_x), np.concatenate(ref_y)
        ref = batch_of(model, ref_x)
        ref["labels"] = ref_y
        ref["weight"] = model.network.classifier.weight.detach().double().numpy()
        ref["bias"] = model.network.classifier.bias.detach().double().numpy()
        states = {s: fit_scorer(s, ref) for s in scorers}
        states.update({s: states["input+inputknn+knn+psf"] for s in extra})
        test = {d: load_sim_split(start=args.test_start, n=args.n_test, depth=d, **sim)[0]
                for d in ("y10", "y1")}
        inside = np.concatenate([test[d] for d in depths])
        sets = {"in-domain " + "+".join(depths): inside}
        if "y1" not in depths:
            sets["Y1 (not trained for)"] = test["y1"]
        for shift in SHIFTS:
            sets[shift] = make_shift(shift, inside[: args.n_test], seed=1)
        sets["hubble_xdf"] = xdf_cutouts(model.input_size)
        scored = {k: batch_of(model, v) for k, v in sets.items()}
        print(f"\n## {name} (in-domain: {'+'.join(depths)}; reference {len(ref_x)}, "
              f"{time.time() - t0:.0f} s)")
        cols = scorers + list(extra)
        print("| set | kind | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        ins = {s: score(s, states[s], scored[list(sets)[0]]) for s in cols}
        ref_s = {s: score(s, states[s], ref) for s in cols}
        thr = {s: np.percentile(ref_s[s], 98) for s in cols}
        print("| in-domain flagged at the reference 98th pct | | "
              + " | ".join(f"{np.mean(ins[s] > thr[s]):.3f}" for s in cols) + " |")
        for k in list(sets)[1:]:
            kind = SHIFTS[k][1] if k in SHIFTS else ("far" if k == "hubble_xdf" else "near")
            vals = [auroc(ins[s], score(s, states[s], scored[k])) for s in cols]
            print(f"| {k} | {kind} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        if not args.no_batches:
            batch_tests(model, sets, args.batches)


def batch_tests(model, sets, n_batches):
    """The shipped reference as galguard.check uses it: per-galaxy flag rates and the per-batch
    domain-shift test's alarm rate over random batches (drawn with replacement) per size."""
    from galguard.ood.reference import domain_shift, score_cutouts

    scorer, state = model.ood_reference
    thr = model.card["ood"]["threshold"]
    expected = model.card["ood"]["expected_rate"]
    rng = np.random.default_rng(0)
    sizes = (30, 100, 300)
    print(f"\nshipped reference ({scorer}, threshold {thr:.3f}, expected in-domain rate "
          f"{expected:.3f}): flagged fraction and domain-shift alarm rate over {n_batches} "
          f"random batches per size")
    print("| set | flagged | " + " | ".join(f"alarm, batch {b}" for b in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for k, x in sets.items():
        flagged = score_cutouts(scorer, state, x, model)[0] > thr
        rates = []
        for b in sizes:
            alarms = 0
            for _ in range(n_batches):
                pick = rng.integers(0, len(x), b)
                alarms += domain_shift(int(flagged[pick].sum()), b, expected)["shifted"]
            rates.append(alarms / n_batches)
        print(f"| {k} | {flagged.mean():.3f} | " + " | ".join(f"{r:.3f}" for r in rates) + " |")


if __name__ == "__main__":
    main()

"""Fit and store the out-of-distribution reference of the shipped models (a maintainer's command).

For each shipped model: the reference is 1000 held-out simulated galaxies per depth the model was
trained for (Y10; Y1 too for the domain-adapted ones), galaxy indices 20000..20999 of the
training seed and magnitude law of its card (disjoint from its training 0..7999, validation
8000..8999 and test 9000..10999 galaxies); the expected in-domain rate is measured on 1000 more per
depth (indices 40000..40999). The weights file is rewritten with the reference tensors (the
network weights are unchanged) and the card gets its ``ood`` entry and ``ood_threshold``.

Usage: ``python benchmarks/ship_ood_reference.py [--cache-dir scratch/simcache] [--n 1000]
[--models NAME,...]`` (default: every shipped model)
"""

import argparse
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-held-out", type=int, default=1000)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--sim-jobs", type=int, default=1)
    ap.add_argument("--models", default=None, help="comma-separated shipped names (default all)")
    args = ap.parse_args()

    from galguard.models import available, load, save
    from galguard.models.store import weights_dir
    from galguard.ood.reference import fit_reference
    from galguard.training import load_sim_split

    names = [n for n in available() if n != "default"]
    if args.models:
        names = [n for n in args.models.split(",") if n in names] or names[:0]
    for name in names:
        t0 = time.time()
        model = load(name)
        td = model.card.get("training_data") or {}
        law = {k: td[k] for k in ("mag_range", "counts_slope") if td.get(k)}
        depths = ["y10"] + (["y1"] if model.card.get("domain_adaptation", "none") != "none"
                            else [])
        sim = dict(seed=td.get("seed", 0), size=model.input_size, cache_dir=args.cache_dir,
                   n_jobs=args.sim_jobs, **law)
        ref = np.concatenate([load_sim_split(start=20000, n=args.n, depth=d, **sim)[0]
                              for d in depths])
        held = np.concatenate([load_sim_split(start=40000, n=args.n_held_out, depth=d, **sim)[0]
                               for d in depths])
        info = fit_reference(model, ref, held_out=held, note=(
            f"held-out galguard.sim galaxies 20000..{20000 + args.n - 1} (seed "
            f"{sim['seed']}, the training magnitude law) at {', '.join(d.upper() for d in depths)};"
            f" expected rate from galaxies 40000..{40000 + args.n_held_out - 1}"))
        save(model, Path(weights_dir()) / f"{name}.safetensors")
        print(f"{name}: threshold {info['threshold']:.3f}, expected in-domain rate "
              f"{info['expected_rate']:.3f} ({info['expected_rate_from']}); {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()

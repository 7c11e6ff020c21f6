"""Cost of the out-of-distribution score side by side with the model's forward pass.

On ``--n`` held-out simulated galaxies (indices 30000.., the default model's training law) and
the default model's shipped reference: the forward pass, the score without the resolution check
(``input+inputknn+knn``, the reference's parts) and the shipped score (``...+psf``), best of
``--repeat``, in one process; printed in ms per cutout and as ratios to the forward pass.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_ood.py [--n 300] [--threads 2]``
"""

import argparse
import time

import numpy as np


def best(fn, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()

    import torch

    from galguard.models import load
    from galguard.ood.features import input_features, profile_features
    from galguard.ood.reference import _latents, score_cutouts
    from galguard.training import load_sim_split

    torch.set_num_threads(args.threads)
    model = load("default")
    td = model.card.get("training_data") or {}
    law = {k: td[k] for k in ("mag_range", "counts_slope") if td.get(k)}
    x = load_sim_split(seed=td.get("seed", 0), start=30000, n=args.n, depth="y10",
                       cache_dir=args.cache_dir, **law)[0]
    scorer, state = model.ood_reference
    lat = _latents(model, x)[0]
    n = len(x)
    t_fwd = best(lambda: _latents(model, x), args.repeat)
    rows = [("forward pass (latent + probabilities)", t_fwd)]
    for name in ("input+inputknn+knn", scorer):
        rows.append((f"OOD score {name} (latent given)",
                     best(lambda: score_cutouts(name, state, x, model, latent=lat), args.repeat)))
    rows.append(("  of which input_features", best(lambda: input_features(x), args.repeat)))
    rows.append(("  of which profile_features", best(lambda: profile_features(x), args.repeat)))
    print(f"{n} cutouts of {x.shape[1:]}, {args.threads} threads, best of {args.repeat}")
    for what, t in rows:
        print(f"{what}: {1e3 * t / n:.2f} ms a cutout ({t / t_fwd:.2f}x the forward pass)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

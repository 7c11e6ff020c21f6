"""Held-out accuracy by r magnitude, the noise-robustness experiment of docs/experiments.md.

Usage: python benchmarks/experiment_by_magnitude.py MODEL... [--cache-dir scratch/simcache]
(models by shipped name or path; test galaxies 9000..10999, seed 0, r 18.5-25.5, slope 0.3)."""
import sys
import numpy as np
from galguard import sim
from galguard.models import load
from galguard.training import load_sim_split

idx = np.arange(9000, 11000)
r = np.array([sim._draw_r_mag(np.random.default_rng(np.random.SeedSequence([0, int(i), sim._STREAM_GALAXY])),
                              (18.5, 25.5), 0.3) for i in idx])
edges = [18.5, 22.5, 23.5, 24.5, 25.0, 25.5]
k = np.digitize(r, edges[1:-1])
print("bins", edges, "counts", np.bincount(k).tolist())
args = sys.argv[1:]
cache = "scratch/simcache"
if "--cache-dir" in args:
    i = args.index("--cache-dir")
    cache = args[i + 1]
    del args[i:i + 2]
for path in args:
    m = load(path)
    for d in ("y10", "y1"):
        x, y = load_sim_split(seed=0, start=9000, n=2000, depth=d, cache_dir=cache,
                              mag_range=(18.5, 25.5), counts_slope=0.3)
        ok = m.predict(x).argmax(1) == y
        print(path.split("/")[-1].split(".")[0], d, f"{ok.mean():.4f}",
              " ".join(f"{ok[k == j].mean():.3f}" for j in range(len(edges) - 1)))

"""Benchmarks of the compiled core (galguard.kernels), side by side with the alternatives.

1. Poisson sampling throughput on the same input: galguard (1 and N OpenMP threads) vs
   numpy.random.Generator.poisson and torch.poisson. Inputs: realistic electron counts of
   galaxy cutouts (sky + galaxy, means ~1e3 to ~1e5), small means (U(0, 20)), and means spread
   over 10 decades.
2. Cost of one differential-evolution generation (mutation, writing the candidate images,
   selection) per candidate image, as a fraction of one forward pass of the paper's ConvNet per
   image.

Timings are the minimum over repeats, runs interleaved so that load from other processes
affects all contenders alike. Wall-clock and process CPU time are both reported: on a shared
machine the CPU time per element is the steadier measure of per-core efficiency.

Usage::

    python benchmarks/bench_kernels.py [--threads 2] [--repeats 7] [--quick]
"""

import argparse
import platform
import time

import numpy as np
import torch

from galguard import kernels


def timed(fn, repeats):
    """(min wall seconds, min CPU seconds) over repeats."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def interleaved(contenders, repeats, threads):
    """{name: [min wall s, min CPU s]}: every contender once per round, ``repeats`` rounds
    (so load changes hit all alike); ``(n_threads or None, fn)`` per contender."""
    res = {k: [np.inf, np.inf] for k in contenders}
    for _ in range(repeats):
        for key, (n, fn) in contenders.items():
            if n is not None:
                kernels.set_num_threads(n)
            w, c = timed(fn, 1)
            res[key][0] = min(res[key][0], w)
            res[key][1] = min(res[key][1], c)
    kernels.set_num_threads(threads)
    return res


def galaxy_means(n, size=100, seed=0):
    """Electron-count means of n 3-band cutouts: sky (~16k e-) plus Sersic-like galaxies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        r = np.hypot(x * rng.uniform(0.6, 1), y) / rng.uniform(3, 12)
        prof = np.exp(-r ** rng.uniform(0.5, 1.0))
        for c, sky in enumerate((9e3, 16e3, 24e3)):
            out[i, c] = sky + rng.uniform(2e4, 2e5) * prof
    return out


def bench_poisson(args):
    n = 16 if args.quick else 64
    inputs = {
        f"galaxy cutouts ({n}x3x100x100, means 1e4-2e5)": galaxy_means(n),
        "small means U(0, 20), 2e6 values": np.random.default_rng(1).uniform(0, 20, (200, 10_000)).astype(np.float32),
        "means 10^U(-3, 7), 2e6 values": (10 ** np.random.default_rng(2).uniform(-3, 7, (200, 10_000))).astype(np.float32),
    }
    gen = np.random.default_rng(123)
    torch.set_num_threads(args.threads)
    rows = []
    for name, lam in inputs.items():
        lam64 = lam.astype(np.float64)
        t = torch.from_numpy(lam)
        contenders = {
            "galguard, 1 thread": (1, lambda: kernels.poisson(lam, seed=1)),
            f"galguard, {args.threads} threads": (args.threads, lambda: kernels.poisson(lam, seed=1)),
            "numpy Generator.poisson": (None, lambda: gen.poisson(lam64)),
            f"torch.poisson ({args.threads} threads)": (None, lambda: torch.poisson(t)),
        }
        res = interleaved(contenders, args.repeats, args.threads)
        numpy_wall = res["numpy Generator.poisson"][0]
        numpy_cpu = res["numpy Generator.poisson"][1]
        for key, (w, c) in res.items():
            rows.append((name, key, lam.size / w / 1e6, c / lam.size * 1e9, numpy_wall / w,
                         numpy_cpu / c))
    print("\n## Poisson sampling throughput (same input for all)")
    print("| input | sampler | Mdraws/s (wall) | CPU ns/draw | speed-up vs numpy (wall) | vs numpy (CPU time) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f}x | {r[5]:.2f}x |")


def bench_binomial(args):
    n = 16 if args.quick else 64
    counts = np.round(galaxy_means(n)).astype(np.float32)
    counts64 = counts.astype(np.int64)
    gen = np.random.default_rng(5)
    tc = torch.from_numpy(counts)
    tp = torch.full_like(tc, 0.1)
    contenders = {
        "galguard, 1 thread": (1, lambda: kernels.binomial_thin(counts, 0.1, seed=1)),
        f"galguard, {args.threads} threads": (args.threads, lambda: kernels.binomial_thin(counts, 0.1, seed=1)),
        "numpy Generator.binomial": (None, lambda: gen.binomial(counts64, 0.1)),
        f"torch.binomial ({args.threads} threads)": (None, lambda: torch.binomial(tc, tp)),
    }
    res = interleaved(contenders, args.repeats, args.threads)
    nw, nc = res["numpy Generator.binomial"]
    print(f"\n## Binomial thinning, p = 0.1, of galaxy counts ({n}x3x100x100)")
    print("| sampler | Mdraws/s (wall) | CPU ns/draw | vs numpy (wall) | vs numpy (CPU time) |")
    print("|---|---|---|---|---|")
    for key, (w, c) in res.items():
        print(f"| {key} | {counts.size / w / 1e6:.1f} | {c / counts.size * 1e9:.1f} | "
              f"{nw / w:.2f}x | {nc / c:.2f}x |")


def convnet():
    try:
        from galguard.models import ConvNet

        return ConvNet(in_channels=3, n_classes=3, input_size=100), "galguard.models.ConvNet"
    except ImportError:  # pragma: no cover - defined inline where the models module is absent
        import torch.nn as nn

        net = nn.Sequential(
            nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4608, 256), nn.Linear(256, 3),
        )
        return net, "inline ConvNet"


def bench_de(args):
    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    b, p, c, h, w = (2, 100, 3, 100, 100) if args.quick else (4, 400, 3, 100, 100)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(b, c, h, w)).astype(np.float32))
    lo = images.amin(dim=(2, 3))
    hi = images.amax(dim=(2, 3))
    ids = torch.arange(b)
    pop = kernels.de_init(ids, p, pixels=1, channels=c, height=h, width=w, lo=lo, hi=hi, seed=0)
    fit = torch.rand(b, p)
    tfit = torch.rand(b, p)
    out = torch.empty(b * p, c, h, w)
    state = {"gen": 1}

    def mutate():
        state["gen"] += 1
        return kernels.de_mutate(pop, ids=ids, generation=state["gen"], height=h, width=w,
                                 lo=lo, hi=hi, seed=0)

    trial = mutate()
    steps = {
        "mutation (rand/1)": mutate,
        "writing B x P candidate images (into a preallocated buffer)": lambda: kernels.de_write_candidates(images, trial, out=out),
        "selection": lambda: kernels.de_select(pop, fit, trial, tfit),
    }
    net, net_name = convnet()
    net.eval()
    batch = out[:256].clone()

    def forward():
        with torch.inference_mode():
            net(batch)

    forward()
    per_cand = {}
    for name, fn in steps.items():
        wall, _ = timed(fn, args.repeats)
        per_cand[name] = wall / (b * p)
    fwd_wall, _ = timed(forward, args.repeats)
    fwd = fwd_wall / batch.shape[0]
    total = sum(per_cand.values())
    print(f"\n## One DE generation per candidate image vs one {net_name} forward per image")
    print(f"B = {b} images x P = {p} candidates, (3, 100, 100) float32, {args.threads} threads; "
          f"forward in batches of {batch.shape[0]} under inference_mode")
    print("| step | us per candidate | fraction of one forward |")
    print("|---|---|---|")
    for name, t in per_cand.items():
        print(f"| {name} | {t * 1e6:.2f} | {t / fwd:.2%} |")
    print(f"| **one generation (sum)** | **{total * 1e6:.2f}** | **{total / fwd:.2%}** |")
    print(f"| ConvNet forward, per image | {fwd * 1e6:.1f} | 100% |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    ap.add_argument("--only", choices=("poisson", "de"), default=None)
    args = ap.parse_args()
    info = kernels.build_info()
    print(f"# galguard {info.get('version')} core: cuda={info.get('cuda')} openmp={info.get('openmp')};"
          f" numpy {np.__version__}, torch {torch.__version__}; {platform.processor() or platform.machine()},"
          f" {__import__('os').cpu_count()} CPUs")
    if args.only in (None, "poisson"):
        bench_poisson(args)
        bench_binomial(args)
    if args.only in (None, "de"):
        bench_de(args)


if __name__ == "__main__":
    main()

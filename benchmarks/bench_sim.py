"""Speed of galguard.sim.

Measures, in one run:
1. per-class time to render one noiseless 100x100 g, r, i galaxy (galguard.sim's route: GalSim
   for Sersic components, numpy patterns convolved with the PSF by FFT for discs, arms, knots
   and tidal features), and the time to add counts-model noise at Y10 and Y1;
2. the alternative for the numpy components: wrapping each band's pattern in
   galsim.InterpolatedImage and letting GalSim convolve it with the PSF;
3. Sersic profiles truncated beyond the stamp versus untruncated (ellipticals);
4. end-to-end throughput of ``simulate(n, depths=("y10", "y1"))`` with 1 and 2 worker processes.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_sim.py [--n 300]``
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from galguard import sim  # noqa: E402
from galguard.sim import _morphology as morph  # noqa: E402
from galguard.sim._render import observe, render_galaxy  # noqa: E402


def _time(fn, repeat):
    fn()  # warm caches (GalSim Sersic tables)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def per_class(repeat):
    out = {}
    labels = sim.class_labels(np.arange(300), seed=0)
    for c, name in enumerate(sim.CLASSES):
        idx = np.flatnonzero(labels == c)[:repeat]
        for i in idx[:5]:  # warm GalSim's Sersic caches for the n values in use
            render_galaxy(0, int(i), c, 100)
        t0 = time.perf_counter()
        for i in idx:
            render_galaxy(0, int(i), c, 100)
        out[name] = (time.perf_counter() - t0) / len(idx)
    img, _ = render_galaxy(0, 0, int(labels[0]), 100)
    out["noise (both depths)"] = _time(lambda: [observe(img, d, 0, 0) for d in sim.DEPTHS],
                                       20)
    return out


def interpolated_alternative(repeat):
    """Time the pattern+PSF step with galsim.InterpolatedImage instead of scipy FFT."""
    import galsim
    from scipy.signal import fftconvolve

    grid = morph.Grid(100)
    rng = np.random.default_rng(1)
    comps, _ = morph._make_spiral(rng, grid, 20.0)
    pattern = sum(obj / obj.sum() for kind, _, _, obj in comps if kind == "np")
    psf = morph.make_psf(0.8, 0.0, 0.0)

    def ours():
        k = psf.drawImage(nx=51, ny=51, scale=grid.scale, method="no_pixel").array
        return grid.bin(fftconvolve(pattern, k / k.sum(), mode="same"))

    def alternative():
        ii = galsim.InterpolatedImage(galsim.Image(pattern, scale=grid.scale))
        return galsim.Convolve(ii, psf).drawImage(nx=100, ny=100, scale=sim.PIXEL_SCALE,
                                                   method="no_pixel").array

    a, b = ours(), alternative()
    rel = float(np.abs(a / a.sum() - b / b.sum()).max() / (a / a.sum()).max())
    return _time(ours, repeat), _time(alternative, repeat), rel


def truncation(repeat):
    """Ellipticals with large Sersic profiles truncated beyond the stamp (default) or not."""
    labels = sim.class_labels(np.arange(400), seed=5)
    idx = [int(i) for i in np.flatnonzero(labels == 1)[:repeat]]
    out = {}
    images = {}
    saved = morph._TRUNC_HLR
    try:
        for name, value in (("truncated", saved), ("untruncated", 0.0)):
            morph._TRUNC_HLR = value
            for i in idx[:5]:
                render_galaxy(5, i, 1, 100)  # warm caches
            t0 = time.perf_counter()
            images[name] = [render_galaxy(5, i, 1, 100)[0] for i in idx]
            out[name] = (time.perf_counter() - t0) / len(idx)
    finally:
        morph._TRUNC_HLR = saved
    diff = max(float(np.abs(a - b).max() / b.max())
               for a, b in zip(images["truncated"], images["untruncated"]))
    return out, diff


def throughput(n):
    out = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        sim.simulate(n, seed=0, depths=("y10", "y1"), n_jobs=jobs)
        out[jobs] = (time.perf_counter() - t0) / n
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="galaxies for the throughput test")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"cpu count {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("1. noiseless render, 100x100, 3 bands (ms per galaxy)")
    for k, v in per_class(args.repeat).items():
        print(f"   {k:22s} {1e3 * v:7.1f}")
    ours, alt, rel = interpolated_alternative(args.repeat)
    print("2. pattern (disc + arms + knots) convolved with the PSF, one band (ms)")
    print(f"   scipy fftconvolve on the 3x grid  {1e3 * ours:7.2f}")
    print(f"   galsim.InterpolatedImage          {1e3 * alt:7.2f}   ratio {alt / ours:5.1f}x"
          f"   max rel. difference {rel:.3f}")
    tr, diff = truncation(args.repeat)
    print("3. noiseless elliptical, Sersic truncated beyond the stamp or not (ms per galaxy)")
    print(f"   truncated (ours)  {1e3 * tr['truncated']:7.1f}")
    print(f"   untruncated       {1e3 * tr['untruncated']:7.1f}   ratio "
          f"{tr['untruncated'] / tr['truncated']:4.2f}x   max difference {diff:.1e} of the peak")
    tp = throughput(args.n)
    print(f"4. simulate({args.n}, both depths): ms per galaxy (wall)")
    for jobs, v in tp.items():
        print(f"   n_jobs={jobs}  {1e3 * v:7.1f}   -> 5000 galaxies in {5000 * v / 60:5.1f} min")
    print(f"   speed-up with 2 workers: {tp[1] / tp[2]:.2f}x")


if __name__ == "__main__":
    main()

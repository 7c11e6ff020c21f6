"""Ingestion of survey-like MEF cutouts with planes against plain files, side by side.

Workloads (``--n`` simulated Y10 galaxies, ``--size`` pixels, written by `galguard.sim.write_fits`):

- ``plain files``: one primary HDU (3, S, S) per galaxy with GAINn/SKYLEVn keywords;
- ``plain files, no GAIN/SKYLEV``: the same without the keywords (sky and gain estimated from
  the border with photutils);
- ``MEF files``: per galaxy an empty primary and, per band, IMAGE, MASK and VARIANCE extensions
  (10 HDUs), with the keywords, and without them (both measured from the variance; the
  photutils border statistics still decide whether the sky is still in the image);
- ``plain stack`` / ``MEF stack``: the same as one (N, 3, S, S) file (the MEF stack with one
  IMAGE, MASK and VARIANCE extension of that shape).

Each is read with `galguard.io.read_cutouts`; the methods alternate within each repeat and the
best of ``--repeats`` is kept. Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_planes.py --n 2000 --size 64
"""

import argparse
import os
import shutil
import tempfile
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from galguard.io import read_cutouts
    from galguard.sim import simulate, write_fits

    root = tempfile.mkdtemp(prefix="bench-planes-")
    try:
        sd = simulate(args.n, seed=1, depths=("y10",), size=args.size)["y10"]
        write_fits(sd, os.path.join(root, "plain"))
        write_fits(sd, os.path.join(root, "plain-nokw"), noise_keywords=False)
        write_fits(sd, os.path.join(root, "mef-kw"), planes=True)
        write_fits(sd, os.path.join(root, "mef"), planes=True, noise_keywords=False)
        write_fits(sd, os.path.join(root, "pstack"), stack=True)
        write_fits(sd, os.path.join(root, "mstack"), stack=True, planes=True,
                   noise_keywords=False)
        cases = {"plain files": "plain",
                 "plain files, no GAIN/SKYLEV (border estimate)": "plain-nokw",
                 "MEF files with GAIN/SKYLEV keywords": "mef-kw",
                 "MEF files, no keywords (gain and sky from the variance)": "mef",
                 "plain stack": "pstack", "MEF stack (IMAGE/MASK/VARIANCE)": "mstack"}
        best = {k: float("inf") for k in cases}
        for _ in range(args.repeats):
            for name, sub in cases.items():
                t0 = time.perf_counter()
                cut = read_cutouts(os.path.join(root, sub))
                best[name] = min(best[name], time.perf_counter() - t0)
                assert len(cut) == args.n
        print(f"{args.n} cutouts of 3x{args.size}x{args.size}, best of {args.repeats}")
        print("| input | s | us/cutout | vs plain |")
        print("|---|---|---|---|")
        for name in cases:
            ref = best["plain files" if "files" in name else "plain stack"]
            print(f"| {name} | {best[name]:.3f} | {1e6 * best[name] / args.n:.0f} | "
                  f"{ref / best[name]:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Exact one-pixel verdicts side by side with the `default` attack preset (experimental).

On the first ``--n`` galaxies of the shipped Y10 sample and the shipped default model, with the
attack's ``cutout`` bounds and the ``pixel`` threat: the ``default`` preset attack, then
`galguard.robustness.certify.certify_onepixel` with a first-pass budget (one box per position)
and with ``--boxes`` boxes per galaxy; prints times, verdicts and the first-pass settled
fractions.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_certify.py [--n 6] [--boxes 30000]``
"""

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=30000)
    ap.add_argument("--model", default="default")
    ap.add_argument("--method", default="linear", choices=["linear", "interval"])
    args = ap.parse_args()

    from galguard import models
    from galguard.io import read_cutouts
    from galguard.robustness import OnePixelAttack
    from galguard.robustness.certify import certify_onepixel
    from galguard.sim import sample_path

    torch.set_num_threads(1)
    x = torch.from_numpy(read_cutouts(sample_path("y10")).data[:args.n]).float()
    m = models.load(args.model).eval()
    with torch.inference_mode():
        lab = m(x)[1].argmax(1)
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    t = time.perf_counter()
    a = OnePixelAttack.from_preset("default", m, seed=0)(x, lab)
    print(f"default attack: {time.perf_counter() - t:.1f} s, flips {a.success.tolist()}")
    first = x.shape[2] * x.shape[3]
    for budget in (first, args.boxes):
        t = time.perf_counter()
        r = certify_onepixel(m, x, lab, bounds=(lo, hi), max_boxes=budget,
                             bounds_method=args.method)
        print(f"certify (budget {budget}): {time.perf_counter() - t:.1f} s, {r.status}, "
              f"first-pass settled {r.settled.round(3).tolist()}, boxes {r.boxes.tolist()}")


if __name__ == "__main__":
    main()

"""Exact one-pixel verdicts side by side with the attack presets (experimental).

On ``--n`` galaxies of the shipped Y10 sample and each ``--models`` model, with the attack's
``cutout`` bounds and one ``--threat``: the ``fast``, ``default`` and ``paper`` (with
``--paper``) preset attacks, then, as ``check --certify`` runs it, the verdicts: the galaxies
the ``default`` preset flipped are flips, and `galguard.robustness.certify.certify_onepixel`
decides the others with ``--boxes`` boxes per galaxy and the ``--open-attack`` preset on the
sites its first pass leaves open (``--all``: certify every galaxy). Prints times (the default
preset plus the certificate, against the default preset alone), verdicts, the first-pass
settled fractions and each preset's recall against the verdicts (flips the preset found /
galaxies with a known flip).

With ``--compare``, the certificate also runs without its CROWN-IBP stage (intervals, then
the forward linear bounds: the cascade before 2026-12-07), side by side on the same galaxies.

With ``--fresh``, the galaxies are ``--n`` fresh simulated Y10 galaxies instead (held-out
indices from 40000 + ``--start``, the default model card's training magnitude law and seed;
``--cache-dir`` keeps them), the same galaxies for every model.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_certify.py [--n 12] [--boxes 500000]
[--threat band_pixel] [--length 4] [--models default convnet_none] [--fresh] [--compare]``
"""

import argparse
import contextlib
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--boxes", type=int, default=500000)
    ap.add_argument("--threat", default="band_pixel",
                    choices=["pixel", "band_pixel", "cosmic_ray", "bad_column"])
    ap.add_argument("--length", type=int, default=4, help="artefact length (cosmic_ray, "
                    "bad_column)")
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--method", default="linear", choices=["linear", "interval"])
    ap.add_argument("--paper", action="store_true", help="also run the paper preset")
    ap.add_argument("--open-attack", default="default",
                    help="preset of the attack on the sites the first pass leaves open, as "
                         "check runs it ('none': no such attack)")
    ap.add_argument("--fresh", action="store_true", help="fresh simulated Y10 galaxies "
                    "(indices 40000 + --start ..) instead of the shipped sample")
    ap.add_argument("--cache-dir", default=None, help="cache of the fresh galaxies")
    ap.add_argument("--all", action="store_true", help="certify every galaxy, also those the "
                    "default preset flipped (the certificate's own cost and recall)")
    ap.add_argument("--compare", action="store_true", help="also certify without the CROWN-IBP "
                    "stage (the cascade before 2026-12-07), side by side")
    args = ap.parse_args()

    from galguard import models
    from galguard.io import read_cutouts
    from galguard.robustness import OnePixelAttack
    from galguard.robustness.certify import certify_onepixel
    from galguard.sim import sample_path

    torch.set_num_threads(1)
    if args.fresh:
        from galguard.training import load_sim_split

        td = models.load("default").card.get("training_data") or {}
        law = {k: td[k] for k in ("mag_range", "counts_slope") if td.get(k)}
        x = torch.from_numpy(load_sim_split(seed=td.get("seed", 0), start=40000 + args.start,
                                            n=args.n, depth="y10", cache_dir=args.cache_dir,
                                            **law)[0])
        print(f"{args.n} fresh simulated Y10 galaxies (indices {40000 + args.start}.., "
              f"law {law})", flush=True)
    else:
        x = torch.from_numpy(read_cutouts(sample_path("y10")).data[args.start:args.start +
                                                                  args.n])
    x = x.float()
    presets = ["fast", "default"] + (["paper"] if args.paper else [])
    for name in args.models:
        m = models.load(name).eval()
        with torch.inference_mode():
            lab = m(x)[1].argmax(1)
        lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
        found, times = {}, {}
        for p in presets:
            t = time.perf_counter()
            a = OnePixelAttack.from_preset(p, m, seed=0, threat=args.threat,
                                           length=args.length)(x, lab)
            times[p] = time.perf_counter() - t
            found[p] = a.success.numpy()
            print(f"{name} {p} attack ({args.threat}): {times[p]:.1f} s, "
                  f"{int(found[p].sum())} flips of {len(x)}", flush=True)
        one = args.threat in ("pixel", "band_pixel")    # open-site attacks: one pixel only
        open_attack = None if args.open_attack == "none" or not one else \
            OnePixelAttack.from_preset(args.open_attack, m, seed=0, threat=args.threat)
        # as check --certify runs it: the default preset first, the certificate on the rest
        rows = np.arange(len(x)) if args.all else np.flatnonzero(~found["default"])
        rt = torch.as_tensor(rows, dtype=torch.int64)
        run = lambda: certify_onepixel(  # noqa: E731
            m, x[rt], lab[rt], bounds=(lo[rt], hi[rt]), threat=args.threat,
            max_boxes=args.boxes, bounds_method=args.method, attack=open_attack, ids=rt,
            length=args.length)
        if args.compare:
            t = time.perf_counter()
            with _without_crown_ibp():
                r0 = run()
            t0 = time.perf_counter() - t
            print(f"{name} certify without the CROWN-IBP stage: {t0:.1f} s, statuses "
                  f"{r0.status}, boxes {r0.boxes.tolist()}", flush=True)
        t = time.perf_counter()
        r = run()
        tc = time.perf_counter() - t
        if args.compare:
            print(f"{name} certify with it: {tc:.1f} s ({t0 / tc:.2f}x faster), statuses "
                  f"{'the same' if r.status == r0.status else 'differ'}",
                  flush=True)
        st = np.array(["flip"] * len(x), dtype=object)
        st[rows] = r.status
        total = tc + (0.0 if args.all else times["default"])
        flip = (st == "flip") | np.any([found[p] for p in presets], axis=0)
        what = "every galaxy" if args.all else \
            f"the {len(rows)} galaxies the default preset did not flip"
        print(f"{name} certify ({args.threat}, budget {args.boxes}) on {what}: {tc:.1f} s; "
              f"default preset + certify {total:.1f} s ({total / times['default']:.1f}x the "
              f"default preset), certified {int((st == 'certified').sum())}, flip "
              f"{int((st == 'flip').sum())}, unknown {int((st == 'unknown').sum())}; verdicts "
              f"{int((st != 'unknown').sum())} of {len(x)}; first-pass settled "
              f"{r.settled.round(3).tolist()}; boxes {r.boxes.tolist()}; open sites "
              f"{r.open_sites.tolist()}; flips found by {[f for f in r.found_by if f]}",
              flush=True)
        for p in presets:
            rec = found[p][flip].mean() if flip.any() else float("nan")
            print(f"{name} {p} recall against the verdicts: {rec:.2f} "
                  f"({int(found[p][flip].sum())} of {int(flip.sum())} known flips)")


@contextlib.contextmanager
def _without_crown_ibp():
    """certify_onepixel's first stage as plain intervals (no back-substitution)."""
    from galguard.robustness import certify

    class Intervals(certify.IntervalEvaluator):
        def margins(self, *a, tol=None, **kw):
            return super().margins(*a, **kw)

    saved = certify.IntervalCrownEvaluator
    certify.IntervalCrownEvaluator = Intervals
    try:
        yield
    finally:
        certify.IntervalCrownEvaluator = saved


if __name__ == "__main__":
    main()

"""How honest is a noise verdict drawn from a guessed gain?

Simulated Y10 galaxies are written four ways: with their GAIN/SKYLEV keywords (the truth), as
Rubin-like MEF files with a VARIANCE plane and no keywords, and as single-HDU files without the
keywords, once sky-subtracted and once with the sky still in the image. Each is read with
`galguard.io.read_cutouts` and checked (noise only, the shipped default model) with
``noise_estimated_verdict=True`` so that a verdict is drawn even from a guess. Printed: the
distribution of estimated / true gain and how often NOISE_UNSTABLE differs from the run on the
true gain. Not a unit test; about a minute on 2 CPU cores.

Usage: ``python benchmarks/experiment_guessed_gain.py [--n 300] [--seed 11]``
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import galguard
from galguard.flags import Flag
from galguard.io import read_cutouts
from galguard.sim import simulate, write_fits


def raw_files(sd, out):
    """Single-HDU files with the sky added back and no GAIN/SKYLEV keywords."""
    from astropy.io import fits

    from galguard.sim._survey import depth_params

    out.mkdir(parents=True)
    sky = depth_params(sd.depth)["sky"][:, None, None]
    plain = sorted(out.parent.joinpath("stripped").glob("*.fits"))
    for p in plain:
        with fits.open(p) as h:
            fits.PrimaryHDU((h[0].data + sky).astype(np.float32), h[0].header).writeto(
                out / p.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--realisations", type=int, default=10)
    args = ap.parse_args()
    t0 = time.time()
    sd = simulate(args.n, seed=args.seed, start=50_000, depths=("y10",), size=100)["y10"]
    d = Path(tempfile.mkdtemp(prefix="guessed-gain-"))
    write_fits(sd, d / "truth")
    write_fits(sd, d / "mef", planes=True, noise_keywords=False)
    write_fits(sd, d / "stripped", noise_keywords=False)
    raw_files(sd, d / "raw")
    print(f"{args.n} galaxies simulated and written in {time.time() - t0:.0f} s")
    opts = dict(onepixel=False, noise_realisations=args.realisations,
                noise_estimated_verdict=True, seed=0)
    truth_gain = np.asarray(sd.meta["gain"])
    ref = galguard.check(str(d / "truth"), **opts)
    ref_unstable = (np.asarray(ref["flags"]) & int(Flag.NOISE_UNSTABLE)) != 0
    print(f"NOISE_UNSTABLE on the true gain: {ref_unstable.sum()} of {args.n}")
    print(f"{'input':<44} {'gain est/true: p5  p50  p95':>30} {'flag':>22} {'disagree':>9}")
    for name, what in (("mef", "MEF with VARIANCE, no keywords"),
                       ("raw", "sky still in, no keywords (border b/v)"),
                       ("stripped", "sky-subtracted, no keywords (default gain)")):
        cut = read_cutouts(str(d / name))
        ratio = np.asarray(cut.meta["gain"]) / truth_gain
        t = galguard.check(cut, **opts)
        unstable = (np.asarray(t["flags"]) & int(Flag.NOISE_UNSTABLE)) != 0
        est = (np.asarray(cut.meta["flags"]) & int(Flag.GAIN_ESTIMATED)) != 0
        q = np.percentile(ratio, [5, 50, 95])
        print(f"{what:<44} {q[0]:10.3g} {q[1]:6.3g} {q[2]:6.3g} "
              f"{'GAIN_ESTIMATED ' + str(int(est.sum())):>22} "
              f"{int((unstable != ref_unstable).sum()):>5} of {args.n}")


if __name__ == "__main__":
    main()

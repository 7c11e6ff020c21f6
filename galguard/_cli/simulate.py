"""``galguard simulate``: render simulated LSST-like galaxy cutouts as FITS files."""

import logging
from pathlib import Path

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers):
    """Add the ``simulate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "simulate",
        help="render simulated spiral/elliptical/merger cutouts (g, r, i) as FITS",
        description=(
            "Render GalSim galaxies (spiral, elliptical, merger) in g, r, i at LSST Y10 and/or "
            "Y1 depth. Writes one FITS file per galaxy, gal_{index:07d}.fits (the same name at "
            "both depths), or one stacked file with --stack. Deterministic per (seed, index)."),
    )
    p.add_argument("--n", type=int, required=True, help="number of galaxies")
    p.add_argument("--depth", choices=["y10", "y1", "both"], default="both",
                   help="depth; 'both' writes OUT/y10 and OUT/y1 (default: both)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--start", type=int, default=0, help="index of the first galaxy (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--stack", action="store_true",
                   help="write one (N, 3, H, W) file with a CATALOG table instead")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (-1: all cores)")
    p.add_argument("--size", type=int, default=100, help="stamp size in pixels (default 100)")
    p.add_argument("--classes", default="balanced", choices=["balanced", "paper"],
                   help="class mix: balanced thirds, or the paper's 43/24/33 percent")
    p.add_argument("--mag-range", type=float, nargs=2, default=None, metavar=("BRIGHT", "FAINT"),
                   help="range of the galaxies' total r magnitudes (default 18.5 22.5)")
    p.add_argument("--counts-slope", type=float, default=0.0,
                   help="draw r magnitudes from galaxy number counts dN/dm ~ 10^(SLOPE m) within "
                        "--mag-range, most galaxies near the faint limit as in a survey "
                        "(default 0: uniform; about 0.3 is realistic in r)")
    p.add_argument("--compress", action="store_true",
                   help="tile-compress (RICE_1, reproducible dither); files end in .fits.fz")
    p.add_argument("--mosaic", type=Path, default=None, metavar="PNG",
                   help="also write a PNG mosaic of colour composites")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def _targets(args, depths):
    ext = ".fits.fz" if args.compress else ".fits"
    out = []
    for d in depths:
        outdir = args.out / d if len(depths) > 1 else args.out
        if args.stack:
            out.append(outdir / f"stack_{args.start:07d}_{args.n}{ext}")
        else:
            out += [outdir / f"gal_{i:07d}{ext}" for i in range(args.start, args.start + args.n)]
    return out


def run(args):
    """Run ``galguard simulate``; returns an exit code."""
    from .. import sim
    from ..cli import EXIT_OK
    from ..errors import GalguardValueError

    depths = ("y10", "y1") if args.depth == "both" else (args.depth,)
    if args.n < 0 or args.start < 0:
        raise GalguardValueError(f"--n and --start must be >= 0, got {args.n} and {args.start}")
    if not args.overwrite:
        existing = [t for t in _targets(args, depths) if t.exists()]
        if args.mosaic is not None and args.mosaic.exists():
            existing.append(args.mosaic)
        if existing:
            raise GalguardValueError(f"{existing[0]} exists ({len(existing)} file(s) in the "
                                     "way); use --overwrite to replace")
    out = sim.simulate(args.n, seed=args.seed, start=args.start, depths=depths,
                       size=args.size, n_jobs=args.jobs, progress=not args.no_progress,
                       class_fractions=args.classes,
                       **({} if args.mag_range is None else {"mag_range": args.mag_range}),
                       counts_slope=args.counts_slope)
    written = 0
    for d in depths:
        outdir = args.out / d if len(depths) > 1 else args.out
        try:
            paths = sim.write_fits(out[d], outdir, stack=args.stack, overwrite=args.overwrite,
                                   compress=args.compress)
        except FileExistsError as exc:
            raise GalguardValueError(str(exc)) from None
        written += len(paths)
        logger.info("wrote %d file(s) to %s", len(paths), outdir)
    if args.mosaic is not None:
        sim.make_mosaic(out, args.mosaic)
        logger.info("wrote mosaic %s", args.mosaic)
    print(f"galguard simulate: {args.n} galaxies, depth {args.depth}, {written} file(s) "
          f"under {args.out}")
    return EXIT_OK

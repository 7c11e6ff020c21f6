"""``galguard report``: a self-contained HTML report of a catalog."""

import argparse
import logging
import sys

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Write a self-contained HTML report (PNG figures embedded as data URIs) of a catalog written by
galguard check: counts and flag summary; a gallery of the most fragile galaxies, each with the
attacking pixel of its one-pixel attack marked and its shallower-depth noise realisation beside
it; the noise flip-rate histogram; a latent-space map (Isomap or t-SNE) coloured by predicted
class and by fragility.

The catalog holds no pixels: the gallery and the map read their cutouts again from the
catalog's source/hdu/row columns and recompute latents with the model the catalog names (its
sha256 must match). Where the files or the model are gone, those parts are replaced by a note.
"""


def register(subparsers):
    """Add the ``report`` subcommand to ``subparsers``."""
    from ..report import METHODS

    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a catalog",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 written, 1 failure, 2 usage error (e.g. unreadable CATALOG)\n\n"
               "example:\n  galguard report flags.parquet -o report.html")
    p.add_argument("catalog", metavar="CATALOG",
                   help="catalog written by galguard check (.fits, .parquet, .ecsv, .csv)")
    p.add_argument("-o", "--output", default="report.html", metavar="HTML",
                   help="HTML file to write (default: %(default)s)")
    p.add_argument("--gallery", type=int, default=12, metavar="N",
                   help="most fragile galaxies shown (default: %(default)s)")
    p.add_argument("--max-points", type=int, default=2000, metavar="N",
                   help="at most N good rows (random sample) in the latent map "
                        "(default: %(default)s)")
    p.add_argument("--method", choices=METHODS, default="isomap",
                   help="latent-map embedding (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="model for images and latents (default: the one the catalog names)")
    p.add_argument("--seed", type=int, default=0, help="seed of the map's sample (default: 0)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=run)
    return p


def run(args):
    """Run ``galguard report``; returns an exit code."""
    from ..cli import EXIT_OK
    from ..report import make_report

    rep = make_report(args.catalog, args.output, gallery=args.gallery,
                      max_points=args.max_points, method=args.method, model=args.model,
                      seed=args.seed, title=args.title)
    for note in rep.notes:
        log.warning("%s", note)
    print(f"wrote {rep.path}: {rep.counts['n']} cutouts, {rep.counts['fragile']} fragile, "
          f"{len(rep.gallery)} in the gallery, {rep.latent_points} in the latent map",
          file=sys.stderr)
    return EXIT_OK

"""``galguard check``: check many FITS cutouts and write a flag catalog (streaming, resumable,
local or Dask scale-out)."""

import argparse
import logging
import sys

__all__ = ["register", "run", "add_check_options", "config_from_args"]

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Check galaxy cutouts and write one catalog row per cutout, in input order: the model's
prediction, its stability under shallower-depth Poisson noise, a one-pixel attack, latent-space
metrics, a flag bitmask and a `fragile` verdict (columns as galguard.check, plus hdu and row,
which locate each cutout in its file, and true_label).

INPUT is a FITS file, a directory (its FITS files sorted by name; --recursive for the tree), a
quoted glob ('survey/**/*.fits') or @LIST, a text file with one path per line (paths relative
to the list file; # comments). --input-list LIST does the same as @LIST.

Inputs are read in chunks of --chunk-size cutouts (memory stays bounded however many there are).
Each finished chunk is written to the journal CATALOG.partial/ next to the catalog, so a killed
run loses at most the chunks in flight: run the same command with --resume to continue. When all
chunks are in, the catalog is written atomically (temporary file + rename) and the journal is
removed. Random draws are keyed on (seed, row index), so the catalog is the same whatever the
chunk order, --workers, Dask cluster or --batch-size.
"""

_EPILOG = """\
exit status:
  0  every input was good
  1  the command failed (the journal is kept; continue with --resume)
  2  usage error: bad option, catalog exists without --overwrite/--resume, output is an input,
     --resume with another configuration or other inputs
  3  the catalog was written but some inputs were bad: their rows carry the BAD_INPUT flag and
     an error message

examples:
  galguard check survey/ -o flags.parquet
  galguard check 'tiles/*/gal_*.fits' -o flags.fits --preset fast --workers 2
  galguard check @cutouts.txt -o flags.ecsv --dask-scheduler tcp://10.0.0.5:8786
  galguard check survey/ -o flags.parquet --resume        # after an interruption
"""


def add_check_options(p):
    """The options shared by ``check`` and ``demo``: what is computed and how."""
    from ..robustness.onepixel import PRESETS

    g = p.add_argument_group("checks")
    g.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="one-pixel attack budget, population x generations: "
                        + ", ".join(f"'{name}' ({p['popsize']} x {p['max_iter']})"
                                    for name, p in PRESETS.items())
                        + "; 'paper' is the DeepAdversaries budget, 'default' is sized for a "
                          "CPU (default: %(default)s)")
    g.add_argument("--model", default="default",
                   help="shipped model name or path to NAME.safetensors with its NAME.json card "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of every random draw; same seed, same catalog (default: 0)")
    g.add_argument("--noise-realisations", type=int, default=10, metavar="K",
                   help="shallower-depth noise realisations per cutout (default: 10)")
    g.add_argument("--depth-fraction", type=float, default=0.1, metavar="P",
                   help="fraction of the exposure kept by each noise realisation "
                        "(0.1 ~ LSST Y10 -> Y1; default: 0.1)")
    g.add_argument("--no-noise", dest="noise", action="store_false",
                   help="skip the noise-stability check")
    g.add_argument("--no-onepixel", dest="onepixel", action="store_false",
                   help="skip the one-pixel attack")
    g = p.add_argument_group("computation (speed and memory only; results do not change)")
    g.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:1 ... (default: cpu)")
    g.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="images per model call (default: 256)")
    g.add_argument("--chunk-size", type=int, default=256, metavar="N",
                   help="cutouts read and checked together; the unit of the journal, so "
                        "--resume needs the same value (default: 256)")


def config_from_args(args):
    """A `CheckConfig` from parsed options (raises GalguardValueError for bad values)."""
    from ..check import CheckConfig

    return CheckConfig(model=str(args.model), preset=args.preset, seed=args.seed,
                       noise=args.noise, noise_realisations=args.noise_realisations,
                       depth_fraction=args.depth_fraction, onepixel=args.onepixel,
                       batch_size=args.batch_size, chunk_size=args.chunk_size)


def register(subparsers):
    """Add the ``check`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "check", help="check FITS cutouts and write a flag catalog (resumable; Dask scale-out)",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="FITS files, directories, quoted globs or @LIST files")
    p.add_argument("--input-list", action="append", default=[], metavar="LIST",
                   help="text file listing input paths, one a line (repeatable)")
    p.add_argument("--recursive", action="store_true",
                   help="descend into sub-directories of directory inputs; let ** recurse")
    p.add_argument("-o", "--output", required=True, metavar="CATALOG",
                   help="catalog to write (.fits, .parquet, .ecsv or .csv)")
    p.add_argument("--format", choices=("fits", "parquet", "ecsv", "csv"), default=None,
                   help="catalog format (default: from the suffix of CATALOG)")
    add_check_options(p)
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on this machine (1: in this process); with "
                        "--dask-local the number of Dask workers (default: 1)")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="send chunks to the workers of a running Dask cluster, e.g. "
                        "tcp://host:8786 (workers need galguard installed, not the inputs)")
    g.add_argument("--dask-local", action="store_true",
                   help="start a local Dask cluster of --workers processes (loopback only)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its journal CATALOG.partial/ (same "
                        "inputs and options required)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing catalog (and any old journal)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line (the bar is also off when stderr "
                        "is not a terminal)")
    p.set_defaults(func=run)
    return p


def run(args):
    """Run ``galguard check``; returns an exit code."""
    from ..batch import OutputExists, expand_inputs, run_batch
    from ..catalog import JournalMismatch
    from ..cli import EXIT_BAD_INPUTS, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
    from ..errors import GalguardValueError

    def usage(msg):
        print(f"galguard check: error: {msg}", file=sys.stderr)
        return EXIT_USAGE

    if not args.inputs and not args.input_list:
        return usage("give at least one INPUT (file, directory, glob or @LIST) or --input-list")
    if args.resume and args.overwrite:
        return usage("--resume and --overwrite exclude each other")
    if args.dask_scheduler and args.dask_local:
        return usage("--dask-scheduler and --dask-local exclude each other")
    if args.workers < 1:
        return usage(f"--workers must be >= 1, got {args.workers}")
    try:
        config = config_from_args(args)
        paths = expand_inputs(args.inputs, input_lists=args.input_list,
                              recursive=args.recursive)
    except GalguardValueError as exc:
        return usage(str(exc))
    progress = not args.quiet and sys.stderr.isatty()
    log.info("%d input file(s)", len(paths))
    try:
        res = run_batch(paths, args.output, config=config, model=args.model, device=args.device,
                        format=args.format, workers=args.workers,
                        dask_scheduler=args.dask_scheduler, dask_local=args.dask_local,
                        resume=args.resume, overwrite=args.overwrite, progress=progress)
    except (OutputExists, JournalMismatch) as exc:
        return usage(str(exc))
    except GalguardValueError as exc:
        return usage(str(exc))
    except KeyboardInterrupt:
        print("galguard check: interrupted; run again with --resume to continue",
              file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - reported, journal kept
        log.debug("failure", exc_info=True)
        print(f"galguard check: failed: {type(exc).__name__}: {exc} (finished chunks are kept; "
              f"run again with --resume)", file=sys.stderr)
        return EXIT_FAILURE
    if not args.quiet:
        print(f"{res.path}: {res.n_rows} cutouts, {res.n_fragile} fragile, {res.n_bad} bad "
              f"input(s); {res.seconds:.1f} s ({res.n_rows / max(res.seconds, 1e-9):.1f} "
              f"cutouts/s)" + (f", {res.n_resumed} chunk(s) resumed" if res.n_resumed else ""),
              file=sys.stderr)
    return EXIT_BAD_INPUTS if res.n_bad else EXIT_OK

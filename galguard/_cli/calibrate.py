"""``galguard calibrate``: fit a model's latent statistics and verdict thresholds on your own
reference galaxies and write the calibrated model."""

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Run the model on REFERENCE cutouts you trust (your own survey's galaxies), fit its latent
statistics (class means from --labels, or the model's own predictions, and a tied covariance)
and set the OUT_OF_DISTRIBUTION and LATENT_SHIFT thresholds to the --percentile of the reference
set. The calibrated model is written to OUT (NAME.safetensors and its NAME.json card, which
records the percentile, the galaxies used and skipped and a hash of the inputs); galguard check
uses its thresholds unless --ood-threshold or --latent-shift-threshold is given. Bad reference
files are skipped and counted.
"""


def register(subparsers):
    """Add the ``calibrate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "calibrate", help="calibrate a model's latent statistics and thresholds on your data",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 done, 1 failure, 2 usage error\n\nexample:\n  galguard calibrate "
               "--model my_cnn.safetensors reference/ -o my_cnn_calibrated.safetensors")
    p.add_argument("reference", nargs="+", metavar="REFERENCE",
                   help="FITS files, directories, quoted globs or @LIST files")
    p.add_argument("--model", default="default",
                   help="shipped model name or path to NAME.safetensors (default: default)")
    p.add_argument("--labels", default=None, metavar="CATALOG",
                   help="table (FITS, ECSV, CSV, Parquet) with a 'label' or 'true_label' column "
                        "(class indices or names), one row per reference cutout in input "
                        "order; 'header' takes each file's TRUELAB (default: the model's own "
                        "predictions)")
    p.add_argument("--percentile", type=float, default=99.0,
                   help="percentile of the reference set that sets each threshold "
                        "(default: %(default)s)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _labels(spec, model):
    import numpy as np
    from astropy.table import Table

    from ..errors import GalguardValueError

    try:
        t = Table.read(spec)
    except Exception as exc:  # noqa: BLE001 - reported as a usage error
        raise GalguardValueError(f"--labels {spec!r} cannot be read as a table: {exc}") from None
    col = next((c for c in ("label", "true_label", "LABEL", "TRUE_LABEL") if c in t.colnames),
               None)
    if col is None:
        raise GalguardValueError(f"--labels {spec!r} has no 'label' or 'true_label' column "
                                 f"(columns {t.colnames})")
    v = np.asarray(t[col])
    if v.dtype.kind in "US":
        index = {c: k for k, c in enumerate(model.classes)}
        unknown = sorted(set(str(x) for x in v) - set(index))
        if unknown:
            raise GalguardValueError(f"--labels {spec!r}: unknown class names {unknown[:5]}; "
                                     f"the model's classes are {model.classes}")
        v = np.array([index[str(x)] for x in v])
    return v.astype(np.int64)


def run(args):
    """Run ``galguard calibrate``; returns an exit code."""
    import numpy as np

    from ..batch import expand_inputs
    from ..cli import EXIT_OK
    from ..errors import GalguardValueError
    from ..io import read_cutouts
    from ..models import calibrate, load, save

    out = args.output
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    if not args.overwrite and (out.exists() or out.with_suffix(".json").exists()):
        raise GalguardValueError(f"output {str(out)!r} exists; use --overwrite to replace it")
    model = load(args.model)
    paths = expand_inputs(args.reference)
    labels = None
    if args.labels == "header":
        cut = read_cutouts(paths, size=model.input_hw, bands=model.bands)
        labels = np.asarray(cut.meta["true_label"], np.int64)
        good = (np.asarray(cut.meta["flags"]) & 1) == 0
        if (labels[good] < 0).any():
            raise GalguardValueError("--labels header: some reference cutouts have no TRUELAB")
    elif args.labels is not None:
        labels = _labels(args.labels, model)
    calibrated = calibrate(model, paths, labels=labels, percentile=args.percentile,
                           progress=not args.quiet and sys.stderr.isatty())
    card = calibrated.card
    calibrated.card = {k: v for k, v in card.items() if k not in ("sha256", "weights_file")}
    w, c = save(calibrated, out, factory=card.get("factory"),
                factory_kwargs=card.get("factory_kwargs"))
    cal = calibrated.card["calibration"]
    print(f"wrote {w} and {c}: {cal['n_reference']} reference galaxies ({cal['n_skipped']} "
          f"skipped), thresholds {calibrated.card['thresholds']}", file=sys.stderr)
    return EXIT_OK

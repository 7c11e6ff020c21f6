"""``galguard evaluate``: accuracy, per-class precision/recall/F1, confusion matrix, calibration
error and Brier score of a model on labelled data sets, with a plot."""

import json
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["register", "run", "parse_data_spec"]

log = logging.getLogger(__name__)


def register(subparsers):
    """Add the ``evaluate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on labelled cutouts (accuracy, P/R/F1, confusion, ECE, Brier)",
        description=(
            "Evaluate a model on one or more labelled data sets. Each --data is "
            "[LABEL=]SPEC where SPEC is a FITS file or directory (labels from the TRUELAB header "
            "or catalog column) or sim:seed=S,start=A,n=N,depth=y10|y1[,size=100]"
            "[,mag=BRIGHT:FAINT][,slope=B][,dm=LO:HI] for "
            "galguard.sim galaxies (mag, slope: the r-magnitude law, see galguard train "
            "--mag-range and --counts-slope; dm: made fainter, see galguard train --dm-range). Without --data, the held-out test galaxies recorded in the "
            "model card are "
            "used at Y10 and Y1. Writes OUT/evaluation.json, OUT/evaluation.ecsv and "
            "OUT/evaluation.png."),
    )
    p.add_argument("--model", default="default",
                   help="shipped model name or path to NAME.safetensors (default: default)")
    p.add_argument("--data", action="append", default=[], metavar="[LABEL=]SPEC")
    p.add_argument("--labels", default=None, metavar="CATALOG",
                   help="label catalog for the path --data (FITS, CSV, ECSV or Parquet; key "
                        "column id/objid or file/source/filename [+ row], label column of "
                        "class names, or integers in the model's class order); cutouts not in "
                        "it are reported and left out. Default: TRUELAB keywords")
    p.add_argument("--mask-bits", default=None, metavar="BITS",
                   help="bits of mask planes that mark bad pixels (see galguard check)")
    p.add_argument("--out", type=Path, default=Path("galguard_out/evaluation"),
                   help="output directory (default galguard_out/evaluation)")
    p.add_argument("--bins", type=int, default=15, help="calibration bins (default 15)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache for simulated data (see galguard train)")
    p.add_argument("--sim-jobs", type=int, default=1)
    p.set_defaults(func=run)
    return p


def parse_data_spec(spec):
    """``"[LABEL=]SPEC"`` -> (label, kind, value) with kind "sim" (value a dict) or "path"."""
    from ..errors import GalguardValueError

    label = None
    if "=" in spec.split(":", 1)[0]:
        label, spec = spec.split("=", 1)
    if spec.startswith("sim:"):
        fields = {}
        for item in filter(None, spec[4:].split(",")):
            if "=" not in item:
                raise GalguardValueError(f"data spec {spec!r}: expected key=value, got {item!r}")
            k, v = item.split("=", 1)
            fields[k.strip()] = v.strip()
        unknown = set(fields) - {"seed", "start", "n", "depth", "size", "dm", "mag", "slope"}
        missing = {"seed", "start", "n", "depth"} - set(fields)
        if unknown or missing:
            raise GalguardValueError(
                f"data spec {spec!r}: sim needs seed, start, n, depth (optional size); "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}")
        try:
            val = {"seed": int(fields["seed"]), "start": int(fields["start"]),
                   "n": int(fields["n"]), "depth": fields["depth"].lower(),
                   "size": int(fields.get("size", 100))}
            if "dm" in fields:
                lo, _, hi = fields["dm"].partition(":")
                val["dm_range"] = [float(lo), float(hi or lo)]
            if "mag" in fields:
                lo, _, hi = fields["mag"].partition(":")
                val["mag_range"] = [float(lo), float(hi)]
            if "slope" in fields:
                val["counts_slope"] = float(fields["slope"])
        except ValueError as exc:
            raise GalguardValueError(f"data spec {spec!r}: {exc}") from None
        return label or val["depth"], "sim", val
    return label or Path(spec).name, "path", Path(spec)


def _load(kind, value, args):
    import numpy as np

    from ..errors import GalguardValueError
    from ..training import load_sim_split

    if kind == "sim":
        return load_sim_split(seed=value["seed"], start=value["start"], n=value["n"],
                              depth=value["depth"], size=value["size"],
                              cache_dir=args.cache_dir, n_jobs=args.sim_jobs,
                              dm_range=value.get("dm_range"), mag_range=value.get("mag_range"),
                              counts_slope=value.get("counts_slope", 0.0))
    from ..io import read_cutouts

    if args.labels:
        from ..training.files import ingest

        d = ingest([str(value)], args._data_dir, f"data{len(os.listdir(args._data_dir))}",
                   labels=args._catalog, bands=tuple(args._model.bands) or None,
                   size=tuple(args._model.input_hw), mask_bits=args.mask_bits)
        if d.report["bad"] or d.report["unmatched"]:
            log.warning("%s: %d bad and %d unlabelled cutouts left out", value, d.report["bad"],
                        d.report["unmatched"])
        return d.images, d.labels
    cut = read_cutouts(value, mask_bits=args.mask_bits)
    labels = np.asarray(cut.meta["true_label"]) if "true_label" in cut.meta.colnames else None
    if labels is None or (labels < 0).any():
        raise GalguardValueError(f"data {str(value)!r} lacks true labels (TRUELAB) for some "
                                 f"cutouts; evaluate needs labelled data")
    good = np.asarray(cut.meta["error"]) == ""
    if not good.all():
        log.warning("%s: %d bad cutouts left out", value, int((~good).sum()))
    return cut.data[good], labels[good]


def run(args):
    """Run ``galguard evaluate``; returns an exit code."""
    from ..models import load

    model = load(args.model)
    specs = [parse_data_spec(s) for s in args.data]
    args._model = model
    if args.labels:
        from ..training.files import read_labels

        cat = read_labels(args.labels, classes=model.classes)
        args._catalog = cat
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.TemporaryDirectory(dir=args.out, prefix=".evaluate-data-")
        args._data_dir = tmp.name
        try:
            return _run(args, model, specs)
        finally:
            tmp.cleanup()
    return _run(args, model, specs)


def _run(args, model, specs):
    from astropy.table import Table

    from ..cli import EXIT_OK
    from ..errors import GalguardValueError
    from ..training import evaluate, plot_evaluation

    if not specs:
        test = (model.card.get("training_data") or {}).get("test")
        seed = (model.card.get("training_data") or {}).get("seed")
        if not test:
            raise GalguardValueError("no --data given and the model card records no test set")
        td = model.card.get("training_data") or {}
        law = {k: td[k] for k in ("dm_range", "mag_range", "counts_slope") if td.get(k)}
        specs = [(d.upper(), "sim", {"seed": seed, "start": test["start"], "n": test["n"],
                                     "depth": d, "size": model.input_size, **law})
                 for d in test["depths"]]
    data = {label: _load(kind, value, args) for label, kind, value in specs}
    results = evaluate(model, data, batch_size=args.batch_size, n_bins=args.bins)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"model": model.name, "sha256": model.sha256,
           "data": {label: (str(v) if kind == "path" else v) for label, kind, v in specs},
           "results": results}
    (args.out / "evaluation.json").write_text(json.dumps(doc, indent=1) + "\n")
    rows = []
    for label, r in results.items():
        row = {"dataset": label, "n": r["n"], "accuracy": r["accuracy"], "ece": r["ece"],
               "brier": r["brier"]}
        for c, pc in r["per_class"].items():
            for k in ("precision", "recall", "f1"):
                row[f"{k}_{c}"] = pc[k]
        rows.append(row)
    t = Table(rows=rows)
    t.meta.update({"model": model.name, "sha256": model.sha256, "ece_bins": args.bins})
    t.write(args.out / "evaluation.ecsv", overwrite=True)
    plot_evaluation(results, args.out / "evaluation.png", title=f"{model.name}")
    for r in rows:
        print(f"{r['dataset']}: N={r['n']} accuracy {r['accuracy']:.4f} ECE {r['ece']:.4f} "
              f"Brier {r['brier']:.4f}")
    print(f"wrote {args.out / 'evaluation.json'}, evaluation.ecsv, evaluation.png")
    return EXIT_OK

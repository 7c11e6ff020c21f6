"""``galguard train``: train a morphology model on simulated (or FITS) data, with optional
domain adaptation, and write it as ``NAME.safetensors`` + ``NAME.json`` (the model card)."""

import json
import shlex
import logging
import time
from pathlib import Path

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers):
    """Add the ``train`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "train",
        help="train a morphology model (source labelled, target unlabelled; DA none/mmd/sinkhorn)",
        description=(
            "Train a ConvNet or ResNet18 on labelled source-domain cutouts (default: galguard.sim "
            "galaxies at Y10 depth) with optional domain adaptation to unlabelled target-domain "
            "cutouts (default: other galguard.sim galaxies at Y1 depth). Writes OUT/NAME.safetensors "
            "and OUT/NAME.json; the card records this exact command, the data and the metrics on "
            "held-out test galaxies at both depths."),
    )
    p.add_argument("--name", required=True, help="model name (file stem)")
    p.add_argument("--out", type=Path, default=Path("galguard_out/models"),
                   help="output directory (default galguard_out/models)")
    p.add_argument("--arch", choices=["convnet", "resnet18"], default="convnet")
    p.add_argument("--width", type=int, default=None,
                   help="ResNet18's first-stage channels (default 64; the stages have 1, 2, 4 "
                        "and 8 times this)")
    p.add_argument("--da", choices=["none", "mmd", "sinkhorn"], default="none",
                   help="domain adaptation (default none)")
    g = p.add_argument_group("simulated data (galguard.sim; galaxy indices are disjoint ranges)")
    g.add_argument("--sim-seed", type=int, default=0)
    g.add_argument("--size", type=int, default=100, help="stamp size (default 100)")
    g.add_argument("--source-start", type=int, default=0)
    g.add_argument("--n-source", type=int, default=4000, help="labelled Y10 galaxies")
    g.add_argument("--target-start", type=int, default=4000)
    g.add_argument("--n-target", type=int, default=4000, help="unlabelled Y1 galaxies")
    g.add_argument("--val-start", type=int, default=8000)
    g.add_argument("--n-val", type=int, default=1000, help="labelled Y10 validation galaxies")
    g.add_argument("--test-start", type=int, default=9000)
    g.add_argument("--n-test", type=int, default=2000,
                   help="held-out galaxies evaluated at Y10 and Y1 after training (0: skip)")
    g.add_argument("--dm-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="make each galaxy fainter by a uniform random LO..HI magnitudes, observed "
                        "exactly from its Y10 photons (galguard.training.dim_and_observe)")
    g.add_argument("--mag-range", type=float, nargs=2, default=None, metavar=("BRIGHT", "FAINT"),
                   help="r-magnitude range of the simulated galaxies (default: galguard.sim's "
                        "18.5 22.5)")
    g.add_argument("--counts-slope", type=float, default=0.0,
                   help="draw r magnitudes from number counts dN/dm ~ 10^(SLOPE m) within "
                        "--mag-range (default 0: uniform)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="keep simulated arrays here as .npz (keyed by seed, start, n, size, "
                        "magnitude law and the simulator's code)")
    g.add_argument("--sim-jobs", type=int, default=1, help="simulator worker processes")
    g = p.add_argument_group(
        "your own data (FITS cutouts and a label catalog, instead of simulated galaxies)",
        "Every input form of galguard check (files, directories, globs, @LIST). The catalog "
        "(FITS, CSV, ECSV or Parquet) has a key column (id/objid matching the cutouts' OBJID, "
        "or file/source/filename matching the file name, plus row for stacks) and a label "
        "column of class names (integers with --classes). Cutouts not in the catalog or "
        "unreadable are reported and left out. Data are streamed in chunks to memory-mapped "
        "arrays (bounded memory).")
    g.add_argument("--source", nargs="+", metavar="PATH", default=None,
                   help="labelled training cutouts")
    g.add_argument("--labels", metavar="CATALOG", default=None,
                   help="label catalog of --source (and of --validation by default)")
    g.add_argument("--target", nargs="+", metavar="PATH", default=None,
                   help="unlabelled target-domain cutouts (for --da mmd/sinkhorn)")
    g.add_argument("--validation", nargs="+", metavar="PATH", default=None,
                   help="labelled validation cutouts (default: a seeded 10%% of --source)")
    g.add_argument("--validation-labels", metavar="CATALOG", default=None,
                   help="label catalog of --validation (default: --labels)")
    g.add_argument("--classes", default=None, metavar="NAMES",
                   help="class names in model order, comma-separated (default: the catalog's "
                        "names, sorted; needed for integer labels)")
    g.add_argument("--mask-bits", default=None, metavar="BITS",
                   help="bits of mask planes that mark bad pixels (see galguard check)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="keep the memory-mapped arrays here (default: a temporary directory "
                        "in --out, removed afterwards)")
    g.add_argument("--read-chunk", type=int, default=256, metavar="N",
                   help="cutouts read at a time (default 256)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--patience", type=int, default=6)
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help="CE-only epochs before the domain loss (default 0; 3 for sinkhorn)")
    g.add_argument("--mmd-weight", type=float, default=0.01)
    g.add_argument("--init-loss-weights", choices=["data", "ones"], default="data",
                   help="start of SIDDA's learned loss weights (default data: sqrt of the first "
                        "adapted batch's losses; ones: SIDDA's e1 = e2 = 1)")
    g.add_argument("--loss-weight-lr", type=float, default=None,
                   help="learning rate of SIDDA's learned loss weights (default 10 x --lr)")
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--threads", type=int, default=None, help="torch threads")
    g.add_argument("--checkpoint-dir", type=Path, default=None)
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    g.add_argument("--set-default", action="store_true",
                   help="also record NAME as the default model in OUT/index.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    _OPTIONS[:] = [(a.option_strings[-1], a.dest, a.nargs == 0) for a in p._actions
                   if a.option_strings and a.dest not in ("help", "no_progress")]
    return p


_OPTIONS = []


def command_line(args):
    """The complete ``galguard train`` command (every option spelled out) for ``args``."""
    
    words = ["galguard", "train"]
    for opt, dest, is_flag in _OPTIONS:
        v = getattr(args, dest, None)
        if is_flag:
            if v:
                words.append(opt)
        elif isinstance(v, (list, tuple)):
            words += [opt, *map(str, v)]
        elif v is not None:
            words += [opt, str(v)]
    return shlex.join(words)


def _split(args, start, n, depth):
    from ..training import load_sim_split

    return load_sim_split(seed=args.sim_seed, start=start, n=n, depth=depth, size=args.size,
                          cache_dir=args.cache_dir, n_jobs=args.sim_jobs,
                          progress=not args.no_progress, dm_range=args.dm_range,
                          mag_range=args.mag_range, counts_slope=args.counts_slope)


def run(args):
    """Run ``galguard train``; returns an exit code."""
    import galsim
    import numpy as np

    from .. import __version__
    from ..cli import EXIT_OK
    from ..errors import GalguardValueError
    from ..models import save
    from ..training import TrainConfig, evaluate, train

    command = command_line(args)
    # every setting is checked before any galaxy is simulated
    config = TrainConfig(architecture=args.arch, width=args.width, da=args.da, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         patience=args.patience, warmup_epochs=args.warmup_epochs,
                         mmd_weight=args.mmd_weight, seed=args.seed,
                         loss_weight_lr=args.loss_weight_lr,
                         init_loss_weights=args.init_loss_weights)
    if args.source is not None or args.labels or args.target or args.validation:
        return _run_files(args, config, command)
    ranges = {"source": (args.source_start, args.n_source),
              "target": (args.target_start, args.n_target),
              "validation": (args.val_start, args.n_val),
              "test": (args.test_start, args.n_test)}
    spans = sorted((a, a + n, k) for k, (a, n) in ranges.items() if n > 0
                   and not (k == "target" and args.da == "none"))
    for (a0, a1, k0), (b0, b1, k1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise GalguardValueError(f"galaxy ranges of {k0} [{a0}, {a1}) and {k1} "
                                     f"[{b0}, {b1}) overlap; use disjoint --*-start values")
    t0 = time.time()
    xs, ys = _split(args, args.source_start, args.n_source, "y10")
    xv, yv = _split(args, args.val_start, args.n_val, "y10")
    xt = None
    if args.da != "none":
        xt, _ = _split(args, args.target_start, args.n_target, "y1")
    t_data = time.time() - t0
    data_card = {
        "simulator": "galguard.sim.simulate", "galguard": __version__,
        "galsim": galsim.__version__, "seed": args.sim_seed, "size": args.size,
        "class_fractions": "balanced",
        "mag_range": args.mag_range, "counts_slope": args.counts_slope,
        "dm_range": args.dm_range,
        "dimming": ("each galaxy made fainter by dm ~ U(dm_range) magnitudes and observed at "
                    "its depth from its Y10 photons (binomial thinning + Poisson sky), "
                    "galguard.training.dim_and_observe" if args.dm_range else None),
        "source": {"depth": "y10", "start": args.source_start, "n": args.n_source,
                   "labelled": True,
                   "class_counts": np.bincount(ys, minlength=3).tolist()},
        "target": ({"depth": "y1", "start": args.target_start, "n": args.n_target,
                    "labelled": False, "labels_used": False}
                   if args.da != "none" else None),
        "validation": {"depth": "y10", "start": args.val_start, "n": args.n_val},
        "test": ({"depths": ["y10", "y1"], "start": args.test_start, "n": args.n_test}
                 if args.n_test else None),
        "note": "source, target, validation and test are disjoint galaxy index ranges",
    }
    model = train(
        xs, ys, target=xt, validation=xv, validation_labels=yv, config=config,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        progress=not args.no_progress, num_threads=args.threads, name=args.name,
        card={"name": args.name, "command": command, "training_data": data_card})
    del xs, xt
    metrics = {}
    if args.n_test:
        data = {d: _split(args, args.test_start, args.n_test, d) for d in ("y10", "y1")}
        full = evaluate(model, data)
        metrics = {d: {k: v for k, v in m.items() if k != "reliability"}
                   for d, m in full.items()}
        metrics["evaluated_on"] = (f"held-out galguard.sim galaxies {args.test_start}.."
                                   f"{args.test_start + args.n_test - 1} (seed "
                                   f"{args.sim_seed}) at Y10 and Y1")
        print(f"{args.name}: test accuracy Y10 {metrics['y10']['accuracy']:.4f} "
              f"Y1 {metrics['y1']['accuracy']:.4f} | ECE Y10 {metrics['y10']['ece']:.4f} "
              f"Y1 {metrics['y1']['ece']:.4f} | Brier Y10 {metrics['y10']['brier']:.4f} "
              f"Y1 {metrics['y1']['brier']:.4f}")
    model.card["metrics"] = metrics
    model.card["training"]["data_seconds"] = round(t_data, 1)
    model.card["optimizer_note"] = (
        "AdamW (lr {lr}, weight decay {wd}) instead of the paper's Adam lr 1e-5, "
        "betas (0.7, 0.8): lr 1e-5 does not converge within a CPU budget of minutes".format(
            lr=args.lr, wd=args.weight_decay))
    w, c = save(model, args.out / f"{args.name}.safetensors")
    if args.set_default:
        idx_path = args.out / "index.json"
        idx = json.loads(idx_path.read_text()) if idx_path.exists() else {}
        idx["default"] = args.name
        idx_path.write_text(json.dumps(idx, indent=2) + "\n")
    print(f"wrote {w} and {c} (sha256 {model.sha256[:16]}...)")
    return EXIT_OK


def _run_files(args, config, command):
    """``galguard train --source ... --labels ...``: the survey's own FITS cutouts."""
    import dataclasses
    import tempfile

    from ..cli import EXIT_OK
    from ..errors import GalguardValueError
    from ..io._planes import validate_mask_bits
    from ..models import save
    from ..training import evaluate, train
    from ..training.files import ingest, read_labels

    if not args.source or not args.labels:
        raise GalguardValueError("training on your own data needs --source PATH... and "
                                 "--labels CATALOG")
    if args.da != "none" and not args.target:
        raise GalguardValueError(f"--da {args.da} needs --target PATH... (unlabelled "
                                 f"target-domain cutouts)")
    if args.read_chunk < 1:
        raise GalguardValueError(f"--read-chunk must be >= 1, got {args.read_chunk}")
    validate_mask_bits(args.mask_bits)
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")
                                                   if c.strip()]
    labels = read_labels(args.labels, classes=classes)
    val_labels = labels if not args.validation_labels else \
        read_labels(args.validation_labels, classes=labels.classes)
    args.out.mkdir(parents=True, exist_ok=True)
    keep = args.data_dir is not None
    tmp = None if keep else tempfile.TemporaryDirectory(dir=args.out, prefix=".train-data-")
    ddir = Path(args.data_dir if keep else tmp.name)
    try:
        read = dict(chunk_size=args.read_chunk, progress=not args.no_progress,
                    mask_bits=args.mask_bits)
        t0 = time.time()
        if args.validation:
            src = ingest(args.source, ddir, "source", labels=labels, **read)
            val = ingest(args.validation, ddir, "validation", labels=val_labels,
                         bands=src.bands, size=src.size, **read)
        else:
            src, val = ingest(args.source, ddir, "source", labels=labels, split=0.1,
                              seed=config.seed, **read)
        tgt = None
        if args.da != "none":
            tgt = ingest(args.target, ddir, "target", bands=src.bands, size=src.size, **read)
        t_data = time.time() - t0
        config = dataclasses.replace(config, classes=tuple(labels.classes),
                                     bands=tuple(b or f"plane{k}" for k, b in enumerate(src.bands)))
        data_card = {"route": "files", "bands": list(src.bands), "size": list(src.size),
                     "classes": list(labels.classes), "source": src.report,
                     "validation": val.report,
                     "target": None if tgt is None else {**tgt.report, "labels_used": False}}
        for what, d in (("source", src), ("validation", val)):
            counts = ", ".join(f"{c} {n}" for c, n in d.report["class_counts"].items())
            print(f"{what}: {d.report['n']} cutouts ({counts})"
                  + (f"; {d.report['bad']} bad, {d.report['unmatched']} not in the catalog "
                     "left out" if d.report.get("bad") or d.report.get("unmatched") else ""))
        model = train(src.images, src.labels, target=None if tgt is None else tgt.images,
                      validation=val.images, validation_labels=val.labels, config=config,
                      checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                      progress=not args.no_progress, num_threads=args.threads, name=args.name,
                      card={"name": args.name, "command": command, "training_data": data_card})
        full = evaluate(model, {"validation": (val.images, val.labels)})
        metrics = {k: {kk: vv for kk, vv in m.items() if kk != "reliability"}
                   for k, m in full.items()}
        metrics["evaluated_on"] = "the validation cutouts (files)"
        print(f"{args.name}: validation accuracy {metrics['validation']['accuracy']:.4f} | ECE "
              f"{metrics['validation']['ece']:.4f} | Brier {metrics['validation']['brier']:.4f}")
        model.card["metrics"] = metrics
        model.card["training"]["data_seconds"] = round(t_data, 1)
        del src, val, tgt
    finally:
        if tmp is not None:
            tmp.cleanup()
    w, c = save(model, args.out / f"{args.name}.safetensors")
    print(f"wrote {w} and {c} (sha256 {model.sha256[:16]}...)")
    return EXIT_OK

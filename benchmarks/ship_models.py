"""Copy trained models into the package's shipped weights (a maintainer's command).

Each ``SRC/NAME.safetensors`` (with its card) is loaded, its card gets the ``--note`` (as
``architecture_note``) and it is saved as ``galguard/models/weights/NAME.safetensors`` (the
network weights and the rest of the card unchanged; the card's ``command`` still reproduces
the training). Then fit the out-of-distribution references with
``python benchmarks/ship_ood_reference.py --models NAME,...``.

Usage: ``python benchmarks/ship_models.py --src scratch/r18/weights --note "..." NAME [NAME ...]``
"""

import argparse
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--src", required=True)
    ap.add_argument("--note", default=None)
    args = ap.parse_args()

    from galguard.models import load, save
    from galguard.models.store import weights_dir

    for name in args.names:
        model = load(Path(args.src) / f"{name}.safetensors")
        card = dict(model.card)
        if args.note:
            card["architecture_note"] = args.note
        out = Path(weights_dir()) / f"{name}.safetensors"
        save(model, out, card=card)
        print(f"shipped {name} -> {out}")


if __name__ == "__main__":
    main()

"""Delta inference side by side with full evaluation and torchattacks, for several networks.

For each network of ``--models`` (``convnet``: the shipped default ConvNet; ``resnet18``: a
shipped or saved ResNet18, ``--resnet``; ``user``: `user_cnn.SurveyCNN`, a CNN galguard has never
seen, through `galguard.models.wrap`), on the first ``--n`` galaxies of the shipped Y10 sample,
the attack on the predicted class at an equal budget (population ``--popsize``, ``--steps``
generations), all in one process:

* torchattacks' ``OnePixel`` (on a wrapper mapping u in [0, 1] to the same per-band raw range);
* galguard with full evaluation (``incremental=False``) and with delta inference;
* pure model inference of the same number of candidates in batches of the attack's chunk;
* multiply-adds of a whole image and of a one-pixel candidate (the limit of the speed-up over
  pure inference), and the cached clean activations per image.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_delta.py --models convnet,resnet18,user --n 6 \
        --popsize 200 --steps 5 --out scratch/bench_delta.json
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_attack import (predict, run_galguard, run_torchattacks,  # noqa: E402
                          time_pure_inference)

from galguard import models  # noqa: E402
from galguard.io import read_cutouts  # noqa: E402
from galguard.robustness import OnePixelAttack  # noqa: E402
from galguard.robustness._incremental import IncrementalEvaluator  # noqa: E402
from galguard.sim import sample_path  # noqa: E402

log = logging.getLogger("bench_delta")


def load(name, args):
    if name == "convnet":
        return models.load("default")
    if name == "resnet18":
        return models.load(args.resnet)
    if name == "user":
        import user_cnn
        return models.wrap(user_cnn.build(width=args.user_width), classes=("spiral", "elliptical",
                                                                            "merger"),
                           bands="gri", input_size=100, name="survey-cnn")
    raise SystemExit(f"unknown model {name!r}")


def bench(name, model, x, args):
    model.eval()
    labels = predict(model, x).argmax(1)
    lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
    out = dict(model=name, galaxies=len(x), popsize=args.popsize, steps=args.steps)
    with torch.inference_mode():
        inc = IncrementalEvaluator.build(model, x)
    if inc is None:
        out["delta_inference"] = False
    else:
        full, delta = inc.macs()
        out.update(delta_inference=True, macs_full=full, macs_candidate=delta,
                   mac_ratio=full / delta, cache_bytes_per_image=inc.bytes_per_image,
                   windowed_nodes=inc.windowed, windows=inc.describe())
    for key, incremental in (("galguard_delta", True), ("galguard_full", False)):
        out[key] = run_galguard(model, x, labels, lo, hi, args, incremental=incremental)
        log.info("%s %s: %s", name, key, out[key])
    chunk = OnePixelAttack(model)._chunk(*x.shape[1:])
    # pure inference of the same number of candidates, batches of the attack's chunk
    evals = out["galguard_full"]["evaluations"]
    t_pure = time_pure_inference(model, x, evals, chunk)
    out["pure_inference"] = dict(chunk=chunk, seconds=t_pure, evals_per_s=evals / t_pure)
    out["torchattacks"] = run_torchattacks(model, x, labels, lo, hi, args)
    log.info("%s torchattacks: %s", name, out["torchattacks"])
    t_ta = out["torchattacks"]["seconds"]
    for key in ("galguard_delta", "galguard_full"):
        out[f"speed_vs_torchattacks_{key}"] = t_ta / out[key]["seconds"]
        out[f"evals_per_s_vs_pure_{key}"] = (out[key]["evals_per_s"]
                                             / out["pure_inference"]["evals_per_s"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="convnet,resnet18,user")
    p.add_argument("--resnet", default="resnet18_none",
                   help="a shipped ResNet18 name or a saved .safetensors path")
    p.add_argument("--user-width", type=int, default=8)
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--popsize", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--inf-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(read_cutouts(sample_path("y10")).data[:args.n]).float()
    res = dict(machine=dict(threads=args.threads, torch=torch.__version__), results=[])
    for name in args.models.split(","):
        res["results"].append(bench(name, load(name, args), x, args))
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    for r in res["results"]:
        print(f"{r['model']}: delta {r['galguard_delta']['seconds']:.2f} s, full "
              f"{r['galguard_full']['seconds']:.2f} s, torchattacks {r['torchattacks']['seconds']:.2f} s"
              f" -> {r['speed_vs_torchattacks_galguard_delta']:.1f}x torchattacks; evals/s "
              f"{r['evals_per_s_vs_pure_galguard_delta']:.1f}x pure inference (MAC ratio "
              f"{r.get('mac_ratio', float('nan')):.1f}); flips "
              f"{r['galguard_delta']['success']}/{r['torchattacks']['success']}")


if __name__ == "__main__":
    main()

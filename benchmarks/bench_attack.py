"""Benchmark the batched one-pixel attack side by side with its alternatives, in one run.

Sections (``--sections``, comma-separated):

equal
    galguard's OnePixelAttack vs torchattacks' OnePixel on the same model and galaxies with an
    equal budget (population ``--popsize``, ``--steps`` generations). torchattacks needs inputs
    in [0, 1], so it attacks a wrapper that maps u in [0, 1] to raw flux per band,
    ``raw = lo_b + u (hi_b - lo_b)`` (lo, hi: the band's min and max over the galaxies), which
    counts its model evaluations; galguard attacks the model itself with value bounds
    (lo_b, hi_b), the same search space, with incremental and with full evaluation.
throughput
    Model evaluations per second at the paper preset (population 400): galguard (all galaxies
    batched, ``--gens`` generations, no early stop; full and incremental evaluation),
    torchattacks (from ``equal``) and the reference study's one-candidate-at-a-time loop
    (``reference_loop.py``, one galaxy, one generation); and the overhead: galguard attack time
    / pure model-inference time for the same number of evaluations in batches of the attack's
    chunk size.
recall
    Flips found by the ``fast`` and ``default`` presets vs ``paper`` on the same galaxies
    (cutout bounds, the attack on the model's predicted class), and their evaluations.
latent (run on its own: ``--sections latent``)
    The paper's latent finding on fresh galguard.sim galaxies: for each model of
    ``--latent-models``, the Euclidean latent distance between each Y10 galaxy and its
    successful one-pixel version (and its Y1 version), raw and divided by the model's
    class-centroid separation.

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_attack.py --model default --n 6 --threads 1 \
        --out scratch/bench_attack.json
"""

import argparse
import json
import logging
import time
import warnings

import numpy as np
import torch

from galguard.io import read_cutouts
from galguard.robustness import OnePixelAttack
from galguard.sim import sample_path

log = logging.getLogger("bench_attack")


class Counting(torch.nn.Module):
    """Counts model evaluations (images) and returns logits only."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.count = 0

    def forward(self, x):
        self.count += x.shape[0]
        out = self.model(x)
        return out[1] if isinstance(out, (tuple, list)) else out


class UnitScaled(Counting):
    """Takes u in [0, 1] per band and feeds raw = lo + u (hi - lo) to the model."""

    def __init__(self, model, lo, hi):
        super().__init__(model)
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("span", torch.as_tensor(hi - lo, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, u):
        return super().forward(self.lo + u * self.span)


def load_model(name):
    from galguard import models
    if name == "untrained":
        from galguard.models.classifier import GalaxyClassifier, Preprocess
        from galguard.models.networks import ConvNet
        torch.manual_seed(0)
        data = read_cutouts(sample_path("y10")).data
        return GalaxyClassifier(ConvNet(), Preprocess.from_data(data),
                                classes=("spiral", "elliptical", "merger"), bands="gri",
                                input_size=100, name="untrained-convnet")
    return models.load(name)


def predict(model, x):
    with torch.inference_mode():
        out = model(x)
        logits = out[1] if isinstance(out, (tuple, list)) else out
        return torch.softmax(logits, dim=1)


def run_galguard(model, x, labels, lo, hi, args, *, incremental):
    """galguard's attack at the equal budget, values in the per-band range [lo, hi]."""
    atk = OnePixelAttack(model, popsize=args.popsize, max_iter=args.steps, F=0.5,
                         bounds=(lo.numpy(), hi.numpy()), seed=0, incremental=incremental)
    t0 = time.perf_counter()
    r = atk(x, labels)
    dt = time.perf_counter() - t0
    ev = int(r.queries.sum())
    return dict(success=int(r.success.sum()), seconds=dt, evaluations=ev, evals_per_s=ev / dt)


def run_torchattacks(model, x, labels, lo, hi, args):
    """torchattacks' OnePixel at the equal budget on a wrapper mapping u in [0, 1] to
    [lo, hi] per band (it needs [0, 1] inputs); its evaluations are counted."""
    import torchattacks

    u = (x - lo.view(1, -1, 1, 1)) / (hi - lo).view(1, -1, 1, 1)
    wrapped = UnitScaled(model, lo, hi).eval()
    assert torch.equal(predict(wrapped, u).argmax(1), labels)
    wrapped.count = 0
    ta = torchattacks.OnePixel(wrapped, pixels=1, steps=args.steps, popsize=args.popsize,
                               inf_batch=args.inf_batch)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = ta(u, labels)
    dt = time.perf_counter() - t0
    evals = wrapped.count
    return dict(success=int((predict(wrapped, adv).argmax(1) != labels).sum()), seconds=dt,
                evaluations=evals, evals_per_s=evals / dt)


def section_equal(model, x, labels, args, res):
    lo = x.amin(dim=(0, 2, 3))
    hi = x.amax(dim=(0, 2, 3))
    out = dict(galaxies=len(x), popsize=args.popsize, steps=args.steps)
    # galguard on the model itself, values searched in the same per-band [lo, hi] range that
    # u in [0, 1] spans for torchattacks; incremental and full evaluation.
    for name, incremental in (("galguard_incremental", True), ("galguard_full", False)):
        if name == "galguard_full" and args.skip_full:
            continue
        out[name] = run_galguard(model, x, labels, lo, hi, args, incremental=incremental)
        log.info("equal %s: %s", name, out[name])
    out["torchattacks"] = run_torchattacks(model, x, labels, lo, hi, args)
    log.info("equal torchattacks: %s", out["torchattacks"])
    t_ta = out["torchattacks"]["seconds"]
    for name in ("galguard_incremental", "galguard_full"):
        if name in out:
            out[f"speed_ratio_time_{name}"] = t_ta / out[name]["seconds"]
    res["equal"] = out


def time_pure_inference(model, x, evals, chunk):
    """Seconds for `evals` whole-image evaluations of `model` in batches of `chunk`."""
    batch = x[:1].expand(chunk, -1, -1, -1).contiguous()
    t0 = time.perf_counter()
    with torch.inference_mode():
        left = evals
        while left > 0:
            model(batch[:min(chunk, left)])
            left -= chunk
    return time.perf_counter() - t0


def section_throughput(model, x, labels, args, res):
    from reference_loop import reference_attack

    out = dict(galaxies=len(x), generations=args.gens)
    # Full evaluation path: candidates written with the core's kernel and run through the
    # whole model (counted by the wrapper).
    counting = Counting(model).eval()
    atk = OnePixelAttack.from_preset("paper", counting, max_iter=args.gens, early_stop=False,
                                     seed=0, incremental=False)
    t0 = time.perf_counter()
    atk(x, labels)
    t_gg = time.perf_counter() - t0
    evals = counting.count
    chunk = atk._chunk(*x.shape[1:])
    out["chunk"] = chunk
    out["galguard_full"] = dict(seconds=t_gg, evaluations=evals, evals_per_s=evals / t_gg)
    # Pure inference: the same number of evaluations in batches of the attack's chunk size.
    t_pure = time_pure_inference(model, x, evals, chunk)
    out["pure_inference"] = dict(seconds=t_pure, evals_per_s=evals / t_pure)
    out["overhead_full"] = t_gg / t_pure
    # Incremental path on the model itself.
    atk = OnePixelAttack.from_preset("paper", model, max_iter=args.gens, early_stop=False, seed=0)
    t0 = time.perf_counter()
    r = atk(x, labels)
    t_inc = time.perf_counter() - t0
    ev = int(r.queries.sum())
    out["galguard_incremental"] = dict(seconds=t_inc, evaluations=ev, evals_per_s=ev / t_inc)
    out["overhead_incremental"] = t_inc / (t_pure * ev / evals)

    # The reference loop on one galaxy, one generation (popsize 400: 400 + 400 + 2 evals).
    with torch.inference_mode():
        norm = model.preprocess(x[:1])[0]
    t0 = time.perf_counter()
    ref = reference_attack(model.network, norm, int(labels[0]), popsize=400, iterations=1,
                           seed=0)
    t_ref = time.perf_counter() - t0
    out["reference_loop"] = dict(seconds=t_ref, evaluations=ref["evaluations"],
                                 evals_per_s=ref["evaluations"] / t_ref)
    for name in ("galguard_full", "galguard_incremental"):
        out[f"speedup_{name}_vs_reference_loop"] = (out[name]["evals_per_s"]
                                                    / out["reference_loop"]["evals_per_s"])
        if "equal" in res:
            out[f"speedup_{name}_vs_torchattacks"] = (
                out[name]["evals_per_s"] / res["equal"]["torchattacks"]["evals_per_s"])
    res["throughput"] = out
    log.info("throughput: %s", out)


def section_recall(model, x, labels, args, res):
    out = {}
    for preset in args.presets.split(","):
        name, _, init = preset.partition(":")       # "default:random": another initialisation
        atk = OnePixelAttack.from_preset(name, model, seed=0, **({"init": init} if init else {}))
        t0 = time.perf_counter()
        r = atk(x, labels)
        dt = time.perf_counter() - t0
        out[preset] = dict(success=r.success.tolist(), queries=int(r.queries.sum()),
                           seconds=dt, x=r.x.tolist(), y=r.y.tolist())
        log.info("recall %s: %d/%d flips, %d queries, %.1f s", preset, int(r.success.sum()),
                 len(x), int(r.queries.sum()), dt)
    if "paper" in out:
        paper = np.array(out["paper"]["success"])
        for preset, o in out.items():
            s = np.array(o["success"])
            o["recall_vs_paper"] = (float((s & paper).sum() / paper.sum()) if paper.sum()
                                    else float("nan"))
            o["cost_vs_paper"] = o["queries"] / out["paper"]["queries"]
        known = np.any([np.array(o["success"]) for o in out.values()], axis=0)
        for preset, o in out.items():
            o["recall_vs_all"] = float(np.array(o["success"])[known].mean()) if known.any() \
                else float("nan")
            log.info("recall %s: %.2f of paper's flips, %.2f of all %d found, %.4f of paper's "
                     "evaluations", preset, o["recall_vs_paper"], o["recall_vs_all"],
                     int(known.sum()), o["cost_vs_paper"])
    res["recall"] = dict(galaxies=len(x), presets=out)


def _pct(values, q=(5, 50, 95, 99)):
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    return [round(float(x), 3) for x in torch.quantile(v, torch.tensor(q, dtype=v.dtype) / 100)]


def section_latent(args, res):
    """The paper's latent finding on galguard.sim: latent shift of successful one-pixel attacks
    (and of the Y10 -> Y1 change) for each model in ``--latent-models``."""
    from galguard import models
    from galguard.robustness.latent import ood_score
    from galguard.sim import simulate

    sims = simulate(args.latent_n, seed=args.sim_seed, start=args.sim_start,
                    depths=("y10", "y1"))
    x10 = torch.from_numpy(sims["y10"].images)
    x1 = torch.from_numpy(sims["y1"].images)
    truth = torch.from_numpy(sims["y10"].labels)
    out = dict(galaxies=args.latent_n, sim_seed=args.sim_seed, sim_start=args.sim_start,
               preset=args.latent_preset, models={})
    for name in args.latent_models.split(","):
        model = models.load(name).eval()
        with torch.inference_mode():
            z10, l10 = model(x10)
            z1, l1 = model(x1)
        pred = l10.argmax(1)
        atk = OnePixelAttack.from_preset(args.latent_preset, model, seed=0)
        t0 = time.perf_counter()
        r = atk(x10, pred, return_images=True)
        dt = time.perf_counter() - t0
        s = r.success
        with torch.inference_mode():
            zadv = model(r.images[s])[0] if bool(s.any()) else z10[:0]
        sep = float(model.latent_stats["centroid_separation"])
        d_adv = torch.linalg.vector_norm(zadv - z10[s], dim=1)
        d_y1 = torch.linalg.vector_norm(z1 - z10, dim=1)
        out["models"][name] = dict(
            card_da=model.card.get("da", model.card.get("domain_adaptation")),
            architecture=model.card.get("architecture"),
            accuracy_y10=float((pred == truth).float().mean()),
            accuracy_y1=float((l1.argmax(1) == truth).float().mean()),
            onepixel_success=int(s.sum()), seconds=dt, queries=int(r.queries.sum()),
            centroid_separation=sep,
            onepixel_shift_mean=float(d_adv.mean()) if len(d_adv) else float("nan"),
            onepixel_shift_median=float(d_adv.median()) if len(d_adv) else float("nan"),
            onepixel_shift_norm_mean=float(d_adv.mean() / sep) if len(d_adv) else float("nan"),
            y1_shift_mean=float(d_y1.mean()), y1_shift_norm_mean=float(d_y1.mean() / sep),
            # the basis of galguard.check's default thresholds (latent_shift_threshold,
            # ood_threshold): 5/50/95/99th percentiles
            y1_shift_norm_pct=_pct(d_y1 / sep),
            ood_y10_pct=_pct(ood_score(z10, model.latent_stats)),
            ood_y1_pct=_pct(ood_score(z1, model.latent_stats)),
        )
        log.info("latent %s: %s", name, out["models"][name])
    res["latent"] = out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=6, help="galaxies")
    p.add_argument("--data", choices=("sample", "sim"), default="sample",
                   help="the shipped sample (33 galaxies) or fresh galguard.sim galaxies "
                        "(indices from --sim-start)")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--depth", default="y10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", default="equal,throughput,recall")
    p.add_argument("--popsize", type=int, default=400)
    p.add_argument("--steps", type=int, default=10, help="generations for the equal-budget run")
    p.add_argument("--inf-batch", type=int, default=128, help="torchattacks' inf_batch")
    p.add_argument("--gens", type=int, default=2, help="generations for the throughput run")
    p.add_argument("--presets", default="paper,fast,default",
                   help="comma-separated presets; NAME:INIT runs a preset with another "
                        "initialisation (e.g. default:random)")
    p.add_argument("--skip-full", action="store_true",
                   help="skip galguard's full-evaluation run in the equal-budget section")
    p.add_argument("--latent-models", default="convnet_none,convnet_mmd",
                   help="models for the latent section (names or paths)")
    p.add_argument("--latent-n", type=int, default=150)
    p.add_argument("--latent-preset", default="paper")
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--sim-start", type=int, default=1_000_000,
                   help="first simulated galaxy index (far from any training set)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    from galguard import kernels
    kernels.set_num_threads(args.threads)

    res = {}
    sections = args.sections.split(",")
    if sections == ["latent"]:
        section_latent(args, res)
        print(json.dumps(res, indent=2))
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(json.dumps(res, indent=2))
        return
    model = load_model(args.model).eval()
    if args.data == "sample":
        cut = read_cutouts(sample_path(args.depth))[args.start:args.start + args.n]
        x = torch.from_numpy(cut.data.copy())
        truth = np.asarray(cut.meta["true_label"])
    else:
        from galguard.sim import simulate
        sim = simulate(args.n, seed=args.sim_seed, start=args.sim_start + args.start,
                       depths=(args.depth,))[args.depth]
        x = torch.from_numpy(sim.images)
        truth = sim.labels
    labels = predict(model, x).argmax(1)
    res = dict(model=str(getattr(model, "name", args.model)), threads=args.threads,
               kernels_backend=kernels.backend(), torch=torch.__version__, n=len(x),
               labels=labels.tolist(), true_labels=np.asarray(truth).tolist(),
               data=args.data)
    sections = args.sections.split(",")
    if "equal" in sections:
        section_equal(model, x, labels, args, res)
    if "throughput" in sections or "overhead" in sections:
        section_throughput(model, x, labels, args, res)
    if "recall" in sections:
        section_recall(model, x, labels, args, res)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()

"""Benchmarks of galguard.models and galguard.training, side by side.

1. Inference: the shipped ConvNet on 512 cutouts (100x100, g r i) through
   `GalaxyClassifier.predict` with batches of 8, 32, 64 and 256 vs one image at a time (as the
   DeepAdversaries code evaluated its candidates).
2. Training step cost (forward + backward + AdamW step, batch 128 source + 128 target) for no DA,
   MMD and Sinkhorn (SIDDA), on random inputs of the real shape.

Usage: OMP_NUM_THREADS=2 python benchmarks/bench_models.py [--threads 2] [--repeat 3]
"""

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    from galguard.models import load
    from galguard.training import mmd2, sinkhorn_divergence

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (args.n, 3, 100, 100)).astype(np.float32)
    m = load("default")
    out = {"machine": platform.platform(), "threads": args.threads, "n": args.n}

    m.predict(x[:8])  # warm-up
    t_single = _best(lambda: [m.predict(x[i:i + 1]) for i in range(len(x))], args.repeat)
    out["predict_img_per_s_one_by_one"] = args.n / t_single
    for bs in (8, 32, 64, 256):
        t = _best(lambda: m.predict(x, batch_size=bs), args.repeat)
        out[f"predict_img_per_s_batch{bs}"] = args.n / t
        out[f"speedup_batch{bs}_over_one_by_one"] = t_single / t

    from galguard.models import build_network, GalaxyClassifier
    net = build_network("convnet")
    model = GalaxyClassifier(net, m.preprocess, classes=m.classes, bands=m.bands, input_size=100)
    model.train()
    opt = torch.optim.AdamW(model.network.parameters(), lr=1e-3)
    xs = torch.from_numpy(x[:128])
    xt = torch.from_numpy(x[128:256])
    y = torch.from_numpy(rng.integers(0, 3, 128))

    def step(da):
        def run():
            xb = xs if da == "none" else torch.cat([xs, xt])
            latent, logits = model(xb)
            loss = F.cross_entropy(logits[:128], y)
            if da == "mmd":
                loss = loss + 0.01 * mmd2(latent[:128], latent[128:])
            elif da == "sinkhorn":
                loss = loss + sinkhorn_divergence(latent[:128], latent[128:])[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run

    for da in ("none", "mmd", "sinkhorn"):
        step(da)()
        out[f"train_step_s_{da}"] = _best(step(da), args.repeat)
    out["mmd_over_none"] = out["train_step_s_mmd"] / out["train_step_s_none"]
    out["sinkhorn_over_mmd"] = out["train_step_s_sinkhorn"] / out["train_step_s_mmd"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Sanity check of the simulated domain shift.

A small CNN is trained on Y10 galaxies from `galguard.sim` and tested on held-out galaxies at
Y10 and at Y1 (the same galaxies with sqrt(10) more relative sky noise). Not a unit test and not
a speed benchmark: it shows that the classes are learnable at Y10 and that a model trained there
loses accuracy at Y1, which is what the domain-adaptation experiments need. A few minutes on
2 CPU cores.

Usage: ``python benchmarks/sim_domain_shift.py [--n 1800] [--epochs 12]``
"""

import argparse
import time

import numpy as np
import torch
import torch.nn as nn

from galguard import sim


def prepare(images):
    """2x2 binning to 50x50, common AB flux unit across bands, arcsinh scaling."""
    x = images.reshape(len(images), 3, 50, 2, 50, 2).mean(axis=(3, 5))
    zp = sim.depth_params("y10")["zeropoint"]
    x = x * (10.0 ** (0.4 * (zp[1] - zp)))[None, :, None, None]
    return torch.tensor(np.arcsinh(x / 0.5), dtype=torch.float32)


def small_cnn():
    def block(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16, 5), *block(16, 32, 3), *block(32, 64, 3), nn.Flatten(),
                         nn.Linear(64 * 6 * 6, 128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1800, help="galaxies (the last 400 are held out)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    out = sim.simulate(args.n, seed=args.seed)
    print(f"simulated {args.n} galaxies at Y10 and Y1 in {time.perf_counter() - t0:.0f} s")
    x10, x1 = prepare(out["y10"].images), prepare(out["y1"].images)
    y = torch.tensor(out["y10"].labels)
    ntr = args.n - 400

    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(ntr)
        for b in range(0, ntr, 64):
            i = perm[b:b + 64]
            xb = x10[i]
            if rng.uniform() < 0.5:
                xb = xb.flip(3)
            xb = torch.rot90(xb, int(rng.integers(4)), (2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc10 = (net(x10[ntr:]).argmax(1) == y[ntr:]).float().mean().item()
            pred1 = net(x1[ntr:]).argmax(1)
            acc1 = (pred1 == y[ntr:]).float().mean().item()
        print(f"epoch {epoch:2d}  accuracy Y10 {acc10:.3f}  Y1 {acc1:.3f}  "
              f"Y1 predictions per class {np.bincount(pred1.numpy(), minlength=3).tolist()}")


if __name__ == "__main__":
    main()

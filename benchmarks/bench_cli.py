"""Benchmark of ``galguard check``: cutouts per second and peak memory against N, and the
executors (one process, a local process pool, a local Dask cluster) side by side.

Each run is a fresh ``python -m galguard check`` subprocess; its peak resident memory is the
``ru_maxrss`` that ``os.wait4`` returns for it (Linux: the maximum over the process and the
worker processes it reaped, so pool and Dask workers are included). Wall time includes Python
and torch start-up (~4 s here), which is why rates are also given net of a 1-cutout run.

Inputs (``--inputs``): ``synthetic``, FITS stacks of 1000 3-band 100x100 smooth profiles plus
noise, listed as often as needed in an @list file, so that 100k cutouts need only one 120 MB
file on disk; or ``sample``, the 33 simulated Y10 galaxies shipped in the package (one file
each) listed cyclically up to N, every row with its own global index and random streams: the real
path, where the one-pixel attack stops early on the galaxies it flips. The model is ``--model``
(the shipped ``default``).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_cli.py --scratch scratch/bench_cli \
        --scaling 1000 10000 100000 --scaling-checks predict \
        --default-n 100 --executors-n 1000
    # the default preset on the shipped sample, and the executors on it
    OMP_NUM_THREADS=2 python benchmarks/bench_cli.py --inputs sample --default-n \
        --scaling 990 9900 --scaling-checks default --executors-n 990
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def make_stack(path, n=1000, size=100, seed=0):
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    data = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        w, amp, e = rng.uniform(3, 12), rng.uniform(5, 80), rng.uniform(0.3, 1.0)
        prof = amp * np.exp(-(xx ** 2 + (yy / e) ** 2) / (2 * w ** 2))
        for b in range(3):
            data[i, b] = prof * (0.6 + 0.3 * b) + rng.normal(0, 1.0, (size, size))
    h = fits.Header()
    h["BANDS"] = "g,r,i"
    h["GAIN"] = 50.0
    h["SKYLEVEL"] = 20.0
    cat = Table({"ID": np.arange(n, dtype=np.int64)})
    fits.HDUList([fits.PrimaryHDU(data, header=h),
                  fits.BinTableHDU(cat, name="CATALOG")]).writeto(path, overwrite=True)


CHECKS = {
    "default": [],                                     # noise (10) + one-pixel (default preset)
    "noise": ["--no-onepixel"],                        # noise stability only
    "predict": ["--no-onepixel", "--no-noise"],        # prediction + latent OOD score only
}


def sample_files():
    """The package's shipped Y10 sample, one galaxy per file (found without importing it)."""
    spec = importlib.util.find_spec("galguard")
    files = sorted(Path(spec.origin).parent.glob("data/sample/y10/*.fits*"))
    if not files:
        raise SystemExit("no shipped sample found under galguard/data/sample/y10")
    return files


def run(n, checks, scratch, model, stack, *, extra=(), tag=""):
    lst = scratch / f"list_{n}.txt"
    out = scratch / f"out_{n}_{checks}{tag}.parquet"
    for p in (out, Path(str(out) + ".partial")):
        if p.exists():
            subprocess.run(["rm", "-rf", str(p)], check=True)
    if stack is None:  # the shipped sample, cycled
        files = sample_files()
        lst.write_text("".join(f"{files[i % len(files)].resolve()}\n" for i in range(n)))
    else:
        stack = Path(stack).resolve()
        reps = -(-n // 1000)
        lst.write_text("".join(f"{stack}\n" for _ in range(reps)))
    # n not a multiple of 1000: cut the list short by a smaller stack
    if stack is not None and n % 1000:
        small = scratch / f"stack_{n % 1000}.fits"
        if not small.exists():
            subprocess.run([sys.executable, __file__, "--setup-stack", str(small),
                            str(n % 1000)], check=True)
        small = small.resolve()
        lst.write_text("".join(f"{stack}\n" for _ in range(reps - 1)) + f"{small}\n")
    cmd = [sys.executable, "-m", "galguard", "check", f"@{lst}", "-o", str(out), "--model",
           model, "--quiet", *CHECKS[checks], *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    out.unlink()
    return {"n": n, "checks": checks, "extra": " ".join(extra), "wall_s": round(wall, 2),
            "cutouts_per_s": round(n / wall, 2), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", type=Path, default=Path("scratch/bench_cli"))
    ap.add_argument("--scaling", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--scaling-checks", choices=tuple(CHECKS), default="predict")
    ap.add_argument("--default-n", type=int, nargs="*", default=[100])
    ap.add_argument("--executors-n", type=int, default=1000)
    ap.add_argument("--executors-checks", choices=tuple(CHECKS), default="noise")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--setup-stack", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", choices=("synthetic", "sample"), default="synthetic")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    # This process stays small (no numpy/torch): on Linux a child's ru_maxrss includes the
    # parent's resident size copied at fork, so the heavy set-up runs in its own processes.
    if args.setup_stack:
        make_stack(args.setup_stack[0], n=int(args.setup_stack[1]))
        return
    args.scratch.mkdir(parents=True, exist_ok=True)
    stack = None
    if args.inputs == "synthetic":
        stack = args.scratch / "stack_1000.fits"
        if not stack.exists():
            subprocess.run([sys.executable, __file__, "--setup-stack", str(stack), "1000"],
                           check=True)
    model = args.model
    print(f"model: {model}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"cores: {os.cpu_count()}; load average: {os.getloadavg()}", flush=True)
    results = []

    def show(r):
        results.append(r)
        print(json.dumps(r), flush=True)

    base = run(1, "predict", args.scratch, model, stack)
    show(dict(base, note="start-up: one cutout"))
    for n in args.default_n:
        show(run(n, "default", args.scratch, model, stack))
    for n in args.scaling:
        show(run(n, args.scaling_checks, args.scratch, model, stack))
    if args.executors_n:
        n, c = args.executors_n, args.executors_checks
        show(run(n, c, args.scratch, model, stack, tag="one"))
        show(run(n, c, args.scratch, model, stack, extra=("--workers", "2"), tag="pool"))
        show(run(n, c, args.scratch, model, stack, extra=("--dask-local", "--workers", "2"),
                 tag="dask"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""GPU throughput of the compiled core as a fraction of the device's memory bandwidth.

Needs an NVIDIA GPU, torch with CUDA and galguard built with CUDA (``build_info()["cuda"]``).
For each kernel the bytes it must move (inputs read once, outputs written once) divided by its
time give an effective bandwidth, compared with that of a device-to-device copy of the same
size (the achievable bandwidth; the datasheet figure is printed for reference when known).
Also compares with ``torch.poisson`` on the same device and input. Goal: >= 50% of the copy.

Usage::

    python benchmarks/bench_kernels_gpu.py [--n 50000000] [--repeats 20]
"""

import argparse

import torch

from galguard import kernels


def cuda_time(fn, repeats):
    """Median milliseconds of fn() on the current stream, with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000_000, help="elements per array")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not kernels.build_info().get("cuda"):
        raise SystemExit("needs a CUDA GPU and galguard built with CUDA")
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"# {props.name}, {props.total_memory / 2**30:.0f} GiB; galguard {kernels.build_info()}")
    n = args.n
    rows = 1000
    gen = torch.Generator(device=dev).manual_seed(0)
    lam = (torch.rand(rows, n // rows, device=dev, generator=gen) * 2e5 + 1e4)
    small = torch.rand(rows, n // rows, device=dev, generator=gen) * 20
    counts = torch.round(lam)
    counts_i = counts.to(torch.int32)
    copy_ms = cuda_time(lambda: lam.clone(), args.repeats)
    copy_bw = 2 * lam.numel() * 4 / copy_ms / 1e6  # GB/s
    print(f"device-to-device copy: {copy_bw:.0f} GB/s (read + write)")
    cases = {
        "poisson float32, means 1e4-2e5": (lambda: kernels.poisson(lam, seed=1, check=False), 8),
        "poisson float32, means U(0, 20)": (lambda: kernels.poisson(small, seed=1, check=False), 8),
        "torch.poisson float32, means 1e4-2e5": (lambda: torch.poisson(lam), 8),
        "binomial_thin float32 counts, p = 0.1": (
            lambda: kernels.binomial_thin(counts, 0.1, seed=1, check=False), 8),
        "binomial_thin int32 counts, p = 0.1": (
            lambda: kernels.binomial_thin(counts_i, 0.1, seed=1, check=False), 8),
    }
    print("| kernel | ms | Gdraws/s | effective GB/s | fraction of copy bandwidth |")
    print("|---|---|---|---|---|")
    for name, (fn, bytes_per) in cases.items():
        ms = cuda_time(fn, args.repeats)
        bw = lam.numel() * bytes_per / ms / 1e6
        print(f"| {name} | {ms:.2f} | {lam.numel() / ms / 1e6:.1f} | {bw:.0f} | {bw / copy_bw:.0%} |")
    # DE: writing candidates is the bandwidth-bound step
    b, p, c, h, w = 8, 400, 3, 100, 100
    images = torch.randn(b, c, h, w, device=dev)
    lo, hi = images.amin(dim=(2, 3)), images.amax(dim=(2, 3))
    ids = torch.arange(b, device=dev)
    pop = kernels.de_init(ids, p, pixels=1, channels=c, height=h, width=w, lo=lo, hi=hi, seed=0)
    out = torch.empty(b * p, c, h, w, device=dev)
    ms = cuda_time(lambda: kernels.de_write_candidates(images, pop, out=out), args.repeats)
    bw = out.numel() * 4 / ms / 1e6  # writes dominate; the base images stay in cache
    print(f"| de_write_candidates {b}x{p} x (3,100,100) | {ms:.2f} | - | {bw:.0f} | {bw / copy_bw * 2:.0%} of write bandwidth |")
    ms = cuda_time(lambda: kernels.de_mutate(pop, ids=ids, generation=1, height=h, width=w,
                                             lo=lo, hi=hi, seed=0), args.repeats)
    print(f"de_mutate {b}x{p}: {ms * 1e3:.1f} us")


if __name__ == "__main__":
    main()

"""Ingestion speed: galguard.io.read_cutouts (fitsio fast path) against a plain astropy.io.fits loop.

Two workloads, each timed side by side in one run (best of ``--repeats``, the methods alternated
so that machine load hits them alike):

1. ``--n`` one-cutout files (C x S x S float32, galguard.sim headers: FILTERn, GAINn, SKYLEVn,
   MAGZPn, EXPTIMn, SEEINGn, BUNIT, OBJID, TRUELAB);
2. one stack of ``--n`` cutouts (N, C, S, S) with a CATALOG table.

Methods:
- ``astropy loop``: what a user writes by hand: open each file (or the stack), take the data as
  native float32 and the per-band GAIN/SKYLEV/EXPTIM/MAGZP header values, stack the arrays.
- ``fitsio loop``: the same with fitsio and its header object (for reference).
- ``galguard``: ``read_cutouts(...)`` with the default backend (fitsio, astropy on error):
  also masks non-finite pixels and builds the metadata table.
- ``galguard astropy``: ``read_cutouts(..., backend="astropy")``.
- ``galguard iter``: ``iter_cutouts`` over the stack (bounded memory, chunks of 1024).
- ``part: ...``: pieces of galguard's per-file work alone (opening with fitsio; opening plus
  parsing the header cards into per-band values), to show where the time goes.

The scratch files live under ``scratch/bench_io`` (git-ignored) and are deleted at the end
unless ``--keep``. Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_io.py --n 10000 --size 64
"""

import argparse
import os
import shutil
import sys
import time

import numpy as np


def make_files(root, n, c, size, seed=0):
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "files"), exist_ok=True)
    bands = "gri"[:c]
    hdr = fits.Header()
    for k, b in enumerate(bands, 1):
        hdr[f"FILTER{k}"] = b
        hdr[f"GAIN{k}"] = 100.0 * k
        hdr[f"SKYLEV{k}"] = 20.0 * k
        hdr[f"MAGZP{k}"] = 28.0
        hdr[f"EXPTIM{k}"] = 5400.0
        hdr[f"SEEING{k}"] = 0.7
    hdr["BANDS"] = ",".join(bands)
    hdr["BUNIT"] = "electron/s"
    hdr["PIXSCALE"] = 0.2
    hdr["DEPTH"] = "Y10"
    base = rng.normal(size=(c, size, size)).astype(np.float32)
    paths = []
    for i in range(n):
        h = hdr.copy()
        h["OBJID"] = i
        h["TRUELAB"] = i % 3
        p = os.path.join(root, "files", f"gal_{i:07d}.fits")
        fits.PrimaryHDU(base + np.float32(i % 7), header=h).writeto(p, overwrite=True)
        paths.append(p)
    stack = np.repeat(base[None], n, axis=0)
    from astropy.table import Table

    t = Table()
    t["ID"] = np.arange(n)
    t["TRUELAB"] = np.arange(n) % 3
    t["GAIN"] = np.full((n, c), 100.0)
    t["SKYLEV"] = np.full((n, c), 20.0)
    t["MAGZP"] = np.full((n, c), 28.0)
    t["EXPTIME"] = np.full((n, c), 5400.0)
    t["SEEING"] = np.full((n, c), 0.7)
    spath = os.path.join(root, "stack.fits")
    fits.HDUList([fits.PrimaryHDU(stack, header=hdr), fits.BinTableHDU(t, name="CATALOG")]).writeto(
        spath, overwrite=True)
    return paths, spath


def astropy_files(paths, c):
    from astropy.io import fits

    out, meta = [], []
    for p in paths:
        with fits.open(p) as hdul:
            h = hdul[0].header
            out.append(hdul[0].data.astype(np.float32))
            meta.append([(h[f"GAIN{k}"], h[f"SKYLEV{k}"], h[f"EXPTIM{k}"], h[f"MAGZP{k}"])
                         for k in range(1, c + 1)])
    return np.stack(out), meta


def fitsio_files(paths, c):
    import fitsio

    out, meta = [], []
    for p in paths:
        with fitsio.FITS(p) as f:
            h = f[0].read_header()
            out.append(f[0].read().astype(np.float32, copy=False))
            meta.append([(h[f"GAIN{k}"], h[f"SKYLEV{k}"], h[f"EXPTIM{k}"], h[f"MAGZP{k}"])
                         for k in range(1, c + 1)])
    return np.stack(out), meta


def fitsio_files_noheader(paths, c):
    import fitsio

    return np.stack([fitsio.read(p).astype(np.float32, copy=False) for p in paths]), None


def open_and_header_only(paths, c):
    """galguard's per-file header work alone: fitsio open + raw-card parse + plane values."""
    from galguard.io._fits import FitsioAccess
    from galguard.io._header import HeaderView, plane_info

    for p in paths:
        acc = FitsioAccess(p)
        plane_info(HeaderView(acc.header(0)), c)
        acc.close()


def fitsio_open_only(paths, c):
    import fitsio

    for p in paths:
        fitsio.FITS(p).close()


def astropy_stack(path, c):
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path) as hdul:
        data = hdul[0].data.astype(np.float32)
        cat = Table(hdul["CATALOG"].data)
    return data, cat


def galguard_read(src, backend="auto"):
    from galguard.io import read_cutouts

    return read_cutouts(src, backend=backend)


def galguard_iter(src):
    from galguard.io import iter_cutouts

    n = 0
    for chunk in iter_cutouts(src, chunk_size=1024):
        n += len(chunk)
    return n


def timeit(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scratch", default=os.path.join(os.path.dirname(__file__), "..", "scratch", "bench_io"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.scratch)
    t0 = time.perf_counter()
    paths, spath = make_files(root, a.n, a.bands, a.size)
    print(f"wrote {a.n} files of {a.bands}x{a.size}x{a.size} float32 and one stack "
          f"({os.path.getsize(spath) / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
    # correctness: the reader returns what the plain loop returns
    ref, _ = astropy_files(paths[:50], a.bands)
    got = galguard_read(paths[:50])
    assert np.array_equal(ref, got.data) and got.data.dtype == np.float32
    c = a.bands
    file_methods = {
        "astropy loop": lambda: astropy_files(paths, c),
        "fitsio loop (FITSHDR)": lambda: fitsio_files(paths, c),
        "fitsio.read, no header": lambda: fitsio_files_noheader(paths, c),
        "galguard (fitsio path)": lambda: galguard_read(paths),
        "galguard backend=astropy": lambda: galguard_read(paths, "astropy"),
        "  part: fitsio.FITS() open/close": lambda: fitsio_open_only(paths, c),
        "  part: open + header values": lambda: open_and_header_only(paths, c),
    }
    stack_methods = {
        "astropy loop": lambda: astropy_stack(spath, c),
        "galguard (fitsio path)": lambda: galguard_read(spath),
        "galguard iter_cutouts": lambda: galguard_iter(spath),
        "galguard backend=astropy": lambda: galguard_read(spath, "astropy"),
    }
    try:
        for title, methods in (("one-cutout files", file_methods), ("one stack", stack_methods)):
            best = {k: np.inf for k in methods}
            for _ in range(a.repeats):
                for k, fn in methods.items():
                    best[k] = min(best[k], timeit(fn))
            base = best["astropy loop"]
            print(f"\n{title}: {a.n} cutouts of {c}x{a.size}x{a.size}, best of {a.repeats}")
            print(f"{'method':34s} {'seconds':>9s} {'us/cutout':>10s} {'speed-up vs astropy':>20s}")
            for k, t in best.items():
                print(f"{k:34s} {t:9.3f} {1e6 * t / a.n:10.1f} {base / t:19.2f}x")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

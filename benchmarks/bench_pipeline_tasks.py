"""What the Rubin route costs on top of galguard.check, side by side in one run.

Contenders, all on the same simulated cutouts with the shipped default model and default
preset, one torch thread per process:

1. ``galguard.check`` on the arrays, in this process (the baseline);
2. ``GalguardCheckTask.run`` on the cutout table, in this process (table -> arrays);
3. ``SimplePipelineExecutor`` on a SQLite Butler in a temporary directory (put, quantum graph,
   get, put, in this process);
4. ``pipetask run`` as a subprocess, one quantum (process start-up, lsst and torch imports);
5. ``pipetask run -j 2`` as a subprocess over two patches holding half the cutouts each.

Each contender runs ``--repeats`` times, interleaved, and the best time is reported.

    OMP_NUM_THREADS=1 python benchmarks/bench_pipeline_tasks.py --n 64 --repeats 2
"""

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline_tasks" / "pipelines" / "galguard_check.yaml"
SCRIPTS = sysconfig.get_path("scripts")


def make_table(n, seed):
    from galguard import sim
    from galguard_tasks import make_cutouts_table

    data = sim.simulate(n, seed=seed, size=100, depths=("y10",))["y10"]
    m = data.meta
    return make_cutouts_table(data.images, ids=np.asarray(m["id"]), gain=np.asarray(m["gain"]),
                              sky=np.asarray(m["sky"]), exptime=np.asarray(m["exptime"]),
                              bands="gri")


def pipetask(*args):
    subprocess.run([os.path.join(SCRIPTS, "pipetask"), "run", *map(str, args)], check=True,
                   capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="cutouts (default 64)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(1)
    from astropy.table import Table
    from lsst.daf.butler import Butler, DatasetType
    from lsst.pipe.base import Pipeline
    from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

    from galguard.checks import check
    from galguard_tasks import GalguardCheckConfig, GalguardCheckTask

    table = make_table(args.n, seed=5)
    half = args.n // 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_tasks_"))

    # One repository with the whole table (no dimensions) and the two halves (per patch).
    repo = tmp / "repo"
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True, run="cutouts/in")
    butler.registry.registerDatasetType(
        DatasetType("galguard_cutouts", (), "ArrowAstropy", universe=butler.dimensions))
    butler.put(table, "galguard_cutouts", {})
    patch_repo = tmp / "patch_repo"
    Butler.makeRepo(str(patch_repo))
    pbutler = Butler.from_config(str(patch_repo), writeable=True, run="cutouts/in")
    pbutler.registry.registerDatasetType(DatasetType(
        "galguard_cutouts", ("skymap", "tract", "patch"), "ArrowAstropy",
        universe=pbutler.dimensions))
    pbutler.registry.insertDimensionData("skymap", {"name": "s", "hash": b"s", "tract_max": 1,
                                                    "patch_nx_max": 2, "patch_ny_max": 1})
    pbutler.registry.insertDimensionData("tract", {"skymap": "s", "id": 0})
    pbutler.registry.insertDimensionData("patch", *[{"skymap": "s", "tract": 0, "id": p,
                                                     "cell_x": p, "cell_y": 0} for p in (0, 1)])
    for p, part in ((0, table[:half]), (1, table[half:])):
        pbutler.put(part, "galguard_cutouts", skymap="s", tract=0, patch=p)
    overrides = tmp / "per_patch.py"
    overrides.write_text('config.dimensions = ["skymap", "tract", "patch"]\n')

    meta = Table({"id": table["id"], "gain": table["gain"], "sky": table["sky"],
                  "exptime": table["exptime"]})
    counter = {"k": 0}

    def next_name(prefix):
        counter["k"] += 1
        return f"{prefix}/{counter['k']}"

    def run_simple():
        pipeline = Pipeline.fromFile(str(PIPELINE))
        out = SimplePipelineExecutor.prep_butler(str(repo), inputs=["cutouts/in"],
                                                 output=next_name("simple"))
        SimplePipelineExecutor.from_pipeline(pipeline, butler=out).run(
            register_dataset_types=True)

    contenders = {
        "galguard.check (arrays, in process)": lambda: check(
            np.asarray(table["image"]), read_kwargs={"meta": meta, "bands": "g,r,i"}),
        "GalguardCheckTask.run (table, in process)": lambda: GalguardCheckTask(
            config=GalguardCheckConfig()).run(table),
        "SimplePipelineExecutor (SQLite Butler, in process)": run_simple,
        "pipetask run, 1 quantum (subprocess)": lambda: pipetask(
            "-b", repo, "-i", "cutouts/in", "-o", next_name("cli"), "-p", PIPELINE,
            "--register-dataset-types"),
        "pipetask run -j 2, 2 patches (subprocess)": lambda: pipetask(
            "-j", 2, "-b", patch_repo, "-i", "cutouts/in", "-o", next_name("cli2"), "-p",
            PIPELINE, "--register-dataset-types", "-C", f"galguardCheck:{overrides}"),
    }
    contenders["galguard.check (arrays, in process)"]()  # load the model, warm caches
    best = {name: np.inf for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    base = best["galguard.check (arrays, in process)"]
    print(f"{args.n} cutouts (3 x 100 x 100), default model and preset, best of "
          f"{args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print("| contender | time | per cutout | vs galguard.check |")
    print("|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.1f} s | {1000 * t / args.n:.0f} ms | {t / base:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())

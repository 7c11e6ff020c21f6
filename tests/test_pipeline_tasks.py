"""The Rubin plug-in (pipeline_tasks/, package ``galguard_tasks``).

In process: the cutout-table layout, the FITS stack formatter, the task's config and
connections, ``run()`` against `galguard.check`, and `SimplePipelineExecutor` on a SQLite Butler.
Command line: ``butler create``, ``butler register-dataset-type``, ``butler ingest-files`` and
``pipetask run`` (also ``-j 2`` over two patches), and ``bps submit`` with the Parsl local site.

Every flag table is compared with `galguard.check` run in this process on the same cutouts: the
integer, boolean and string columns exactly, the float columns to rtol 1e-5 (the same
computation; only floating-point summation order could differ between processes).

The model is a small ConvNet (16 x 16 pixel input) trained for a few seconds and saved in a
temporary directory, so the tests do not depend on the shipped weights and stay fast; the checks
use the "default" attack preset and 4 noise realisations.
"""

import dataclasses
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np

import galguard.models as galguard_models
import pytest
from astropy.table import Table

from galguard.checks import CheckConfig, check
from galguard.errors import GalguardValueError
from galguard.flags import Flag

import lsst.pex.config as pexConfig
from lsst.daf.butler import Butler, Config, DatasetRef, DatasetType, FileDataset
from lsst.pipe.base import NoWorkFound, Pipeline
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

from galguard_tasks import (CutoutStackFitsFormatter, GalguardCheckConfig, GalguardCheckTask,
                            make_cutouts_table, read_cutout_stack, split_cutouts_table,
                            write_cutout_stack)
from galguard_tasks.check import CHECK_OPTIONS

# The Rubin pipeline stack (the `lsst` extra) is needed by every test here.
pytestmark = pytest.mark.lsst

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline_tasks" / "pipelines" / "galguard_check.yaml"
BPS_CONFIG = ROOT / "pipeline_tasks" / "bps" / "galguard_check_parsl.yaml"
FITS_SEED = ROOT / "pipeline_tasks" / "config" / "butler_fits_seed.yaml"
SCRIPTS = sysconfig.get_path("scripts")
SIZE = 16
# Options of every check in this file (besides the model path).
OPTIONS = {"noise_realisations": 4}
FORMATTER = "galguard_tasks.formatters.CutoutStackFitsFormatter"


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as pipetask gives each quantum by default: on a busy 2-core machine
    two threads per process are several times slower than one."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small ConvNet trained for a few seconds to name the brightest band of a blob.

    A trained model has confident, input-dependent predictions, so the attack and the noise
    check have real decisions to make (an untrained network gives every cutout the same flat
    probabilities, and its attack results hinge on rounding). Saved as .safetensors + .json.
    """
    import torch
    from galguard import models

    torch.manual_seed(0)
    train = make_images(48, seed=99)
    labels = torch.from_numpy(train.sum(axis=(2, 3)).argmax(axis=1))
    net = models.build_network("convnet", in_channels=3, n_classes=3, input_size=SIZE,
                               latent_dim=16)
    model = models.GalaxyClassifier(net, models.Preprocess.from_data(train),
                                    classes=("spiral", "elliptical", "merger"),
                                    bands=("g", "r", "i"), input_size=SIZE)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    x = torch.from_numpy(train)
    model.train()
    for _ in range(40):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[1], labels).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        latent, _ = model(x)
    model.set_latent_stats(models.fit_latent_stats(latent.numpy(), labels.numpy(), 3))
    path, _ = models.save(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")
    return str(path)


def make_images(n, *, seed, size=SIZE, gain=2.0, sky=50.0):
    """Noisy elliptical Gaussian blobs, (n, 3, size, size) float32, sky-subtracted."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        q, theta = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        u = x * np.cos(theta) + y * np.sin(theta)
        v = -x * np.sin(theta) + y * np.cos(theta)
        profile = np.exp(-0.5 * (u ** 2 + (v / q) ** 2) / rng.uniform(1.5, 4.0) ** 2)
        for b, amp in enumerate(rng.uniform(50, 500, size=3)):
            mean = gain * (amp * profile + sky)
            out[i, b] = rng.poisson(mean) / gain - sky
    return out


def make_table(n, *, seed, ids=None):
    """A ``galguard_cutouts`` table with known gain, sky and exposure time."""
    return make_cutouts_table(make_images(n, seed=seed), ids=ids, gain=2.0,
                              sky=np.full((n, 3), 50.0), exptime=30.0, bands=("g", "r", "i"))


def reference_check(table, model_path):
    """`galguard.check` on the arrays of a cutout table, as a user would call it."""
    meta = Table({"gain": np.asarray(table["gain"]), "sky": np.asarray(table["sky"]),
                  "exptime": np.asarray(table["exptime"])})
    if table["id"].dtype.kind in "iu":
        meta["id"] = table["id"]
    return check(np.asarray(table["image"]), model=model_path,
                 read_kwargs={"meta": meta, "bands": "g,r,i"}, **OPTIONS)


def assert_same_flags(got, want, *, ignore=("source",),
                      meta=("config", "model_sha256", "seed", "preset", "galguard_version")):
    """Same columns; ints, bools and strings equal; floats equal to rtol 1e-5 (NaN == NaN)."""
    assert got.colnames == want.colnames
    assert len(got) == len(want)
    for name in got.colnames:
        if name in ignore:
            continue
        a, b = np.asarray(got[name]), np.asarray(want[name])
        assert a.shape == b.shape, name
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    for key in meta:
        assert got.meta[key] == want.meta[key], key


def run_cli(*args, cwd, env=None, timeout=600):
    """Run an installed command-line tool; fail with its output if it fails."""
    exe = os.path.join(SCRIPTS, args[0])
    proc = subprocess.run([exe if os.path.exists(exe) else args[0], *map(str, args[1:])],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def make_patch_repo(repo, patches):
    """A repository with ``galguard_cutouts`` per (skymap, tract, patch) and the given patches.

    (``butler create`` and ``butler register-dataset-type`` are exercised in
    `test_pipetask_run_command_line`; here the Python API saves two process start-ups.) The
    skymap, tract and patch records are inserted by hand: lsst.skymap is not installed.
    """
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True)
    butler.registry.registerDatasetType(DatasetType(
        "galguard_cutouts", ("skymap", "tract", "patch"), "ArrowAstropy",
        universe=butler.dimensions))
    butler.registry.insertDimensionData(
        "skymap", {"name": "test_sky", "hash": b"galguard", "tract_max": 1,
                   "patch_nx_max": 4, "patch_ny_max": 4})
    butler.registry.insertDimensionData("tract", {"skymap": "test_sky", "id": 0})
    butler.registry.insertDimensionData(
        "patch", *[{"skymap": "test_sky", "tract": 0, "id": p, "cell_x": p % 4,
                    "cell_y": p // 4} for p in patches])


def ingest_stacks(repo, tmp_path, patches, run):
    """Write one FITS stack per patch and ingest them with ``butler ingest-files``."""
    stacks = {}
    lines = ["file,skymap,tract,patch"]
    for k, p in enumerate(patches):
        stacks[p] = tmp_path / f"cutouts_patch{p}.fits"
        write_cutout_stack(make_table(3 + k, seed=10 + p, ids=100 * p + np.arange(3 + k)),
                           stacks[p])
        lines.append(f"{stacks[p]},test_sky,0,{p}")
    (tmp_path / "files.csv").write_text("\n".join(lines) + "\n")
    run_cli("butler", "ingest-files", "-t", "direct", "--formatter", FORMATTER, repo,
            "galguard_cutouts", run, tmp_path / "files.csv", cwd=tmp_path)
    return stacks


def per_patch_overrides(tmp_path, model_path):
    """A config-override file: one quantum per patch, the test model, cheap noise check."""
    path = tmp_path / "overrides.py"
    path.write_text(textwrap.dedent(f"""\
        config.dimensions = ["skymap", "tract", "patch"]
        config.model = {model_path!r}
        config.noise_realisations = {OPTIONS['noise_realisations']}
        """))
    return path


# ------------------------------------------------------------------------------------------------
# Packaging

@pytest.mark.slow
def test_import_galguard_does_not_import_lsst():
    code = ("import sys, galguard, galguard.checks, galguard.io, galguard.cli; "
            "print(sorted(m for m in sys.modules if m == 'lsst' or m.startswith('lsst.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_pipeline_yaml_names_the_task():
    pipeline = Pipeline.fromFile(str(PIPELINE))
    graph = pipeline.to_graph()
    assert list(graph.tasks) == ["galguardCheck"]
    node = graph.tasks["galguardCheck"]
    assert node.task_class is GalguardCheckTask
    assert {e.parent_dataset_type_name for e in node.inputs.values()} == {"galguard_cutouts"}
    assert {e.parent_dataset_type_name for e in node.outputs.values()} >= {"galguard_flags"}


# ------------------------------------------------------------------------------------------------
# Config and connections

def test_config_mirrors_checkconfig():
    config = GalguardCheckConfig()
    fields = {f.name: f.default for f in dataclasses.fields(CheckConfig)}
    assert set(CHECK_OPTIONS) | {"model"} == set(fields)
    options = config.check_options()
    # the calibrated thresholds default to None: the model card's value (else galguard's)
    from galguard.checks.config import CARD_THRESHOLDS

    assert set(options) == set(CHECK_OPTIONS) - set(CARD_THRESHOLDS)
    assert config.model == fields["model"]
    for name in options:
        assert options[name] == fields[name], name
    config.ood_threshold = 3.5
    assert config.check_options()["ood_threshold"] == 3.5
    # The choices are those galguard.check accepts.
    from galguard.robustness.noise import MODES
    from galguard.robustness.onepixel import PRESETS
    assert set(GalguardCheckConfig.preset.allowed) == set(PRESETS)
    assert set(GalguardCheckConfig.noise_mode.allowed) == set(MODES)
    # Every field is documented.
    for name, field in GalguardCheckConfig._fields.items():
        assert field.doc.strip(), name


@pytest.mark.parametrize("name, value", [
    ("seed", -1), ("noise_realisations", 0), ("depth_fraction", 0.0), ("depth_fraction", 1.5),
    ("pixels", 0), ("low_confidence", 1.01), ("noise_flip_threshold", -0.1),
    ("latent_shift_threshold", -1.0), ("ood_threshold", -0.5), ("batch_size", 0),
    ("attack_batch_size", 0),
    ("chunk_size", 0), ("preset", "huge"), ("noise_mode", "gauss"), ("bounds", "anything"),
    ("fragile_flags", ["BAD_INPUT"]),
])
def test_config_rejects_out_of_range(name, value):
    config = GalguardCheckConfig()
    with pytest.raises(pexConfig.FieldValidationError, match=name):
        setattr(config, name, value)
        config.validate()


def test_config_fixed_bounds_and_fragile_flags():
    config = GalguardCheckConfig()
    config.bounds = "fixed"
    with pytest.raises(pexConfig.FieldValidationError, match="fixed_bounds must be set"):
        config.validate()
    config.fixed_bounds = [5.0, -1.0]
    with pytest.raises(pexConfig.FieldValidationError, match=r"lo <= hi, got \[5.0, -1.0\]"):
        config.validate()
    config.fixed_bounds = [-1.0, 5.0]
    config.fragile_flags = ["LATENT_SHIFT", "ONEPIXEL_FLIP"]
    config.validate()
    options = config.check_options()
    assert options["bounds"] == (-1.0, 5.0)
    assert options["fragile_flags"] == int(Flag.LATENT_SHIFT | Flag.ONEPIXEL_FLIP)
    CheckConfig(**options)  # galguard.check accepts them


def test_connections_dimensions_are_configurable():
    config = GalguardCheckConfig()
    connections = config.connections.ConnectionsClass(config=config)
    assert connections.dimensions == frozenset()
    assert connections.cutouts.name == "galguard_cutouts"
    assert connections.cutouts.storageClass == "ArrowAstropy"
    assert connections.flags.name == "galguard_flags"
    assert connections.flags.storageClass == "ArrowAstropy"
    config.dimensions = ["skymap", "tract", "patch"]
    config.connections.cutouts = "my_cutouts"
    connections = config.connections.ConnectionsClass(config=config)
    assert connections.dimensions == {"skymap", "tract", "patch"}
    assert set(connections.cutouts.dimensions) == {"skymap", "tract", "patch"}
    assert set(connections.flags.dimensions) == {"skymap", "tract", "patch"}
    assert connections.cutouts.name == "my_cutouts"


# ------------------------------------------------------------------------------------------------
# Cutout tables and FITS stacks (no Butler)

def test_split_cutouts_table_broadcasts_and_keeps_input():
    table = make_cutouts_table(make_images(3, seed=1), ids=["a", "b", "c"], gain=[1.0, 2.0, 3.0],
                               sky=[[1.0, 2.0, 3.0]] * 3, bands="gri")
    before = np.array(table["image"])
    rows = split_cutouts_table(table)
    assert rows.images.dtype == np.float32 and rows.images.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_array_equal(rows.per_band["gain"], [[1.0] * 3, [2.0] * 3, [3.0] * 3])
    np.testing.assert_array_equal(rows.per_band["sky"], [[1.0, 2.0, 3.0]] * 3)
    assert "exptime" not in rows.per_band
    assert rows.bands == ("g", "r", "i")
    assert list(rows.ids) == ["a", "b", "c"] and rows.good.all()
    rows.images[:] = 0.0  # a private copy: the table is untouched
    np.testing.assert_array_equal(table["image"], before)


def test_make_cutouts_table_band_names_and_errors():
    images = make_images(2, seed=1)
    for bands in ("gri", "g,r,i", ("g", "r", "i")):
        assert list(make_cutouts_table(images, bands=bands)["band"]) == ["g,r,i"] * 2
    with pytest.raises(GalguardValueError,
                       match=r"bands must name one band per image plane \(3\), got \('g', 'r'\)"):
        make_cutouts_table(images, bands="g,r")
    with pytest.raises(GalguardValueError, match=r"images must have shape \(N, C, H, W\), "
                                                 r"got \(3, 16, 16\)"):
        make_cutouts_table(images[0])
    with pytest.raises(GalguardValueError, match=r"ids must have shape \(2,\), got \(3,\)"):
        make_cutouts_table(images, ids=[1, 2, 3])


def test_split_cutouts_table_ragged_rows_become_errors():
    images = make_images(4, seed=2)
    column = np.empty(4, dtype=object)
    column[0], column[1], column[3] = images[0], images[1], images[3]
    column[2] = images[2][:, :10, :10]
    table = Table({"id": np.arange(4), "image": column})
    rows = split_cutouts_table(table)
    assert list(rows.good) == [True, True, False, True]
    assert "shape (3, 10, 10)" in rows.errors[2]
    np.testing.assert_array_equal(rows.images[2], 0.0)
    np.testing.assert_array_equal(rows.images[3], images[3])


@pytest.mark.parametrize("table, match", [
    (Table({"id": [1, 2]}), r"cutouts must have an 'image' column, got columns \['id'\]"),
    (Table({"image": np.zeros((2, 8, 8), np.float32)}),
     r"cutouts\['image'\] must have shape \(N, C, H, W\), got \(2, 8, 8\)"),
    (Table({"image": np.zeros((2, 3, 8, 8)), "gain": np.ones((2, 2))}),
     r"cutouts\['gain'\] must have shape \(N,\) or \(N, C\) = \(2,\) or \(2, 3\), got \(2, 2\)"),
    (Table({"image": np.zeros((2, 3, 8, 8)), "band": ["g,r", "g,r"]}),
     r"cutouts\['band'\] must name one band per image plane \(3\), got 'g,r'"),
])
def test_split_cutouts_table_errors(table, match):
    with pytest.raises(GalguardValueError, match=match):
        split_cutouts_table(table)


def test_fits_stack_round_trip_and_galguard_io(tmp_path):
    table = make_table(3, seed=3, ids=[7, 8, 9])
    path = tmp_path / "stack.fits"
    write_cutout_stack(table, path)
    back = read_cutout_stack(path)
    assert back.colnames == ["id", "image", "gain", "sky", "exptime", "band"]
    for name in table.colnames:
        np.testing.assert_array_equal(back[name], table[name], err_msg=name)
    # galguard.io reads the same stack the same way.
    from galguard.io import read_cutouts
    cutouts = read_cutouts(str(path))
    np.testing.assert_array_equal(cutouts.data, table["image"])
    np.testing.assert_array_equal(cutouts.meta["id"], [7, 8, 9])
    np.testing.assert_array_equal(cutouts.meta["gain"], table["gain"])
    np.testing.assert_array_equal(cutouts.meta["sky"], table["sky"])
    assert cutouts.bands == ("g", "r", "i")


def test_read_cutout_stack_reads_galguard_sim_stacks(tmp_path):
    from galguard import sim
    data = sim.simulate(2, seed=4, size=24, depths=("y10",))["y10"]
    (path,) = sim.write_fits(data, tmp_path, stack=True)
    table = read_cutout_stack(path)
    np.testing.assert_array_equal(table["image"], data.images)
    np.testing.assert_allclose(table["gain"], np.asarray(data.meta["gain"]).reshape(2, -1)
                               * np.ones((2, 3)))
    assert table["band"][0] == "g,r,i"


def test_read_cutout_stack_rejects_2d(tmp_path):
    from astropy.io import fits
    path = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(path)
    with pytest.raises(GalguardValueError, match=r"must hold an \(N, C, H, W\) cutout stack, "
                                                 r"got \(8, 8\)"):
        read_cutout_stack(path)


# ------------------------------------------------------------------------------------------------
# The task's run(), Butler-free

def make_task(model_path, **overrides):
    config = GalguardCheckConfig()
    config.model = model_path
    for name, value in {**OPTIONS, **overrides}.items():
        setattr(config, name, value)
    config.validate()
    return GalguardCheckTask(config=config)


def test_run_matches_galguard_check(model_path):
    table = make_table(4, seed=5, ids=np.array(["gal-a", "gal-b", "gal-c", "gal-d"]))
    before = table.copy(copy_data=True)
    result = make_task(model_path).run(table)
    want = reference_check(table, model_path)
    assert_same_flags(result.flags, want, ignore=("id",))
    assert list(result.flags["id"]) == ["gal-a", "gal-b", "gal-c", "gal-d"]
    assert (result.flags["error"] == "").all()
    assert json.loads(result.flags.meta["config"])["noise_realisations"] == 4
    for name in table.colnames:  # input untouched
        np.testing.assert_array_equal(table[name], before[name])


@pytest.mark.slow
def test_default_config_with_the_shipped_model():
    """The task's defaults (model "default", preset "default") on simulated 100 x 100 cutouts."""
    from galguard import sim
    data = sim.simulate(3, seed=21, size=100, depths=("y10",))["y10"]
    meta = data.meta
    table = make_cutouts_table(data.images, ids=np.asarray(meta["id"]),
                               gain=np.asarray(meta["gain"]), sky=np.asarray(meta["sky"]),
                               exptime=np.asarray(meta["exptime"]), bands="gri")
    flags = GalguardCheckTask(config=GalguardCheckConfig()).run(table).flags
    want = check(data.images, read_kwargs={"bands": "g,r,i", "meta": Table(
        {"id": meta["id"], "gain": table["gain"], "sky": table["sky"],
         "exptime": table["exptime"]})})
    assert_same_flags(flags, want)
    assert flags.meta["model_name"] == want.meta["model_name"]
    # the defaults, with the shipped model card's calibrated OOD threshold (as galguard.check)
    card = galguard_models.read_card("default")
    assert json.loads(flags.meta["config"]) == {**CheckConfig().to_dict(),
                                                **card["thresholds"]}
    assert (flags["error"] == "").all() and (flags["pred_label"] >= 0).all()
    assert flags.meta["domain_shift"] == want.meta["domain_shift"]


@pytest.mark.slow
def test_run_same_seed_same_flags_other_seed_other_attack(model_path):
    table = make_table(3, seed=6)
    a = make_task(model_path, seed=3).run(table).flags
    b = make_task(model_path, seed=3, chunk_size=2, batch_size=7).run(table).flags
    c = make_task(model_path, seed=4).run(table).flags
    assert_same_flags(a, b, ignore=(), meta=("seed", "model_sha256"))
    assert json.loads(c.meta["config"])["seed"] == 4
    assert not np.array_equal(a["noise_prob_drop"], c["noise_prob_drop"])


def test_run_bad_cutouts_become_error_rows(model_path):
    images = make_images(4, seed=7)
    images[1] = np.nan
    column = np.empty(4, dtype=object)
    for i in range(4):
        column[i] = images[i]
    column[3] = images[3][:2]  # only 2 bands
    table = Table({"id": [10, 11, 12, 13], "image": column, "gain": np.full(4, 2.0),
                   "sky": np.full(4, 50.0), "exptime": np.full(4, 30.0)})
    flags = make_task(model_path).run(table).flags
    assert list(flags["id"]) == [10, 11, 12, 13]
    bad = (flags["flags"] & int(Flag.BAD_INPUT)) != 0
    assert list(bad) == [False, True, False, True]
    assert "shape (2, 16, 16)" in flags["error"][3]
    assert flags["error"][1] != "" and flags["error"][0] == flags["error"][2] == ""
    assert flags["pred_label"][1] == -1 and np.isnan(flags["pred_prob"][3])
    assert flags["fragile"][1] and flags["fragile"][3]
    # The good rows are those galguard.check gives for them alone (global row keys differ, so
    # compare the deterministic, key-independent prediction columns).
    good = make_task(model_path).run(table[[0, 2]]).flags
    np.testing.assert_array_equal(flags["probs"][[0, 2]], good["probs"])


def test_run_all_cutouts_bad_and_masked_pixels(model_path):
    column = np.empty(2, dtype=object)
    column[0], column[1] = "not an image", np.zeros((4, 4))
    table = Table({"id": [1, 2], "image": column, "gain": np.ones((2, 3))})
    flags = make_task(model_path).run(table).flags
    assert ((flags["flags"] & int(Flag.BAD_INPUT)) != 0).all()
    assert "not numeric" in flags["error"][0] and "shape (C, H, W)" in flags["error"][1]

    images = make_table(2, seed=15)
    masked = Table(images, masked=True)
    masked["image"].mask[0, 1, 3:5, 3:5] = True
    masked["image"].mask[1] = True
    rows = split_cutouts_table(masked)
    assert rows.mask.sum() == 4 + rows.mask[1].size and rows.good.all()
    flags = make_task(model_path).run(masked).flags
    assert flags["error"][0] == "" and flags["error"][1] != ""
    assert list((flags["flags"] & int(Flag.BAD_INPUT)) != 0) == [False, True]


def test_run_cutouts_of_the_wrong_size_are_resized(model_path):
    images = make_images(2, seed=8, size=SIZE + 4)
    table = make_cutouts_table(images, gain=2.0, sky=50.0, exptime=30.0, bands="gri")
    flags = make_task(model_path).run(table).flags
    assert ((flags["flags"] & int(Flag.RESIZED)) != 0).all()
    assert (flags["error"] == "").all()


def test_run_missing_noise_metadata_is_estimated_and_flagged(model_path):
    table = make_table(2, seed=9)
    del table["gain"], table["sky"], table["exptime"]
    flags = make_task(model_path).run(table).flags
    assert ((flags["flags"] & int(Flag.GAIN_ESTIMATED | Flag.SKY_ESTIMATED)) != 0).all()
    assert ((flags["flags"] & int(Flag.EXPTIME_MISSING)) != 0).all()
    assert (flags["pred_label"] >= 0).all()


def test_run_no_cutouts_is_no_work(model_path):
    table = make_table(2, seed=10)[:0]
    with pytest.raises(NoWorkFound, match="no rows"):
        make_task(model_path).run(table)


def test_run_rejects_a_table_without_images(model_path):
    with pytest.raises(GalguardValueError, match="must have an 'image' column"):
        make_task(model_path).run(Table({"id": [1, 2]}))


# ------------------------------------------------------------------------------------------------
# Butler, in process

@pytest.mark.slow
def test_simple_pipeline_executor(tmp_path, model_path):
    repo = str(tmp_path / "repo")
    Butler.makeRepo(repo)
    butler = Butler.from_config(repo, writeable=True)
    butler.registry.registerDatasetType(
        DatasetType("galguard_cutouts", (), "ArrowAstropy", universe=butler.dimensions))
    table = make_table(4, seed=11, ids=[5, 6, 7, 8])
    butler.registry.registerRun("cutouts/in")
    butler.put(table, "galguard_cutouts", {}, run="cutouts/in")

    pipeline = Pipeline.fromFile(str(PIPELINE))
    pipeline.addConfigOverride("galguardCheck", "model", model_path)
    for name, value in OPTIONS.items():
        pipeline.addConfigOverride("galguardCheck", name, value)
    out_butler = SimplePipelineExecutor.prep_butler(repo, inputs=["cutouts/in"],
                                                    output="galguard/out")
    executor = SimplePipelineExecutor.from_pipeline(pipeline, butler=out_butler)
    quanta = executor.run(register_dataset_types=True)
    assert len(quanta) == 1

    flags = Butler.from_config(repo, collections="galguard/out").get("galguard_flags", {})
    assert_same_flags(flags, reference_check(table, model_path))
    assert list(flags["id"]) == [5, 6, 7, 8]
    assert set(flags["source"]) == {"galguard_cutouts"}


def test_butler_fits_formatter_put_get_and_ingest(tmp_path):
    repo = str(tmp_path / "repo")
    Butler.makeRepo(repo, config=Config(str(FITS_SEED)))
    butler = Butler.from_config(repo, writeable=True, run="cutouts/fits")
    dataset_type = DatasetType("galguard_cutouts", ("instrument",), "ArrowAstropy",
                               universe=butler.dimensions)
    butler.registry.registerDatasetType(dataset_type)
    butler.registry.insertDimensionData("instrument", {"name": "Cam", "class_name": "Cam"})
    table = make_table(3, seed=12, ids=[1, 2, 3])
    ref = butler.put(table, "galguard_cutouts", instrument="Cam")
    uri = butler.getURI(ref)
    assert uri.getExtension() == ".fits"
    np.testing.assert_array_equal(read_cutout_stack(uri.ospath)["image"], table["image"])
    back = butler.get(ref)
    for name in table.colnames:
        np.testing.assert_array_equal(back[name], table[name], err_msg=name)
    assert butler.get(ref.makeComponentRef("rowcount")) == 3
    assert butler.get(ref, parameters={"columns": ["id", "gain"]}).colnames == ["id", "gain"]

    # An existing stack ingested in place, with the formatter recorded for it.
    stack = tmp_path / "external.fits"
    other = make_table(2, seed=13, ids=[40, 41])
    write_cutout_stack(other, stack)
    new_ref = DatasetRef(dataset_type, {"instrument": "Cam"}, run="cutouts/ingested")
    butler.registry.registerRun("cutouts/ingested")
    butler.ingest(FileDataset(path=str(stack), refs=[new_ref], formatter=CutoutStackFitsFormatter),
                  transfer="direct")
    got = butler.get("galguard_cutouts", instrument="Cam", collections="cutouts/ingested")
    np.testing.assert_array_equal(got["image"], other["image"])
    np.testing.assert_array_equal(got["id"], [40, 41])


# ------------------------------------------------------------------------------------------------
# The command line: butler and pipetask

@pytest.mark.slow
def test_pipetask_run_command_line(tmp_path, model_path):
    repo = tmp_path / "repo"
    run_cli("butler", "create", repo, cwd=tmp_path)
    run_cli("butler", "register-dataset-type", repo, "galguard_cutouts", "ArrowAstropy",
            cwd=tmp_path)
    table = make_table(4, seed=14, ids=np.array(["n1", "n2", "n3", "n4"]))
    # No butler command puts an in-memory table: the Python API does.
    Butler.from_config(str(repo), writeable=True, run="cutouts/in").put(table,
                                                                        "galguard_cutouts", {})
    run_cli("pipetask", "run", "-b", repo, "-i", "cutouts/in", "-o", "galguard/out",
            "-p", PIPELINE, "--register-dataset-types",
            "-c", f"galguardCheck:model={model_path}",
            *[a for k, v in OPTIONS.items() for a in ("-c", f"galguardCheck:{k}={v}")],
            cwd=tmp_path)
    flags = Butler.from_config(str(repo), collections="galguard/out").get("galguard_flags", {})
    assert_same_flags(flags, reference_check(table, model_path), ignore=("source", "id"))
    assert list(flags["id"]) == ["n1", "n2", "n3", "n4"]


@pytest.mark.slow
def test_pipetask_run_two_patches_in_parallel_from_fits(tmp_path, model_path):
    repo = tmp_path / "repo"
    make_patch_repo(repo, [1, 2])
    stacks = ingest_stacks(repo, tmp_path, [1, 2], "cutouts/fits")
    proc = run_cli("pipetask", "run", "-j", "2", "-b", repo, "-i", "cutouts/fits",
                   "-o", "galguard/patches", "-p", PIPELINE, "--register-dataset-types",
                   "-C", f"galguardCheck:{per_patch_overrides(tmp_path, model_path)}",
                   cwd=tmp_path)
    assert "Executed 2 quanta successfully, 0 failed" in proc.stdout + proc.stderr
    butler = Butler.from_config(str(repo), collections="galguard/patches")
    for patch, stack in stacks.items():
        flags = butler.get("galguard_flags", skymap="test_sky", tract=0, patch=patch)
        # The reference reads the FITS stack itself through galguard.io.
        want = check(str(stack), model=model_path, **OPTIONS)
        assert_same_flags(flags, want)
        assert list(flags["id"]) == list(100 * patch + np.arange(len(flags)))
        assert flags["source"][0] == ("galguard_cutouts@{'skymap': 'test_sky', 'tract': 0, "
                                      f"'patch': {patch}}}")


# ------------------------------------------------------------------------------------------------
# BPS with the Parsl plug-in, local site

@pytest.mark.slow
def test_bps_submit_parsl_local(tmp_path, model_path):
    repo = tmp_path / "repo"
    make_patch_repo(repo, [3, 5])
    stacks = ingest_stacks(repo, tmp_path, [3, 5], "cutouts/fits")
    # The shipped BPS config names the pipeline relative to ${PWD}, the checkout: submit from a
    # directory that looks like one, so that the submit directory lands in tmp_path.
    (tmp_path / "pipeline_tasks").symlink_to(ROOT / "pipeline_tasks")
    env = dict(os.environ, PWD=str(tmp_path), CTRL_MPEXEC_DIR=sys.prefix,
               DAF_BUTLER_DIR=sys.prefix,
               PATH=SCRIPTS + os.pathsep + os.environ.get("PATH", ""))
    overrides = per_patch_overrides(tmp_path, model_path)
    run_cli("bps", "submit", "-b", repo, "-i", "cutouts/fits", "-o", "galguard/bps",
            "--extra-qgraph-options", f"-C galguardCheck:{overrides}",
            "pipeline_tasks/bps/galguard_check_parsl.yaml", cwd=tmp_path, env=env)
    butler = Butler.from_config(str(repo), collections="galguard/bps")
    for patch, stack in stacks.items():
        flags = butler.get("galguard_flags", skymap="test_sky", tract=0, patch=patch)
        assert_same_flags(flags, check(str(stack), model=model_path, **OPTIONS))
    logs = list((tmp_path / "submit").rglob("*.stdout"))
    assert logs, "bps wrote no per-quantum logs under ./submit"


def test_run_with_a_wrapped_user_model(tmp_path, monkeypatch):
    """The task's model field takes a saved user model (its factory importable)."""
    (tmp_path / "task_user_models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import task_user_models

    from galguard.models import save, wrap
    table = make_table(3, seed=7)
    size = table["image"].shape[-1]
    model = wrap(task_user_models.build(), classes=("spiral", "elliptical", "merger"),
                 bands="gri", input_size=size, name="user-cnn")
    path = save(model, tmp_path / "user.safetensors", factory="task_user_models:build")[0]
    flags = make_task(str(path)).run(table).flags
    assert len(flags) == 3 and (flags["error"] == "").all()
    assert set(flags["pred_class"]) <= {"spiral", "elliptical", "merger"}
    assert flags.meta["model_name"] == "user-cnn"

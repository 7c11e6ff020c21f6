"""Tests of the ``galguard`` command line: ``check`` (inputs, formats, exit codes, refusals,
resume), ``--help``/``--version`` and ``demo``'s options."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import galguard
from galguard import cli
from galguard.batch import catalog_columns, expand_inputs
from galguard.catalog import journal_dir, read_catalog
from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.models import save

from _tiny import galaxies, tiny_classifier  # tests/ is put on sys.path by conftest.py


def make_model(path):
    return save(tiny_classifier(galaxies(64, seed=1), name="tiny-cli"), path)[0]


def write_files(d, n, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    x = galaxies(n, seed)
    paths = []
    for i in range(n):
        h = fits.Header()
        h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
        h["OBJID"], h["TRUELAB"] = 1000 + i, i % 3
        p = d / f"gal_{i:04d}.fits"
        fits.PrimaryHDU(x[i], header=h).writeto(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("data") / "cutouts", 7)


def cheap(model_path, *more):
    """Options for a quick run: noise only (3 realisations), chunks of 3."""
    return ["--model", str(model_path), "--no-onepixel", "--noise-realisations", "3",
            "--chunk-size", "3", "--quiet", *more]


def assert_same_rows(a, b):
    assert a.colnames == b.colnames
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


# ---------------------------------------------------------------------------------------------
# help and version
# ---------------------------------------------------------------------------------------------
def test_version_and_help_list_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"galguard {galguard.__version__}"
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("check", "report", "demo", "simulate", "train", "evaluate"):
        assert name in out
    for code in ("0", "1", "2", "3"):
        assert f"  {code}  " in out  # the exit codes are documented
    assert "--resume" in out or "resum" in out.lower()


@pytest.mark.parametrize("sub,words", [
    ("check", ["--format", "--preset", "--model", "--device", "--batch-size", "--chunk-size",
               "--seed", "--workers", "--dask-scheduler", "--dask-local", "--resume",
               "--overwrite", "--quiet", "--input-list", "@LIST", "exit status"]),
    ("report", ["CATALOG", "--output", "--gallery", "--max-points", "--method"]),
    ("demo", ["--out", "--preset", "--model"]),
])
def test_subcommand_help_is_complete(sub, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for w in words:
        assert w in out, w


@pytest.mark.slow
def test_console_script_runs():
    exe = Path(sys.executable).with_name("galguard")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("galguard ")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def test_expand_inputs_dir_glob_list_order(files, tmp_path):
    d = files[0].parent
    assert expand_inputs([str(d)]) == [str(p) for p in files]
    assert expand_inputs([str(d / "gal_000[12].fits")]) == [str(files[1]), str(files[2])]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two files\n{files[3]}\n\n{os.path.relpath(files[0], tmp_path)}\n")
    assert expand_inputs([f"@{lst}"]) == [str(files[3]), os.path.join(str(tmp_path),
                                                                       os.path.relpath(files[0],
                                                                                       tmp_path))]
    assert expand_inputs([str(files[5])], input_lists=[str(lst)])[0] == str(files[5])
    with pytest.raises(GalguardValueError, match="glob matched no files"):
        expand_inputs([str(d / "nothing*.fits")])
    with pytest.raises(GalguardValueError, match="directory with no FITS"):
        expand_inputs([str(tmp_path)])
    with pytest.raises(GalguardValueError, match="input list .* does not exist"):
        expand_inputs(["@" + str(tmp_path / "missing.txt")])


# ---------------------------------------------------------------------------------------------
# check: formats, rows, exit codes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "fits", "ecsv", "csv"])
def test_check_writes_every_format_with_the_same_rows(fmt, files, model_path, tmp_path):
    out = tmp_path / f"cat.{fmt}"
    rc = cli.main(["check", str(files[0].parent), "-o", str(out), *cheap(model_path)])
    assert rc == cli.EXIT_OK
    t = read_catalog(out)
    assert tuple(t.colnames) == catalog_columns()
    assert len(t) == len(files)
    assert list(t["id"]) == [1000 + i for i in range(len(files))]
    assert list(t["source"]) == [str(p) for p in files]
    assert list(t["true_label"]) == [i % 3 for i in range(len(files))]
    assert np.all(t["error"] == "")
    assert np.all((t["noise_flip_rate"] >= 0) & (t["noise_flip_rate"] <= 1))
    assert t["probs"].shape == (len(files), 3)
    assert t.meta["model_name"] == "tiny" and t.meta["seed"] == 0
    assert json.loads(t.meta["config"])["noise_realisations"] == 3
    assert not journal_dir(out).exists()
    if fmt != "parquet":  # every format holds the same rows
        ref = tmp_path / "ref.parquet"
        assert cli.main(["check", str(files[0].parent), "-o", str(ref), *cheap(model_path)]) == 0
        assert_same_rows(read_catalog(ref), t)


def test_check_matches_the_python_api(files, model_path, tmp_path):
    out = tmp_path / "cat.parquet"
    assert cli.main(["check", *map(str, files[:5]), "-o", str(out), "--seed", "4",
                     *cheap(model_path)]) == 0
    t = read_catalog(out)
    ref = galguard.check([str(p) for p in files[:5]], model=str(model_path), seed=4,
                         onepixel=False, noise_realisations=3, chunk_size=3)
    for name in ref.colnames:
        x, y = np.asarray(ref[name]), np.asarray(t[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_bad_inputs_give_error_rows_and_exit_3(files, model_path, tmp_path):
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"this is not a FITS file")
    missing = tmp_path / "missing.fits"
    out = tmp_path / "cat.ecsv"
    rc = cli.main(["check", str(files[0]), str(broken), str(missing), str(files[1]), "-o",
                   str(out), *cheap(model_path)])
    assert rc == cli.EXIT_BAD_INPUTS == 3
    t = read_catalog(out)
    assert len(t) == 4
    bad = (np.asarray(t["flags"]) & int(Flag.BAD_INPUT)) != 0
    assert list(bad) == [False, True, True, False]
    assert "broken.fits" in t["error"][1] and "missing.fits" in t["error"][2]
    assert t["error"][0] == "" and np.isfinite(t["pred_prob"][3])
    assert np.all(t["fragile"][bad])


def test_refuses_to_overwrite_a_catalog_or_an_input(files, model_path, tmp_path, capsys):
    out = tmp_path / "cat.parquet"
    assert cli.main(["check", str(files[0]), "-o", str(out), *cheap(model_path)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    rc = cli.main(["check", str(files[1]), "-o", str(out), *cheap(model_path)])
    assert rc == cli.EXIT_USAGE == 2
    assert "exists; use --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    # --resume on a finished catalog: nothing to resume
    assert cli.main(["check", str(files[0]), "-o", str(out), "--resume",
                     *cheap(model_path)]) == cli.EXIT_USAGE
    assert "that run finished" in capsys.readouterr().err
    assert cli.main(["check", str(files[1]), "-o", str(out), "--overwrite",
                     *cheap(model_path)]) == 0
    assert read_catalog(out)["source"][0] == str(files[1])
    # never over an input, even with --overwrite (and the input is untouched)
    victim = tmp_path / "victim.fits"
    victim.write_bytes(files[2].read_bytes())
    data = victim.read_bytes()
    rc = cli.main(["check", str(files[0]), str(victim), "-o", str(victim), "--format", "fits",
                   "--overwrite", *cheap(model_path)])
    assert rc == cli.EXIT_USAGE
    assert "is one of the inputs" in capsys.readouterr().err
    assert victim.read_bytes() == data


@pytest.mark.parametrize("argv,message", [
    (["check", "-o", "x.parquet"], "at least one INPUT"),
    (["check", "IN", "-o", "x.unknown"], "cannot tell the catalog format"),
    (["check", "IN", "-o", "x.parquet", "--resume", "--overwrite"], "exclude each other"),
    (["check", "IN", "-o", "x.parquet", "--dask-local", "--dask-scheduler", "tcp://a:1"],
     "exclude each other"),
    (["check", "IN", "-o", "x.parquet", "--seed", "-1"], "seed must be an integer in [0, "),
    (["check", "IN", "-o", "x.parquet", "--chunk-size", "0"], "chunk_size must be"),
    (["check", "IN", "-o", "x.parquet", "--workers", "0"], "--workers must be >= 1"),
    (["check", "nothing-here-*.fits", "-o", "x.parquet"], "glob matched no files"),
    (["check", "IN", "-o", "x.parquet", "--model", "no-such-model"], "name_or_path"),
])
def test_usage_errors_exit_2(argv, message, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(files[0]) if a == "IN" else a for a in argv]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_argparse_errors_also_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "a.fits", "-o", "x.parquet", "--format", "xml"])
    assert e.value.code == cli.EXIT_USAGE


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------
def test_resume_uses_journaled_chunks_and_refuses_other_runs(files, model_path, tmp_path,
                                                           capsys):
    d = str(files[0].parent)
    full = tmp_path / "full.parquet"
    assert cli.main(["check", d, "-o", str(full), *cheap(model_path)]) == 0
    # A journal holding chunk 1 of a run, as a killed run leaves it; the chunk file is marked
    # so that we can see it was reused, not recomputed.
    out = tmp_path / "cat.parquet"
    t = read_catalog(full)
    jdir = journal_dir(out)
    # Make the journal by starting the same run and stopping it through a failing reader.
    import galguard.batch as batch
    real = batch.check_chunk
    calls = []

    def failing(chunk, config, model, *, offset, device=None):
        calls.append(offset)
        if offset == 3:
            raise RuntimeError("simulated crash")
        return real(chunk, config, model, offset=offset, device=device)

    batch.check_chunk = failing
    try:
        rc = cli.main(["check", d, "-o", str(out), *cheap(model_path)])
    finally:
        batch.check_chunk = real
    assert rc == cli.EXIT_FAILURE
    assert "--resume" in capsys.readouterr().err
    assert not out.exists() and (jdir / "chunk-000000.parquet").exists()
    assert not (jdir / "chunk-000001.parquet").exists()
    # Other options or inputs: refused.
    assert cli.main(["check", d, "-o", str(out), "--resume", "--seed", "9",
                     *cheap(model_path)]) == cli.EXIT_USAGE
    assert "config_hash" in capsys.readouterr().err
    assert cli.main(["check", *map(str, files[:4]), "-o", str(out), "--resume",
                     *cheap(model_path)]) == cli.EXIT_USAGE
    assert "inputs_hash" in capsys.readouterr().err
    # The same run resumes: chunk 0 is not recomputed, the catalog equals the full run, and a
    # temporary file of a final write cut short is cleaned up.
    stale = tmp_path / ".cat.parquet.x1y2.tmp"
    stale.write_bytes(b"half")
    calls.clear()

    def recording(chunk, config, model, *, offset, device=None):
        calls.append(offset)
        return real(chunk, config, model, offset=offset, device=device)

    batch.check_chunk = recording
    try:
        assert cli.main(["check", d, "-o", str(out), "--resume", "--batch-size", "5",
                         *cheap(model_path)]) == 0
    finally:
        batch.check_chunk = real
    assert calls == [3, 6]
    assert_same_rows(t, read_catalog(out))
    assert not jdir.exists() and not stale.exists()


def test_demo_help_mentions_out_dir(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "current" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def _model_100(path):
    """A random ConvNet for the shipped sample's 100x100 g, r, i cutouts."""
    from galguard.io import read_cutouts
    from galguard.sim import sample_path

    x = read_cutouts(sample_path("y10")).data
    return save(tiny_classifier(x, name="random100"), path)[0]


@pytest.mark.slow
def test_demo_writes_catalog_and_report_and_prints_a_table(tmp_path, capsys, monkeypatch):
    from galguard._cli.demo import CATALOG_NAME, REPORT_NAME
    from galguard.sim import sample_path

    model = _model_100(tmp_path / "m" / "random100.safetensors")
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--model", str(model), "--no-onepixel", "--noise-realisations", "3",
            "--quiet"]
    assert cli.main(argv) == cli.EXIT_OK  # into the current folder
    out = capsys.readouterr().out
    n = len(list(sample_path("y10").iterdir()))
    t = read_catalog(tmp_path / CATALOG_NAME)
    assert len(t) == n and np.all(t["error"] == "")
    assert (tmp_path / REPORT_NAME).read_text().count('class="gallery-entry"') >= 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "true", "predicted"]
    assert sum(1 for ln in lines if ln.split() and ln.split()[0].isdigit()
               and "cutouts:" not in ln) == n
    assert f"{n} cutouts:" in out and "accuracy against the simulated truth" in out
    # --out DIR (created) holding old demo files: the demo replaces its own files
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / CATALOG_NAME).write_text("old")
    assert cli.main(argv + ["--out", str(tmp_path / "demo")]) == cli.EXIT_OK
    assert len(read_catalog(tmp_path / "demo" / CATALOG_NAME)) == n


@pytest.mark.slow
def test_demo_with_the_shipped_default_model(tmp_path, capsys):
    from galguard.models import available
    if "default" not in available():
        pytest.skip("no default model is shipped yet (galguard/models/weights/index.json)")
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "cutouts:" in out
    # the shipped Y10 sample is like the default model's training data
    assert "no domain shift detected" in out


def test_progress_bar_only_on_a_terminal(files, model_path, tmp_path, capsys):
    from galguard.batch import run_batch
    from galguard.checks import CheckConfig

    cfg = CheckConfig(model=str(model_path), onepixel=False, noise_realisations=3, chunk_size=3)
    res = run_batch([str(p) for p in files], tmp_path / "a.parquet", config=cfg,
                    model=str(model_path), progress=True)
    err = capsys.readouterr().err
    assert "galguard check" in err and "cutout/s" in err  # tqdm: rate (and ETA while running)
    assert f"{len(files)}/{len(files)}" in err
    assert res.n_rows == len(files) and res.n_chunks == 3 and res.n_bad == 0
    # The command line turns the bar off when stderr is not a terminal (as under pytest).
    assert cli.main(["check", str(files[0]), "-o", str(tmp_path / "b.parquet"), "--model",
                     str(model_path), "--no-onepixel", "--noise-realisations", "3"]) == 0
    err = capsys.readouterr().err
    assert "cutout/s" not in err and "1 cutouts, " in err  # only the summary line

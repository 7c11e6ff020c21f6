"""Reliability: no pixel or header value stops a batch, concurrent runs never mix, hostile files
and misuse get clear errors (the fuzz campaign's findings, each with its test)."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

import galguard
from _tiny import SIZE, galaxies, tiny_classifier  # tests/ is put on sys.path by conftest.py
from galguard import cli
from galguard.catalog import read_catalog
from galguard.errors import GalguardValueError
from galguard.flags import Flag
from galguard.io import read_cutouts
from galguard.models import save

FAST = dict(preset="fast", noise_realisations=3)


@pytest.fixture(scope="module")
def model():
    return tiny_classifier(galaxies(64, seed=1), name="tiny-rel", sha256="0" * 64)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    return save(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")[0]


def write(path, data, **cards):
    h = fits.Header()
    h["BANDS"], h["GAIN"], h["SKYLEVEL"] = "g,r,i", 4.0, 20.0
    for k, v in cards.items():
        h[k] = v
    fits.PrimaryHDU(data, header=h).writeto(path, overwrite=True)
    return path


# ------------------------------------------------------------------------------------------------
# 1. one bright pixel, a huge pixel value or a huge gain never stops a batch

@pytest.mark.parametrize("pixel, gain", [(4e5, 5520.0), (3e38, 4.0), (50.0, 1e30)])
def test_one_bright_pixel_or_huge_gain_does_not_stop_the_batch(model, pixel, gain):
    x = galaxies(4, seed=2)
    x[1, 1, 8, 8] = pixel
    gains = np.full(4, 4.0)
    gains[1] = gain
    meta = Table({"gain": gains, "sky": np.full(4, 20.0)}, meta={"BANDS": "g,r,i"})
    cut = read_cutouts(x, meta=meta)  # per-row values: a Table (a dict is header-like)
    t = galguard.check(cut, model=model, **FAST)
    assert len(t) == 4 and np.all(t["error"] == "")
    # counts past the compiled samplers' 2**31 are thinned too (numpy's exact int64 binomial,
    # the normal approximation past 2**53): every row has its noise verdict
    assert np.all(np.isfinite(t["noise_flip_rate"]))
    assert not np.any(t["flags"] & int(Flag.NOISE_SKIPPED))
    assert t["pred_label"][1] >= 0  # the row still has its prediction and attack


def test_counts_past_the_compiled_range_are_thinned_exactly_and_deterministically():
    """A 4e5 e-/s pixel at gain 5520 (2.2e9 electrons, past 2**31): Binomial(k, p) mean and
    variance within 5 standard errors over realisations; the same draws whatever the batch."""
    import torch

    from galguard.robustness import degrade

    k = 4e5 * 5520.0
    img = torch.zeros((1, 1, 4, 4))
    img[0, 0, 1, 2] = 4e5
    p = 0.1
    vals = np.array([float(degrade(img, gain=5520.0, sky=0.0, p=p, seed=3, realisation=r)
                           [0, 0, 1, 2]) * 5520.0 * p for r in range(400)])
    mean, var = k * p, k * p * (1 - p)
    assert abs(vals.mean() - mean) < 5 * np.sqrt(var / len(vals))
    assert abs(vals.var() / var - 1) < 5 * np.sqrt(2 / len(vals))
    # batch independence: the row keyed 7 gets the same draw alone or in a batch of three
    three = torch.cat([torch.zeros_like(img), img, img * 0.5])
    a = degrade(img, gain=5520.0, sky=0.0, p=p, seed=3, index=[7])
    b = degrade(three, gain=5520.0, sky=0.0, p=p, seed=3, index=[6, 7, 8])
    assert torch.equal(a[0], b[1])


def test_bright_pixel_in_a_batch_run_writes_the_catalog_and_resumes(model_path, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    x = galaxies(3, seed=4)
    x[2, 0, 3, 3] = 4e5
    for i in range(3):
        write(d / f"g{i}.fits", x[i], GAIN=5520.0 if i == 2 else 4.0)
    out = tmp_path / "cat.parquet"
    rc = cli.main(["check", str(d), "-o", str(out), "--model", str(model_path), "--no-onepixel",
                   "--noise-realisations", "2", "--quiet"])
    assert rc == cli.EXIT_OK
    t = read_catalog(out)
    assert len(t) == 3 and not np.any(t["flags"] & int(Flag.NOISE_SKIPPED))
    assert np.all(np.isfinite(t["noise_flip_rate"]))


@pytest.mark.parametrize("cards", [{"GAIN": 0.0}, {"GAIN": -3.0}, {"SKYLEVEL": -1e6}])
def test_unusable_gain_or_sky_is_flagged_not_silent(model, tmp_path, cards):
    p = write(tmp_path / "g.fits", galaxies(1, seed=5)[0], **cards)
    t = galguard.check([str(p)], model=model, **FAST)
    assert t["error"][0] == ""
    assert t["flags"][0] & int(Flag.NOISE_SKIPPED) and np.isnan(t["noise_flip_rate"][0])


def test_a_check_that_fails_on_one_row_leaves_the_others(model, monkeypatch):
    """The guard below every check: if a chunk fails, its rows are retried one by one and only
    the failing row becomes an error row."""
    from galguard.checks import base

    real = base.Prediction.run

    def flaky(self, m, ctx):
        if bool((ctx.images[:, 0, 0, 0] == 1234.5).any()):
            raise RuntimeError("boom")
        return real(self, m, ctx)

    monkeypatch.setattr(base.Prediction, "run", flaky)
    x = galaxies(3, seed=6)
    x[1, 0, 0, 0] = 1234.5
    cut = read_cutouts(x, meta={"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"})
    t = galguard.check(cut, model=model, **FAST)
    assert len(t) == 3
    assert "boom" in t["error"][1] and t["flags"][1] & int(Flag.BAD_INPUT)
    assert t["error"][0] == "" and t["error"][2] == "" and t["pred_label"][2] >= 0


def test_a_model_that_cannot_take_the_input_gives_row_errors_naming_it(tmp_path):
    class Wrong(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(7, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    cut = read_cutouts(galaxies(2), meta={"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"})
    t = galguard.check(cut, model=Wrong(), **FAST)
    assert len(t) == 2 and np.all(t["flags"] & int(Flag.BAD_INPUT))
    assert "model Wrong" in t["error"][0] and f"(3, {SIZE}, {SIZE})" in t["error"][0]


# ------------------------------------------------------------------------------------------------
# 2. two runs on one catalog; 11. only regular files are replaced; 12. a damaged journal

def cutout_files(d, n=7, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    x = galaxies(n, seed)
    return [write(d / f"g{i:02d}.fits", x[i], OBJID=100 + i) for i in range(n)]


def check_argv(model_path, inputs, out, *more):
    return ["check", str(inputs), "-o", str(out), "--model", str(model_path), "--no-onepixel",
            "--noise-realisations", "2", "--chunk-size", "3", "--quiet", *more]


def interrupted(monkeypatch, argv, after=1):
    """Run ``galguard check`` and stop it (as a crash would) after ``after`` chunks."""
    from galguard.catalog import Journal

    real = Journal.write_chunk
    calls = []

    def write_then_die(self, index, table, **kw):
        if len(calls) >= after:
            raise RuntimeError("simulated crash")
        calls.append(index)
        return real(self, index, table, **kw)

    monkeypatch.setattr(Journal, "write_chunk", write_then_die)
    assert cli.main(argv) == cli.EXIT_FAILURE
    monkeypatch.setattr(Journal, "write_chunk", real)


def same_rows(a, b):
    assert a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_a_second_run_on_the_same_catalog_is_refused_naming_the_holder(model_path, tmp_path,
                                                                      capsys):
    from galguard.catalog import Journal

    d = tmp_path / "in"
    cutout_files(d, 4)
    out = tmp_path / "cat.parquet"
    holder = Journal(out, manifest={"config_hash": "x", "inputs_hash": "y"})
    holder.lock()  # another run holds the catalog
    try:
        assert cli.main(check_argv(model_path, d, out)) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "being written by another galguard check" in err and str(os.getpid()) in err
        assert cli.main(check_argv(model_path, d, out, "--resume")) == cli.EXIT_USAGE
        assert not out.exists()
    finally:
        holder.unlock()
    assert cli.main(check_argv(model_path, d, out)) == cli.EXIT_OK  # free again


@pytest.mark.slow
def test_two_concurrent_processes_never_mix_rows(model_path, tmp_path):
    d = tmp_path / "in"
    cutout_files(d, 12)
    out = tmp_path / "cat.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # noise with many realisations: run A lasts long enough for run B to start meanwhile
    cmd = [sys.executable, "-m", "galguard", *check_argv(model_path, d, out, "--seed", "3"),
           "--noise-realisations", "400", "--batch-size", "4"]
    a = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "cat.parquet.partial" / "lock"
    for _ in range(600):
        if lock.exists() and lock.read_text().strip():
            break
        if a.poll() is not None:
            break
        import time
        time.sleep(0.05)
    cmd_b = [c if c != "3" else "4" for c in cmd]
    b = subprocess.run(cmd_b, env=env, capture_output=True, text=True)
    a.wait(timeout=300)
    # B is refused: by the lock while A runs (or, had A finished first, because the catalog
    # exists); it never writes a row into A's catalog
    assert b.returncode == cli.EXIT_USAGE, b.stderr
    assert "another galguard check" in b.stderr or "exists" in b.stderr
    assert a.returncode == cli.EXIT_OK, a.stderr.read() if a.stderr else ""
    t = read_catalog(out)
    assert len(t) == 12 and t.meta["seed"] == 3
    alone = galguard.check(sorted(str(p) for p in d.iterdir()), model=str(model_path), seed=3,
                           onepixel=False, noise_realisations=400, chunk_size=3)
    assert np.array_equal(np.asarray(t["noise_flip_rate"]), np.asarray(alone["noise_flip_rate"]),
                          equal_nan=True)


def test_a_chunk_of_another_run_a_truncated_chunk_and_a_broken_manifest_are_redone(
        model_path, tmp_path, monkeypatch):
    d = tmp_path / "in"
    cutout_files(d, 7)
    ref = tmp_path / "ref.parquet"
    assert cli.main(check_argv(model_path, d, ref, "--seed", "3")) == cli.EXIT_OK
    out, other = tmp_path / "a.parquet", tmp_path / "b.parquet"
    interrupted(monkeypatch, check_argv(model_path, d, out, "--seed", "3"), after=2)
    interrupted(monkeypatch, check_argv(model_path, d, other, "--seed", "4"), after=1)
    ja, jb = tmp_path / "a.parquet.partial", tmp_path / "b.parquet.partial"
    # chunk 0 from the seed-4 run, chunk 1 truncated, the manifest broken
    (ja / "chunk-000000.parquet").write_bytes((jb / "chunk-000000.parquet").read_bytes())
    c1 = ja / "chunk-000001.parquet"
    c1.write_bytes(c1.read_bytes()[:100])
    (ja / "manifest.json").write_text("{not json")
    assert cli.main(check_argv(model_path, d, out, "--seed", "3", "--resume")) == cli.EXIT_OK
    same_rows(read_catalog(out), read_catalog(ref))


def test_an_input_rewritten_with_the_same_size_and_mtime_is_checked_again(model_path, tmp_path,
                                                                         monkeypatch):
    d = tmp_path / "in"
    paths = cutout_files(d, 7)
    out = tmp_path / "a.parquet"
    interrupted(monkeypatch, check_argv(model_path, d, out), after=1)
    st = os.stat(paths[0])
    x = galaxies(1, seed=99)[0]
    write(paths[0], x, OBJID=100)  # same layout, so the same size
    assert os.stat(paths[0]).st_size == st.st_size
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli.main(check_argv(model_path, d, out, "--resume")) == cli.EXIT_OK
    fresh = tmp_path / "fresh.parquet"
    assert cli.main(check_argv(model_path, d, fresh)) == cli.EXIT_OK
    same_rows(read_catalog(out), read_catalog(fresh))


def test_resume_with_another_format_is_refused(model_path, tmp_path, monkeypatch, capsys):
    d = tmp_path / "in"
    cutout_files(d, 7)
    out = tmp_path / "a.cat"
    interrupted(monkeypatch, check_argv(model_path, d, out, "--format", "parquet"), after=1)
    capsys.readouterr()
    assert cli.main(check_argv(model_path, d, out, "--format", "ecsv", "--resume")) == \
        cli.EXIT_USAGE
    assert "catalog_format" in capsys.readouterr().err


def test_overwrite_never_replaces_a_device_or_fifo(model_path, tmp_path, capsys):
    d = tmp_path / "in"
    cutout_files(d, 2)
    fifo = tmp_path / "out.parquet"
    os.mkfifo(fifo)
    assert cli.main(check_argv(model_path, d, fifo, "--overwrite")) == cli.EXIT_USAGE
    assert "not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo()
    if os.path.exists("/dev/null") and os.access("/dev", os.W_OK):
        assert cli.main(check_argv(model_path, d, "/dev/null", "--overwrite",
                                   "--format", "parquet")) == cli.EXIT_USAGE
        assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_failure_message_mentions_kept_chunks_only_when_there_are_some(model_path, tmp_path,
                                                                       monkeypatch, capsys):
    d = tmp_path / "in"
    cutout_files(d, 7)
    interrupted(monkeypatch, check_argv(model_path, d, tmp_path / "a.parquet"), after=0)
    err = capsys.readouterr().err
    assert "simulated crash" in err and "--resume" not in err
    interrupted(monkeypatch, check_argv(model_path, d, tmp_path / "b.parquet"), after=1)
    assert "1 finished chunk(s) are kept; run again with --resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 3-6. every byte read as FITS says: BLANK, scaled BITPIX=64, huge OBJID, corrupt gzip, bombs

@pytest.mark.parametrize("backend", ["fitsio", "astropy"])
def test_blank_pixels_of_integer_images_are_masked_and_all_blank_is_bad(tmp_path, backend):
    d = (np.arange(3 * 16 * 16).reshape(3, 16, 16) % 100 + 10).astype(np.int16)
    d[0, 2, 3] = -999
    p = write(tmp_path / "b.fits", d, BLANK=-999)
    c = read_cutouts(str(p), backend=backend)
    assert c.mask[0, 0, 2, 3] and c.data[0, 0, 2, 3] == 0
    assert c.meta["flags"][0] & int(Flag.NONFINITE_MASKED) and c.meta["error"][0] == ""
    assert not c.mask[0, 0, 2, 4] and c.data[0, 0, 2, 4] == d[0, 2, 4]
    q = write(tmp_path / "all.fits", np.full((3, 16, 16), -999, np.int16), BLANK=-999)
    c = read_cutouts(str(q), backend=backend)
    assert c.meta["flags"][0] & int(Flag.BAD_INPUT)


@pytest.mark.parametrize("backend", ["fitsio", "astropy"])
def test_scaled_bitpix64_images_are_scaled_in_float64(tmp_path, backend):
    raw = np.full((3, 16, 16), 11, np.int64)
    raw[0, 0, :5] = [0, 1, 7, 10999, 123456]
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BANDS"] = "g,r,i"
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.001, 0.5
    hdu.writeto(tmp_path / "s.fits")
    c = read_cutouts(str(tmp_path / "s.fits"), backend=backend)
    np.testing.assert_allclose(c.data[0, 0, 0, :5], raw[0, 0, :5] * 0.001 + 0.5, rtol=1e-6)


@pytest.mark.parametrize("backend", ["fitsio", "astropy"])
def test_an_objid_beyond_int64_keeps_the_pixels(tmp_path, backend):
    p = write(tmp_path / "id.fits", galaxies(1)[0], OBJID=2**70)
    c = read_cutouts(str(p), backend=backend)
    assert c.meta["error"][0] == "" and not c.meta["flags"][0] & int(Flag.BAD_INPUT)
    assert c.meta["id"][0] == 0  # unknown id: the row's position
    np.testing.assert_allclose(c.data[0], galaxies(1)[0], atol=1e-4)


def test_corrupt_or_bomb_gzip_files_are_bad_rows(tmp_path):
    p = write(tmp_path / "ok.fits", galaxies(1)[0])
    raw = p.read_bytes()
    gz = gzip.compress(raw)
    cases = {"ok": gz}
    b = bytearray(gz)
    mid = len(b) // 2
    b[mid:mid + 64] = bytes(x ^ 0xFF for x in b[mid:mid + 64])
    cases["flipped"] = bytes(b)
    b = bytearray(gz)
    b[-8] ^= 0xFF  # the CRC trailer
    cases["crc"] = bytes(b)
    cases["truncated"] = gz[:-20]
    cases["bomb"] = gzip.compress(raw + bytes(80 << 20))
    paths = []
    for name, data in cases.items():
        q = tmp_path / f"{name}.fits.gz"
        q.write_bytes(data)
        paths.append(str(q))
    c = read_cutouts(paths)
    bad = (np.asarray(c.meta["flags"]) & int(Flag.BAD_INPUT)) != 0
    assert list(bad) == [False, True, True, True, True]
    assert "corrupt gzip stream" in c.meta["error"][1] and "bomb" in c.meta["error"][4]


# ------------------------------------------------------------------------------------------------
# 7-8. odd paths and one @list grammar

def test_list_files_have_one_grammar_for_the_cli_and_the_api(tmp_path):
    from galguard.batch import expand_inputs

    d = tmp_path / "dir"
    paths = cutout_files(d, 3)
    lst = tmp_path / "l.txt"
    lst.write_bytes("\ufeff# a comment\n".encode("utf-8") + f"{paths[0]}  # trailing\n\n"
                    f"dir\n{d}/g0*.fits\nmissing.fits\n".encode())
    want = [str(paths[0]), *map(str, paths), *map(str, paths), str(tmp_path / "missing.fits")]
    assert expand_inputs([f"@{lst}"]) == want
    c = read_cutouts(f"@{lst}")
    assert list(c.meta["source"]) == want  # the API reads the list the same way
    assert c.meta["flags"][-1] & int(Flag.BAD_INPUT)  # a missing entry is one bad row
    nul = tmp_path / "nul.txt"
    nul.write_bytes(f"{paths[0]}\nbad\0name.fits\n".encode())
    c = read_cutouts(f"@{nul}")
    assert len(c) == 2 and c.meta["flags"][1] & int(Flag.BAD_INPUT)


def test_cli_odd_paths_are_usage_errors_or_bad_rows_never_tracebacks(model_path, tmp_path,
                                                                     capsys):
    bad_list = tmp_path / "latin1.txt"
    bad_list.write_bytes("caf\xe9.fits\n".encode("latin-1"))
    out = tmp_path / "o.parquet"
    assert cli.main(check_argv(model_path, f"@{bad_list}", out)) == cli.EXIT_USAGE
    assert "is not UTF-8" in capsys.readouterr().err
    d = tmp_path / "odd"
    cutout_files(d, 2)
    os.symlink(d / "loop.fits", d / "loop.fits")  # a link to itself
    os.symlink(tmp_path / "nowhere.fits", d / "dangling.fits")
    os.mkfifo(d / "pipe.fits")
    assert cli.main(check_argv(model_path, d, out)) == cli.EXIT_BAD_INPUTS
    t = read_catalog(out)
    errors = dict(zip((os.path.basename(s) for s in t["source"]), t["error"]))
    assert set(errors) == {"g00.fits", "g01.fits", "loop.fits", "dangling.fits", "pipe.fits"}
    assert errors["g00.fits"] == "" and errors["pipe.fits"] and errors["dangling.fits"]
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chmod(locked, 0)
        assert cli.main(check_argv(model_path, locked, out, "--overwrite")) == cli.EXIT_USAGE


# ------------------------------------------------------------------------------------------------
# 10. API inputs; 14. Ctrl-C

def test_check_takes_torch_tensors_like_arrays(model):
    x = galaxies(3, seed=8)
    a = galguard.check(x, model=model, read_kwargs={"meta": {"GAIN": 4.0, "SKYLEVEL": 20.0,
                                                             "BANDS": "g,r,i"}}, **FAST)
    t = galguard.check(torch.from_numpy(x), model=model,
                       read_kwargs={"meta": {"GAIN": 4.0, "SKYLEVEL": 20.0, "BANDS": "g,r,i"}},
                       **FAST)
    assert np.all(t["error"] == "")
    same_rows(t, a)


@pytest.mark.parametrize("device", ["nonsense", "cuda:99"])
def test_bad_device_names_the_argument(model, device, capsys, model_path, tmp_path):
    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")  # pragma: no cover
    with pytest.raises(GalguardValueError, match="device"):
        galguard.check(galaxies(1), model=str(model_path), device=device, **FAST)
    d = tmp_path / "in"
    cutout_files(d, 1)
    assert cli.main(check_argv(model_path, d, tmp_path / "o.parquet", "--device",
                               device)) == cli.EXIT_USAGE
    assert "device" in capsys.readouterr().err


@pytest.mark.parametrize("options, match", [
    ({"depth_fraction": "0.1"}, "depth_fraction must be a real number"),
    ({"seed": 2**64}, r"seed must be an integer in \[0, 18446744073709551615\]"),
])
def test_option_values_are_checked_before_any_work(model, options, match):
    with pytest.raises(GalguardValueError, match=match):
        galguard.check(galaxies(1), model=model, **options)


def test_read_cutouts_refuses_absurd_sizes():
    with pytest.raises(GalguardValueError, match="size"):
        read_cutouts(galaxies(1), size=10**5)


def test_ctrl_c_during_start_up_prints_one_line(monkeypatch, capsys):
    def interrupted_parser():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted_parser)
    assert cli.main(["check", "x", "-o", "y.parquet"]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.strip() == "galguard: interrupted" and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# 9. hostile or broken model files: a clear error naming the file and the field, exit 2

def _copy_model(model_path, d):
    import json
    import shutil

    d.mkdir(parents=True, exist_ok=True)
    w = d / "m.safetensors"
    shutil.copy(model_path, w)
    card = json.loads(model_path.with_suffix(".json").read_text())
    card["weights_file"] = "m.safetensors"
    (d / "m.json").write_text(json.dumps(card))
    return w, d / "m.json", card


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(bands=5), "bands must be a non-empty list"),
    (lambda c: c.update(input_size="abc"), "input_size must be an integer"),
    (lambda c: c.update(latent_dim=-1), "latent_dim must be an integer"),
    (lambda c: c.pop("classes"), "lacks the key 'classes'"),
    (lambda c: c.update(architecture="vit"), "architecture"),
])
def test_malformed_card_fields_are_named(model_path, tmp_path, edit, match):
    import json

    w, cpath, card = _copy_model(model_path, tmp_path / "m")
    edit(card)
    cpath.write_text(json.dumps(card))
    with pytest.raises(GalguardValueError, match=match):
        galguard.models.load(w)


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "must hold a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_a_card_that_is_not_an_object_is_named(model_path, tmp_path, content, match):
    w, cpath, _ = _copy_model(model_path, tmp_path / "m")
    cpath.write_text(content)
    with pytest.raises(GalguardValueError, match=match):
        galguard.models.load(w)


def test_broken_weights_are_named(model_path, tmp_path, capsys):
    import json
    import struct

    from galguard.models.store import sha256_file

    w, cpath, card = _copy_model(model_path, tmp_path / "m")
    # a safetensors prefix with a garbage body; a header declaring a 4 TB tensor
    header = json.dumps({"x": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}})
    for body in (w.read_bytes()[:200] + b"\x80\x04garbage",
                 struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64):
        w.write_bytes(body)
        card["sha256"] = sha256_file(w)
        cpath.write_text(json.dumps(card))
        with pytest.raises(GalguardValueError, match="m.safetensors"):
            galguard.models.load(w)
    d = tmp_path / "in"
    cutout_files(d, 1)
    assert cli.main(check_argv(w, d, tmp_path / "o.parquet")) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "m.safetensors" in err and "--resume" not in err


def test_missing_tensors_are_named(model_path, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from galguard.models.store import sha256_file

    w, cpath, card = _copy_model(model_path, tmp_path / "m")
    tensors = load_file(str(w))
    del tensors["preprocess.scale"]
    save_file(tensors, str(w))
    card["sha256"] = sha256_file(w)
    cpath.write_text(json.dumps(card))
    with pytest.raises(GalguardValueError, match="lack the tensor 'preprocess.scale'"):
        galguard.models.load(w)


def test_a_fifo_as_weights_or_card_never_hangs(model_path, tmp_path):
    w, cpath, _ = _copy_model(model_path, tmp_path / "m")
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    (tmp_path / "f.json").write_text(cpath.read_text())
    with pytest.raises(GalguardValueError, match="not a regular file"):
        galguard.models.load(fifo)
    cpath.unlink()
    os.mkfifo(cpath)
    with pytest.raises(GalguardValueError, match="not a regular file"):
        galguard.models.load(w)


# ------------------------------------------------------------------------------------------------
# 13. determinism as the README states it, with the shipped model

@pytest.mark.slow
def test_batch_and_chunk_sizes_change_no_verdict_with_the_shipped_model():
    from galguard.sim import sample_path

    files = sorted(str(p) for p in sample_path("y10").iterdir())[:8]
    a = galguard.check(files, preset="fast", noise_realisations=4, seed=2)
    b = galguard.check(files, preset="fast", noise_realisations=4, seed=2, batch_size=2,
                       chunk_size=3, attack_batch_size=7)
    for name in ("pred_label", "onepixel_success", "flags", "fragile", "noise_flip_rate",
                 "onepixel_label"):
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=True), name
    np.testing.assert_allclose(np.asarray(a["probs"]), np.asarray(b["probs"]), atol=1e-6)


def test_a_full_disk_gives_one_clear_line(model_path, tmp_path, monkeypatch, capsys):
    import errno

    from galguard.catalog import Journal

    def full(self, index, table, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Journal, "write_chunk", full)
    d = tmp_path / "in"
    cutout_files(d, 2)
    assert cli.main(check_argv(model_path, d, tmp_path / "o.parquet")) == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err

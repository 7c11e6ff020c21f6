"""``galguard check`` at scale: worker processes and Dask clusters give the single-process
catalog; a run killed with SIGKILL and resumed loses and repeats no row."""

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from galguard import batch, cli
from galguard.catalog import journal_dir, read_catalog

_spec = importlib.util.spec_from_file_location("_cli_helpers", Path(__file__).with_name(
    "test_cli.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _h.make_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory, model_path):
    """Three cutouts, every check on (attack included), chunks of one; the reference run."""
    d = tmp_path_factory.mktemp("attack")
    files = _h.write_files(d / "in", 3, seed=7)
    opts = ["--model", str(model_path), "--noise-realisations", "3", "--chunk-size", "1",
            "--seed", "11", "--quiet"]
    ref = d / "single.parquet"
    assert cli.main(["check", str(d / "in"), "-o", str(ref), *opts]) == 0
    return d, files, opts, read_catalog(ref)


def _same(a, b):
    _h.assert_same_rows(a, b)
    assert dict(a.meta) == dict(b.meta)


@pytest.mark.slow
def test_worker_processes_give_the_single_process_catalog(attack_run):
    d, files, opts, ref = attack_run
    assert ref["onepixel_queries"].min() > 0  # the attack ran
    out = d / "pool.parquet"
    assert cli.main(["check", str(d / "in"), "-o", str(out), "--workers", "2", *opts]) == 0
    _same(ref, read_catalog(out))


@pytest.mark.slow
def test_dask_local_cluster_gives_the_single_process_catalog(attack_run):
    d, files, opts, ref = attack_run
    out = d / "dask-local.parquet"
    assert cli.main(["check", str(d / "in"), "-o", str(out), "--dask-local", "--workers", "2",
                     *opts]) == 0
    _same(ref, read_catalog(out))


@pytest.mark.slow
def test_dask_scheduler_address_gives_the_single_process_catalog(attack_run):
    from distributed import LocalCluster

    d, files, opts, ref = attack_run
    out = d / "dask-remote.parquet"
    threads = torch.get_num_threads()
    # Threads in this process, reached over TCP on loopback as a remote cluster would be.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                      protocol="tcp://", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        try:
            rc = cli.main(["check", str(d / "in"), "-o", str(out), "--dask-scheduler",
                           cluster.scheduler_address, *opts])
        finally:
            torch.set_num_threads(threads)  # the in-process workers set this process's threads
    assert rc == 0
    _same(ref, read_catalog(out))


@pytest.mark.slow
def test_local_dask_workers_start_without_dasks_malloc_trim_threshold(monkeypatch):
    # Dask's nanny default MALLOC_TRIM_THRESHOLD_=65536 made the checks take 2.4x the CPU time.
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    ex = batch._Dask({"tiny": "model"}, None, None, local_workers=1)
    try:
        assert len(ex.client.nthreads()) == 1
        assert batch.workers_with_malloc_trim(ex.client) == {}
    finally:
        ex.close()


def test_remote_workers_with_malloc_trim_threshold_are_reported(monkeypatch, caplog):
    from distributed import LocalCluster

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # seen by in-process workers
    threads = torch.get_num_threads()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1",
                      protocol="tcp://", dashboard_address=None) as cluster:
        try:
            with caplog.at_level(logging.WARNING, logger="galguard.batch"):
                ex = batch._Dask({"tiny": "model"}, None, None,
                                 address=cluster.scheduler_address)
                ex.close()
        finally:
            torch.set_num_threads(threads)
    msg = [r.getMessage() for r in caplog.records if "MALLOC_TRIM_THRESHOLD_" in r.getMessage()]
    assert len(msg) == 1 and "1 of the Dask workers" in msg[0] and "=65536" in msg[0]
    assert "pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null" in msg[0]


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_repeats_no_row(tmp_path, model_path):
    n = 60
    files = _h.write_files(tmp_path / "in", n, seed=3)
    opts = ["--model", str(model_path), "--no-onepixel", "--noise-realisations", "10",
            "--chunk-size", "1", "--seed", "5", "--quiet"]
    out = tmp_path / "killed.parquet"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "galguard", "check", str(tmp_path / "in"),
                             "-o", str(out), *opts], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    jdir = journal_dir(out)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if jdir.exists() and any(jdir.glob("chunk-*.parquet")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    done = sorted(jdir.glob("chunk-*.parquet"))
    assert 1 <= len(done) < n  # killed in the middle
    assert cli.main(["check", str(tmp_path / "in"), "-o", str(out), "--resume", *opts]) == 0
    assert not jdir.exists()
    resumed = read_catalog(out)
    ref_path = tmp_path / "uninterrupted.parquet"
    assert cli.main(["check", str(tmp_path / "in"), "-o", str(ref_path), *opts]) == 0
    ref = read_catalog(ref_path)
    assert len(resumed) == n
    assert list(resumed["id"]) == list(range(1000, 1000 + n))  # none lost, none repeated
    assert list(resumed["source"]) == [str(p) for p in files]
    _same(ref, resumed)
    assert np.isfinite(np.asarray(resumed["noise_flip_rate"])).all()

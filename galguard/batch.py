"""Batch checking of many FITS cutouts: input expansion, chunk scheduling (in this process, a
local process pool or a Dask cluster) and the resumable journal.

This is the engine behind ``galguard check``. The client process reads the inputs in order with
`galguard.io.iter_cutouts` (bounded memory: a few chunks at a time), hands each chunk with its
global row offset to an executor, and writes each finished chunk to the journal
(`galguard.catalog.Journal`). When every chunk is in, the catalog is assembled in input order and
written atomically.

Results are keyed on the global row index (every random draw of `galguard.check` is keyed on
(seed, row, realisation/generation)), so the catalog does not depend on the executor, the number
of workers or the order in which chunks finish. Workers need no access to the input files: the
client sends them the chunk data and, once, the loaded model.
"""

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import GalguardValueError
from .flags import Flag, count_rows
from .io._paths import expand_inputs

__all__ = ["expand_inputs", "run_batch", "BatchResult", "check_chunk", "catalog_columns",
           "config_hash", "OutputExists"]

log = logging.getLogger(__name__)


class OutputExists(GalguardValueError):
    """The catalog exists and neither overwriting nor resuming was asked for."""


@dataclasses.dataclass
class BatchResult:
    """What `run_batch` did.

    Attributes
    ----------
    path : pathlib.Path
        The catalog written.
    n_rows : int
        Rows in the catalog (one per input cutout).
    n_bad : int
        Rows flagged BAD_INPUT.
    n_fragile : int
        Rows with ``fragile`` set.
    n_chunks : int
        Chunks in the run.
    n_resumed : int
        Chunks taken from the journal of an earlier, interrupted run.
    per_class : dict
        Predicted class name -> number of rows (checked rows only).
    seconds : float
        Wall-clock time of the run.
    domain_shift : dict
        The per-batch domain-shift test over the whole run (also in the catalog meta).
    verdicts : dict
        With ``certify``: exact one-pixel verdict ("certified", "flip", "unknown") -> number
        of checked rows; empty otherwise.
    """

    path: Path
    n_rows: int
    n_bad: int
    n_fragile: int
    n_chunks: int
    n_resumed: int
    seconds: float
    per_class: dict = dataclasses.field(default_factory=dict)
    domain_shift: dict = dataclasses.field(default_factory=dict)
    verdicts: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# one chunk
# --------------------------------------------------------------------------------------------
def catalog_columns():
    """Columns of a batch catalog: `galguard.checks.COLUMNS` with ``hdu`` and ``row`` after
    ``source`` (where each cutout came from) and ``true_label`` at the end (-1 unknown)."""
    from .checks import COLUMNS

    cols = list(COLUMNS)
    i = cols.index("source") + 1
    return tuple(cols[:i] + ["hdu", "row"] + cols[i:] + ["true_label"])


def check_chunk(chunk, config, model, *, offset, device=None):
    """Check one chunk of cutouts; the rows of the batch catalog.

    Parameters
    ----------
    chunk : galguard.io.Cutouts
    config : galguard.CheckConfig
    model : galguard.models.GalaxyClassifier
    offset : int
        Global row index of the chunk's first cutout (keys every random draw).
    device : str, optional

    Returns
    -------
    astropy.table.Table
        Columns `catalog_columns`.
    """
    from .checks import check_cutouts

    n_classes = len(getattr(model, "classes", ())) or None
    t = check_cutouts(chunk, config, model, offset=offset, device=device, n_classes=n_classes)
    meta = chunk.meta
    n = len(t)
    t["hdu"] = np.asarray(meta["hdu"]).astype(str) if n else np.zeros(0, "U1")
    t["row"] = np.asarray(meta["row"], np.int64)
    t["true_label"] = (np.asarray(meta["true_label"], np.int64) if "true_label" in meta.colnames
                       else np.full(n, -1, np.int64))
    for name in ("source", "hdu", "error", "ood_reason"):  # fixed-width unicode, empty too
        if t[name].dtype.kind != "U":
            t[name] = np.asarray(t[name]).astype(str)
    return t[list(catalog_columns())]


_WORKER = {}


def _init_worker(model, device, threads):
    import torch
    torch.set_num_threads(int(threads))
    _WORKER["model"] = model.to(device) if device else model
    _WORKER["device"] = device


def _pool_task(chunk, config, offset):
    return check_chunk(chunk, config, _WORKER["model"], offset=offset,
                       device=_WORKER["device"])


def _dask_task(chunk, config, model, offset, device):
    return check_chunk(chunk, config, model, offset=offset, device=device)


def _set_torch_threads(n):
    import torch
    torch.set_num_threads(int(n))
    return int(n)


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (its default
# ``distributed.nanny.pre-spawn-environ``). Any explicit value turns off glibc's dynamic mmap
# threshold, so every tensor above 128 KiB is mapped and unmapped again: in the checks that is
# millions of page faults and 2.4x the CPU time of the same work in one process (BENCHMARKS.md).
_TRIM_VAR = "MALLOC_TRIM_THRESHOLD_"


def _malloc_trim_threshold():
    return os.environ.get(_TRIM_VAR)


def workers_with_malloc_trim(client):
    """``{worker address: value}`` of the workers of ``client`` whose environment sets
    ``MALLOC_TRIM_THRESHOLD_`` (empty when none does)."""
    return {w: v for w, v in client.run(_malloc_trim_threshold).items() if v is not None}


# --------------------------------------------------------------------------------------------
# executors: submit(k, chunk, offset) -> future; all return concurrent/Dask futures
# --------------------------------------------------------------------------------------------
class _Immediate:
    slots = 1

    def __init__(self, model, config, device):
        self.model, self.config, self.device = model, config, device

    def submit(self, chunk, offset):
        f = cf.Future()
        try:
            f.set_result(check_chunk(chunk, self.config, self.model, offset=offset,
                                     device=self.device))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(exc)
        return f

    def wait(self, pending):
        return list(pending), []

    def close(self):
        pass


class _Pool:
    def __init__(self, model, config, device, workers, threads):
        self.slots = 2 * workers
        self.config = config
        ctx = multiprocessing.get_context("spawn")
        self.ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                         initializer=_init_worker,
                                         initargs=(model, device, threads))

    def submit(self, chunk, offset):
        return self.ex.submit(_pool_task, chunk, self.config, offset)

    def wait(self, pending):
        done, rest = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        return list(done), list(rest)

    def close(self):
        self.ex.shutdown(wait=True, cancel_futures=True)


class _Dask:
    def __init__(self, model, config, device, *, address=None, local_workers=None, threads=1):
        import dask
        from distributed import Client, LocalCluster

        self.cluster = None
        if address is None:
            quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
            # Our own workers start without Dask's MALLOC_TRIM_THRESHOLD_ (see _TRIM_VAR); one
            # set in this process's environment is still inherited.
            with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_TRIM_VAR}": None}):
                self.cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address=None,
                                            silence_logs=logging.WARNING if quiet else False)
            self.client = Client(self.cluster)
        else:
            self.client = Client(address)
        try:
            self.client.run(_set_torch_threads, threads)
            trimmed = workers_with_malloc_trim(self.client)
            if trimmed and address is not None:
                log.warning("%d of the Dask workers run with %s=%s (Dask's default for workers "
                            "started by a nanny); it can double the CPU time of the checks. "
                            "Start the workers with the Dask config "
                            "distributed.nanny.pre-spawn-environ.%s: null",
                            len(trimmed), _TRIM_VAR, min(trimmed.values()),
                            _TRIM_VAR)
            n = sum(self.client.nthreads().values())
            if not n:
                raise GalguardValueError(f"the Dask cluster at {address!r} has no workers")
            self.slots = 2 * n
            self.config, self.device = config, device
            self.model = self.client.scatter(model, broadcast=True)
            log.info("Dask cluster %s: %d worker threads", self.client.scheduler.address, n)
        except BaseException:
            self.close()
            raise

    def submit(self, chunk, offset):
        return self.client.submit(_dask_task, chunk, self.config, self.model, offset,
                                  self.device, pure=False)

    def wait(self, pending):
        from distributed import wait
        res = wait(pending, return_when="FIRST_COMPLETED")
        return list(res.done), list(res.not_done)

    def close(self):
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def config_hash(config, model_sha256):
    """sha256 of what decides the catalog rows: the config (but ``batch_size``, which changes
    only speed) and the model weights."""
    d = config.to_dict()
    d.pop("batch_size", None)
    doc = json.dumps({"config": d, "model_sha256": model_sha256}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _resolved(p):
    try:
        return os.path.realpath(p)
    except OSError:
        return os.path.abspath(p)


def run_batch(paths, output, *, config, model="default", device=None, format=None, workers=1,
              dask_scheduler=None, dask_local=False, resume=False, overwrite=False,
              progress=False):
    """Check the cutouts of ``paths`` and write the catalog ``output`` (resumable).

    Parameters
    ----------
    paths : list of str
        Input FITS files in order (see `expand_inputs`).
    output : str or path-like
        Catalog path; ``output + '.partial'`` is the journal directory while the run goes on.
    config : galguard.CheckConfig
    model : str or path-like, optional
        Model name or path (`galguard.models.load`).
    device : str, optional
        Where to compute ("cpu", "cuda", "cuda:1"); default CPU.
    format : {"fits", "parquet", "ecsv", "csv"}, optional
        Default: from the suffix of ``output``.
    workers : int, optional
        Worker processes on this machine (1: in this process). With ``dask_local`` the number
        of Dask workers.
    dask_scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``): chunks go to its workers.
    dask_local : bool, optional
        Start a local Dask cluster of ``workers`` processes (loopback only).
    resume : bool, optional
        Continue from the journal of an interrupted run with the same inputs and options.
    overwrite : bool, optional
        Replace an existing catalog (and any old journal).
    progress : bool, optional
        Show a progress bar (tqdm, on stderr) with rate and ETA.

    Returns
    -------
    BatchResult

    Raises
    ------
    OutputExists
        ``output`` exists and neither ``overwrite`` nor ``resume`` was given, or ``resume`` was
        given for a finished catalog.
    GalguardValueError
        ``output`` is one of the inputs; invalid options; a journal that belongs to another run.
    """
    from ._files import check_replaceable
    from .catalog import Journal, format_from_path, hash_inputs, inputs_digest, journal_dir
    from .checks import resolve_model, table_meta

    t0 = time.perf_counter()
    output = Path(output)
    fmt = format_from_path(output, format)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise GalguardValueError(f"workers must be an integer >= 1, got {workers!r}")
    if dask_scheduler and dask_local:
        raise GalguardValueError("dask_scheduler and dask_local exclude each other; got both")
    if resume and overwrite:
        raise GalguardValueError("resume and overwrite exclude each other; got both")
    out_real = _resolved(output)
    for p in paths:
        if _resolved(p) == out_real or _resolved(p) == _resolved(journal_dir(output)):
            raise GalguardValueError(f"output {str(output)!r} is one of the inputs; refusing to "
                                     f"write over an input")
    if output.is_dir():
        raise GalguardValueError(f"output {str(output)!r} is a directory; give a file name")
    check_replaceable(output, name="output")  # never a device, FIFO or other special file
    if not output.parent.exists():
        raise GalguardValueError(f"output {str(output)!r}: the directory "
                                 f"{str(output.parent)!r} does not exist")
    jdir = journal_dir(output)
    if output.exists() and not overwrite:
        if not resume:
            raise OutputExists(f"output {str(output)!r} exists; use --overwrite to replace it "
                               f"or --resume to continue an interrupted run")
        if not (jdir / "manifest.json").exists():
            raise OutputExists(f"output {str(output)!r} exists and has no journal "
                               f"({str(jdir)!r}): that run finished; use --overwrite to "
                               f"compute it again")

    module, name, sha = resolve_model(model, device=device)
    read_kwargs = {"size": tuple(module.input_hw), "bands": tuple(module.bands),
                   "mask_bits": config.mask_bits}
    inputs_hash = hash_inputs(paths)
    meta = table_meta(config, name, sha, module)
    meta["inputs_hash"] = inputs_hash
    meta["n_input_files"] = len(paths)
    manifest = {"config_hash": config_hash(config, sha), "inputs_hash": inputs_hash,
                "chunk_size": int(config.chunk_size), "n_input_files": len(paths),
                "columns": list(catalog_columns()), "catalog_format": fmt}
    journal = Journal(output, manifest=manifest)
    journal.lock()  # before anything is touched: a second run on this catalog stops here
    try:
        return _run_locked(journal, paths, output, fmt, config, module, meta, read_kwargs,
                           device, workers, dask_scheduler, dask_local, resume, progress, t0,
                           inputs_digest)
    finally:
        journal.unlock()


def _domain_shift(journal, n_chunks, module, config):
    """The per-batch domain-shift test over the whole run (every journaled chunk's flags)."""
    import pyarrow.parquet as pq

    from .ood.reference import domain_shift_of

    flags = [pq.read_table(str(journal.chunk_path(k)), columns=["flags"])["flags"].to_numpy()
             for k in range(n_chunks)]
    return domain_shift_of(np.concatenate(flags) if flags else np.zeros(0, np.int64), module,
                           config.domain_shift_alpha)


def _run_locked(journal, paths, output, fmt, config, module, meta, read_kwargs, device, workers,
                dask_scheduler, dask_local, resume, progress, t0, inputs_digest):
    """`run_batch` once the journal's lock is held."""
    from .catalog import CatalogWriter
    from .io import iter_cutouts

    done = journal.open(resume=resume)
    if resume:
        log.info("resuming: %d finished chunk(s) in %s", len(done), journal.dir)
        for stale in output.parent.glob(f".{output.name}.*.tmp"):  # a final write cut short
            stale.unlink(missing_ok=True)

    if dask_scheduler or dask_local:
        threads = 1
        executor = _Dask(module, config, device, address=dask_scheduler or None,
                         local_workers=workers, threads=threads)
    elif workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = _Pool(module, config, device, workers, threads)
    else:
        executor = _Immediate(module, config, device)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(paths), unit="cutout", desc="galguard check", file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.1)
    n_rows = n_bad = n_fragile = 0
    n_chunks = 0
    fi = 0  # index in paths of the file the reader has reached
    pending = {}
    cs = int(config.chunk_size)

    def finish(futures):
        for f in futures:
            k, n, digest = pending.pop(f)
            table = f.result()
            if len(table) != n:
                raise RuntimeError(f"chunk {k}: {len(table)} rows back for {n} sent")
            journal.write_chunk(k, table, inputs=digest)
            if bar is not None:
                bar.update(n)
            log.debug("chunk %d journaled (%d rows)", k, n)

    try:
        reader = iter_cutouts(paths, chunk_size=cs, **read_kwargs)
        for k, chunk in enumerate(reader):
            n = len(chunk)
            n_chunks += 1
            n_rows += n
            if bar is not None and n:
                # Rows per file so far -> estimated total, for the ETA (exact for files of one
                # cutout; stacks are only known once opened).
                last = str(chunk.meta["source"][-1])
                try:
                    fi = paths.index(last, fi)
                except ValueError:
                    pass
                est = max(n_rows, int(round(n_rows / (fi + 1) * len(paths))))
                if est != bar.total:
                    bar.total = est
                    bar.refresh()
            digest = inputs_digest(chunk.meta["source"])
            if k in done:
                if journal.chunk_inputs_digest(k) == digest:
                    if bar is not None:
                        bar.update(n)
                    continue
                log.warning("chunk %d: an input file changed since it was journaled; it is "
                            "computed again", k)
                journal.drop(k)
                done.discard(k)
            if bar is None:
                log.info("chunk %d: rows %d-%d", k, k * cs, k * cs + n - 1)
            pending[executor.submit(chunk, k * cs)] = (k, n, digest)
            del chunk
            while len(pending) >= executor.slots:
                got, _ = executor.wait(list(pending))
                finish(got)
        while pending:
            got, _ = executor.wait(list(pending))
            finish(got)
    except BaseException:
        if bar is not None:
            bar.close()
        for f in list(pending):
            try:
                f.cancel()
            except Exception:  # noqa: BLE001
                pass
        executor.close()
        log.error("interrupted; finished chunks are kept in %s: run again with --resume to "
                  "continue", journal.dir)
        raise
    executor.close()
    if bar is not None:
        bar.total = n_rows
        bar.refresh()
        bar.close()

    stale = sorted(k for k in journal.finished() if k >= n_chunks)
    if stale:
        raise GalguardValueError(f"the journal {str(journal.dir)!r} holds chunks {stale[:5]} "
                                 f"beyond the {n_chunks} chunks of the inputs")
    meta = dict(meta)
    meta["domain_shift"] = _domain_shift(journal, n_chunks, module, config)
    writer = CatalogWriter(output, meta=meta, format=fmt)
    per_class = {}
    verdicts = dict.fromkeys(("certified", "flip", "unknown"), 0) if config.certify else {}
    try:
        for k in range(n_chunks):
            table = journal.read_chunk(k)
            counts = count_rows(table)
            n_bad += counts["bad"]
            n_fragile += counts["fragile"]
            for name in np.asarray(table["pred_class"]).astype(str):
                if name:
                    per_class[name] = per_class.get(name, 0) + 1
            if verdicts:
                good = (np.asarray(table["flags"], np.int64) & int(Flag.BAD_INPUT)) == 0
                status = np.asarray(table["onepixel_status"]).astype(str)[good]
                for v in verdicts:
                    verdicts[v] += int(np.sum(status == v))
            writer.write(table)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    journal.remove()
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d rows (%d bad, %d fragile) in %.1f s", output, n_rows, n_bad,
             n_fragile, seconds)
    return BatchResult(path=output, n_rows=n_rows, n_bad=n_bad, n_fragile=n_fragile,
                       per_class=per_class, domain_shift=meta["domain_shift"],
                       verdicts=verdicts,
                       n_chunks=n_chunks, n_resumed=len(done & set(range(n_chunks))),
                       seconds=seconds)

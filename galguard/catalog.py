"""Catalog files: atomic writing in FITS, Parquet, ECSV or CSV, and the journal of a resumable run.

A catalog is the table `galguard.check` returns (plus the columns ``hdu``, ``row`` and
``true_label`` that let `galguard.report` find each cutout again). The batch command line writes
it in two stages so that nothing is lost when a run is killed:

1. while the run goes on, every finished chunk of rows is written to a *journal* directory next to
   the catalog, ``CATALOG.partial/``: ``chunk-000123.parquet`` files (written to a temporary name
   and moved into place with `os.replace`, so a chunk file is either whole or absent) and
   ``manifest.json`` (the configuration and input-list hashes the run started with);
2. when every chunk is in, the catalog is assembled in input order into a temporary file in the
   catalog's own directory, moved into place with `os.replace`, and the journal is removed.

A killed run leaves the journal; ``galguard check --resume`` checks that the manifest matches the
new run and computes only the chunks that are missing.

Formats
-------
``fits``
    A BINTABLE; the table meta is stored as JSON in the header keyword ``GGMETA`` (long-string
    CONTINUE cards) and strings as UTF-8 bytes.
``parquet``
    Written with pyarrow (streamed chunk by chunk, no pandas); multi-dimensional columns are
    fixed-size lists; the table meta is JSON in the schema metadata key ``galguard_meta``.
``ecsv``
    astropy's ECSV (meta and multi-dimensional columns kept natively).
``csv``
    Plain CSV for spreadsheets: a multi-dimensional column ``probs`` (N, K) becomes ``probs_0``
    .. ``probs_{K-1}`` (row-major for more dimensions); the first line is a comment
    ``# galguard-meta: {JSON}`` holding the meta and the original column shapes and dtypes, from
    which `read_catalog` rebuilds the table.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ._files import atomic_write, check_replaceable, temporary_path, umask
from .errors import GalguardValueError

__all__ = ["FORMATS", "SUFFIXES", "format_from_path", "write_catalog", "read_catalog",
           "CatalogWriter", "Journal", "JournalMismatch", "OutputLocked", "journal_dir",
           "hash_inputs", "inputs_digest"]

log = logging.getLogger(__name__)

#: Catalog formats.
FORMATS = ("fits", "parquet", "ecsv", "csv")
#: File name endings recognised for each format.
SUFFIXES = {
    "fits": (".fits", ".fit", ".fts"),
    "parquet": (".parquet", ".pq"),
    "ecsv": (".ecsv",),
    "csv": (".csv",),
}
_JOURNAL_FORMAT = "galguard-journal/1"
_CSV_MAGIC = "# galguard-meta: "


def format_from_path(path, format=None):
    """Return the catalog format for ``path``: ``format`` if given, else from the file suffix.

    Parameters
    ----------
    path : str or path-like
    format : {"fits", "parquet", "ecsv", "csv"}, optional

    Raises
    ------
    GalguardValueError
        If ``format`` is unknown, or it is None and the suffix names no format.
    """
    if format is not None:
        if format not in FORMATS:
            raise GalguardValueError(f"format must be one of {FORMATS}, got {format!r}")
        return format
    name = os.fspath(path).lower()
    for fmt, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    raise GalguardValueError(
        f"cannot tell the catalog format from the name {os.fspath(path)!r}: use a suffix "
        f"({', '.join(s for v in SUFFIXES.values() for s in v)}) or give format "
        f"(one of {FORMATS})")


def journal_dir(path):
    """The journal directory of catalog ``path``: ``path`` + ``.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def hash_inputs(paths):
    """sha256 over the input paths in order, with each file's size and modification time.

    Parameters
    ----------
    paths : iterable of str
        The expanded input file list.

    Returns
    -------
    str
        Hex digest; a renamed, added, removed, reordered or rewritten input changes it.
    """
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{os.path.abspath(p)}\0{sig}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# one table <-> one file
# --------------------------------------------------------------------------------------------
def _meta_json(meta):
    return json.dumps(dict(meta), sort_keys=True, default=str)


def _shapes(table):
    """[[name, shape, dtype], ...] in column order."""
    return [[name, list(table[name].shape[1:]), table[name].dtype.str] for name in table.colnames]


def _shape_dict(shapes):
    return {name: [shape, dtype] for name, shape, dtype in shapes}


def _arrow_table(table, meta):
    import pyarrow as pa

    arrays, names = [], []
    for name in table.colnames:
        col = np.asarray(table[name])
        if col.dtype.kind == "U":
            arr = pa.array(col.astype(object).tolist(), type=pa.string())
        elif col.ndim == 1:
            arr = pa.array(col)
        else:
            arr = pa.array(np.ascontiguousarray(col).reshape(-1))
            for size in reversed(col.shape[1:]):
                arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
        arrays.append(arr)
        names.append(name)
    md = {"galguard_meta": _meta_json(meta), "galguard_shapes": json.dumps(_shapes(table))}
    return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(md)


def _from_arrow(at):
    md = at.schema.metadata or {}
    meta = json.loads(md.get(b"galguard_meta", b"{}"))
    shapes = _shape_dict(json.loads(md.get(b"galguard_shapes", b"[]")))
    t = Table()
    n = at.num_rows
    for name in at.column_names:
        col = at.column(name).combine_chunks()
        shape, dtype = shapes.get(name, [[], None])
        if col.type == "string" or str(col.type) in ("string", "large_string"):
            values = np.asarray(col.to_pylist(), dtype=str) if n else np.zeros(0, "U1")
        else:
            while hasattr(col, "flatten") and str(col.type).startswith("fixed_size_list"):
                col = col.flatten()
            values = col.to_numpy(zero_copy_only=False).reshape((n,) + tuple(shape))
        if dtype is not None and np.dtype(dtype).kind != "U":
            values = values.astype(np.dtype(dtype), copy=False)
        t[name] = values
    t.meta.update(meta)
    return t


def _fits_hdu(table, meta):
    from astropy.io import fits

    t = Table()
    for name in table.colnames:
        col = np.asarray(table[name])
        if col.dtype.kind == "U":
            enc = [s.encode("utf-8") for s in col.tolist()]
            width = max([len(e) for e in enc] + [1])
            col = np.asarray(enc, dtype=f"S{width}")
        t[name] = col
    hdu = fits.table_to_hdu(t)
    hdu.name = "CATALOG"
    hdu.header["GGMETA"] = _meta_json(meta)
    hdu.header["GGSHAPES"] = json.dumps(_shapes(table))
    return hdu


def _read_fits(path):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdu = hdul["CATALOG"] if "CATALOG" in hdul else hdul[1]
        meta = json.loads(hdu.header.get("GGMETA", "{}"))
        shapes = _shape_dict(json.loads(hdu.header.get("GGSHAPES", "[]")))
        raw = Table(hdu.data) if hdu.data is not None else Table()
    t = Table()
    n = len(raw)
    for name in raw.colnames:
        col = np.asarray(raw[name])
        shape, dtype = shapes.get(name, [list(col.shape[1:]), None])
        if col.dtype.kind == "S":
            col = np.asarray([b.decode("utf-8") for b in col.tolist()], dtype=str) if n \
                else np.zeros(0, "U1")
        else:
            col = col.reshape((n,) + tuple(shape))
            if dtype is not None:
                col = col.astype(np.dtype(dtype), copy=False)
        t[name] = col
    t.meta.update(meta)
    return t


def _flatten(table):
    flat = Table()
    for name in table.colnames:
        col = np.asarray(table[name])
        if col.ndim == 1:
            flat[name] = col
        else:
            block = col.reshape(len(col), int(np.prod(col.shape[1:])))
            for j in range(block.shape[1]):
                flat[f"{name}_{j}"] = block[:, j]
    return flat


def _csv_header(table, meta):
    return _CSV_MAGIC + json.dumps({"meta": dict(meta), "shapes": _shapes(table)},
                                   sort_keys=True, default=str) + "\n"


def _read_csv(path):
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        first = fh.readline()
        if not first.startswith(_CSV_MAGIC):
            fh.close()
            return Table.read(path, format="ascii.csv")
        doc = json.loads(first[len(_CSV_MAGIC):])
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = list(reader)
    pos = {name: i for i, name in enumerate(header)}
    n = len(rows)

    def column(name, dt):
        i = pos[name]
        raw = [r[i] for r in rows]
        if dt.kind == "U":
            return np.asarray(raw, dtype=str) if n else np.zeros(0, "U1")
        if dt.kind == "b":
            return np.asarray([v == "True" for v in raw], dtype=bool)
        if dt.kind == "f":
            return np.asarray([float(v) if v else np.nan for v in raw], dtype=dt)
        return np.asarray([int(v) for v in raw], dtype=dt)

    t = Table()
    for name, shape, dtype in doc["shapes"]:
        dt = np.dtype(dtype)
        if not shape:
            t[name] = column(name, dt)
        else:
            k = int(np.prod(shape))
            parts = [column(f"{name}_{j}", dt) for j in range(k)]
            t[name] = np.stack(parts, axis=1).reshape((n,) + tuple(shape)) if n else \
                np.zeros((0,) + tuple(shape), dt)
    t.meta.update(doc["meta"])
    return t


class CatalogWriter:
    """Write a catalog chunk by chunk into a temporary file, then move it into place atomically.

    Parquet and CSV are streamed (memory holds one chunk); FITS and ECSV are assembled in memory
    at `commit` (memory about the size of the catalog, a few hundred bytes a row).

    Parameters
    ----------
    path : str or path-like
        Final catalog path.
    meta : dict
        Table meta (must be known before the first chunk).
    format : {"fits", "parquet", "ecsv", "csv"}, optional
        Default: from the suffix of ``path``.

    Examples
    --------
    >>> w = CatalogWriter("cat.parquet", meta={"seed": 0})      # doctest: +SKIP
    >>> w.write(rows_0); w.write(rows_1); w.commit()            # doctest: +SKIP
    """

    def __init__(self, path, *, meta, format=None):
        self.path = Path(path)
        self.format = format_from_path(self.path, format)
        self.meta = dict(meta)
        check_replaceable(self.path, name="path")
        self._tmp = temporary_path(self.path)
        self._parts = []
        self._writer = None
        self._fh = None
        self._first = None
        self.n_rows = 0

    def write(self, table):
        """Append the rows of ``table`` (same columns and shapes for every call)."""
        if self._first is None:
            self._first = table[:0].copy()
        elif table.colnames != self._first.colnames:
            raise GalguardValueError(f"table columns must be {self._first.colnames}, got "
                                     f"{table.colnames}")
        self.n_rows += len(table)
        if self.format == "parquet":
            import pyarrow.parquet as pq
            at = _arrow_table(table, self.meta)
            if self._writer is None:
                self._writer = pq.ParquetWriter(str(self._tmp), at.schema)
            self._writer.write_table(at.cast(self._writer.schema))
        elif self.format == "csv":
            flat = _flatten(table)
            if self._fh is None:
                self._fh = open(self._tmp, "w", encoding="utf-8", newline="")
                self._fh.write(_csv_header(table, self.meta))
                flat.write(self._fh, format="ascii.csv")
            else:
                import io
                buf = io.StringIO()
                flat.write(buf, format="ascii.csv")
                self._fh.write(buf.getvalue().split("\n", 1)[1])
        else:
            self._parts.append(table)

    def commit(self, *, empty=None):
        """Finish the file and move it to ``path`` (atomically). Returns ``path``.

        Parameters
        ----------
        empty : astropy.table.Table, optional
            Zero-row table giving the columns when no chunk was written.
        """
        try:
            if self._first is None:
                self.write(empty if empty is not None else Table())
            if self.format == "parquet":
                self._writer.close()
                self._writer = None
            elif self.format == "csv":
                self._fh.close()
                self._fh = None
            else:
                parts = [p for p in self._parts if len(p)] or [self._first]
                t = parts[0] if len(parts) == 1 else vstack(parts, join_type="exact",
                                                            metadata_conflicts="silent")
                self._parts = []
                if self.format == "fits":
                    from astropy.io import fits
                    fits.HDUList([fits.PrimaryHDU(), _fits_hdu(t, self.meta)]).writeto(
                        self._tmp, overwrite=True)
                else:
                    out = t.copy(copy_data=False)
                    out.meta.clear()
                    out.meta.update(self.meta)
                    out.write(self._tmp, format="ascii.ecsv", overwrite=True)
            os.chmod(self._tmp, 0o666 & ~umask())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self):
        """Drop the temporary file (the final path is left untouched)."""
        for h in (self._writer, self._fh):
            try:
                if h is not None:
                    h.close()
            except Exception:  # noqa: BLE001 - best effort clean-up
                pass
        self._writer = self._fh = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def write_catalog(table, path, *, format=None, overwrite=False):
    """Write a catalog table atomically (temporary file in the same directory + `os.replace`).

    Parameters
    ----------
    table : astropy.table.Table
        Rows and ``meta`` to write; not modified.
    path : str or path-like
    format : {"fits", "parquet", "ecsv", "csv"}, optional
        Default: from the suffix.
    overwrite : bool, optional
        Replace an existing file (default False: raise).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    fmt = format_from_path(path, format)
    if path.exists() and not overwrite:
        raise GalguardValueError(f"path {str(path)!r} exists; pass overwrite=True to replace it")
    w = CatalogWriter(path, meta=table.meta, format=fmt)
    w.write(table)
    return w.commit()


def read_catalog(path, *, format=None):
    """Read a catalog written by `write_catalog` / `CatalogWriter` (or by ``galguard check``).

    Returns
    -------
    astropy.table.Table
        Columns with their original dtypes and shapes, and the meta.
    """
    path = Path(path)
    fmt = format_from_path(path, format)
    if not path.exists():
        raise GalguardValueError(f"path {str(path)!r} does not exist")
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return _from_arrow(pq.read_table(str(path)))
    if fmt == "fits":
        return _read_fits(path)
    if fmt == "ecsv":
        t = Table.read(path, format="ascii.ecsv")
        for name in t.colnames:  # ECSV reads "" as a masked string
            col = t[name]
            if getattr(col, "mask", None) is not None and col.dtype.kind in "US":
                t[name] = np.asarray(col.filled(""), dtype=str)
        return t
    return _read_csv(path)


# --------------------------------------------------------------------------------------------
# the journal of a run
# --------------------------------------------------------------------------------------------
class JournalMismatch(GalguardValueError):
    """The journal on disk belongs to another run (other configuration or inputs)."""


class OutputLocked(GalguardValueError):
    """Another run is writing the same catalog (it holds the journal's lock)."""


def inputs_digest(sources):
    """sha256 over the content of the files ``sources`` (each once, in first-seen order).

    A chunk records the digest of the files its rows came from, so that a resumed run never
    keeps rows of an input rewritten since (even with the same size and modification time).
    """
    h = hashlib.sha256()
    seen = set()
    for src in sources:
        src = str(src)
        if src in seen:
            continue
        seen.add(src)
        h.update(src.encode("utf-8", "surrogateescape") + b"\0")
        try:
            if not os.path.isfile(src):
                raise OSError("not a regular file")
            with open(src, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            h.update(f"unreadable: {type(exc).__name__}".encode())
        h.update(b"\n")
    return h.hexdigest()


class Journal:
    """The journal of finished chunks of a run, ``CATALOG.partial/``.

    Parameters
    ----------
    catalog : str or path-like
        The final catalog path; the journal is `journal_dir` of it.
    manifest : dict
        What identifies the run (JSON-serialisable): at least ``config_hash`` and
        ``inputs_hash``. Stored as ``manifest.json``; on `open` with ``resume=True`` an existing
        manifest must have the same values for every key of this dict.

    Notes
    -----
    Chunk ``k`` holds the rows ``k * chunk_size`` to ``(k + 1) * chunk_size - 1`` of the input
    order. A chunk file is written to a temporary name and moved into place with `os.replace`,
    so after a crash (even ``kill -9``) every ``chunk-*.parquet`` is complete. Each chunk file
    carries the hash of the manifest of the run that wrote it and the `inputs_digest` of the
    files its rows came from; a chunk that cannot be read, was written by another run or whose
    inputs changed is dropped and computed again.

    `lock` takes an exclusive `fcntl.flock` on ``CATALOG.partial/lock`` for the whole run: a
    second run on the same catalog stops at once (`OutputLocked`), naming the process that
    holds it.
    """

    def __init__(self, catalog, *, manifest):
        self.catalog = Path(catalog)
        self.dir = journal_dir(self.catalog)
        self.manifest = dict(manifest)
        self.manifest["format"] = _JOURNAL_FORMAT
        self.run_id = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()) \
            .hexdigest()[:32]
        self._lock_fd = None

    @property
    def exists(self):
        return (self.dir / "manifest.json").exists()

    # -- the lock ---------------------------------------------------------------------------
    def lock(self):
        """Take the run's exclusive lock (raises `OutputLocked` if another run holds it)."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise OutputLocked(
                f"output {str(self.catalog)!r} is being written by another galguard check "
                f"(process {holder}, lock {str(path)!r}); wait for it to finish, or give "
                "another -o") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self):
        """Release the lock (when the run ends, however it ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- opening ----------------------------------------------------------------------------
    def _clear(self):
        for p in self.dir.iterdir():
            if p.name == "lock":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def _write_manifest(self):
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        atomic_write(self.dir / "manifest.json", lambda tmp: tmp.write_text(text, "utf-8"),
                     name="journal manifest")

    def open(self, *, resume=False):
        """Create the journal (``resume=False``; an old one is cleared) or reopen it.

        Returns
        -------
        set of int
            Chunks already finished (empty for a fresh journal).

        Raises
        ------
        JournalMismatch
            When resuming a journal whose manifest differs from this run's.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume and self.exists:
            try:
                with open(self.dir / "manifest.json", encoding="utf-8") as fh:
                    old = json.load(fh)
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                log.warning("the journal's manifest %s is unreadable (%s); it is rewritten and "
                            "only the chunks this run can verify are kept",
                            self.dir / "manifest.json", exc)
                self._write_manifest()
                return self.finished()
            diff = sorted(k for k in self.manifest if old.get(k) != self.manifest[k])
            if diff:
                raise JournalMismatch(
                    f"cannot resume from {str(self.dir)!r}: it was written by a run with other "
                    f"{', '.join(diff)}; rerun with the same inputs and options, or use "
                    f"--overwrite to start again")
            return self.finished()
        self._clear()
        self._write_manifest()
        return set()

    # -- chunks -----------------------------------------------------------------------------
    def chunk_path(self, index):
        return self.dir / f"chunk-{int(index):06d}.parquet"

    def _chunk_meta(self, path):
        import pyarrow.parquet as pq

        md = pq.read_schema(str(path)).metadata or {}
        pq.ParquetFile(str(path)).metadata  # the footer must be whole
        return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"galguard_")}

    def finished(self):
        """Indices of the complete chunks written by this run (others are dropped)."""
        out = set()
        for p in sorted(self.dir.glob("chunk-*.parquet")):
            try:
                k = int(p.name[6:-8])
            except ValueError:
                continue
            try:
                ok = self._chunk_meta(p).get("galguard_run") == self.run_id
                why = "was written by another run"
            except Exception as exc:  # noqa: BLE001 - a truncated or corrupt chunk file
                ok, why = False, f"cannot be read ({type(exc).__name__})"
            if ok:
                out.add(k)
            else:
                log.warning("journal chunk %s %s; it is dropped and computed again", p.name, why)
                p.unlink(missing_ok=True)
        return out

    def chunk_inputs_digest(self, index):
        """The `inputs_digest` recorded by chunk ``index`` ("" if none)."""
        return self._chunk_meta(self.chunk_path(index)).get("galguard_inputs", "")

    def drop(self, index):
        """Remove chunk ``index`` (to compute it again)."""
        self.chunk_path(index).unlink(missing_ok=True)

    def write_chunk(self, index, table, *, inputs=""):
        """Write chunk ``index`` (atomic: temporary file, fsync, `os.replace`), tagged with this
        run and ``inputs`` (the `inputs_digest` of its files)."""
        import pyarrow.parquet as pq

        at = _arrow_table(table, {})
        md = dict(at.schema.metadata or {})
        md.update({b"galguard_run": self.run_id.encode(), b"galguard_inputs": inputs.encode()})
        at = at.replace_schema_metadata(md)
        atomic_write(self.chunk_path(index), lambda tmp: pq.write_table(at, str(tmp)),
                     name="journal chunk")

    def read_chunk(self, index):
        import pyarrow.parquet as pq
        return _from_arrow(pq.read_table(str(self.chunk_path(index))))

    def remove(self):
        """Delete the journal directory (the lock file last, still held)."""
        if self.dir.exists():
            self._clear()
            (self.dir / "lock").unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                shutil.rmtree(self.dir, ignore_errors=True)

"""Training and evaluation data from a survey's own FITS cutouts and a label catalog.

`read_labels` reads the catalog (FITS, CSV, ECSV or Parquet): one column naming each cutout
(``id`` matching the cutouts' ids from OBJID or a CATALOG table, or ``file`` / ``source`` matching
the file name, with an optional ``row`` for stacks) and a ``label`` column of class names (or
integers with ``classes``). `ingest` streams the cutouts in chunks (any input form of
`galguard.io.iter_cutouts`), keeps the good and labelled ones, and writes them to a float32
memory-mapped array on disk, so that memory stays bounded however large the set is: training
then reads its batches from the page cache. Unmatched and bad cutouts are counted, listed (the
first few) and left out, never labelled by guess.
"""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import GalguardValueError

__all__ = ["LabelCatalog", "Ingested", "read_labels", "ingest"]

log = logging.getLogger(__name__)

_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits",
            ".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".parquet": "parquet", ".pq": "parquet"}
_KEY_COLUMNS = {"id": "id", "objid": "id", "file": "file", "source": "file", "filename": "file"}
#: how many unmatched or bad cutouts a report lists by name (all are counted)
REPORT_LIST = 20


def _format(path):
    name = str(path).lower()
    for suffix, fmt in sorted(_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    raise GalguardValueError(f"labels {str(path)!r}: unknown catalog format; use a .fits, .csv, "
                             f".ecsv or .parquet file")


@dataclasses.dataclass
class LabelCatalog:
    """Labels keyed by cutout id or by file name (and row).

    Attributes
    ----------
    path : str
    sha256 : str
        Of the catalog file's content.
    key : {"id", "file"}
    classes : tuple of str
    labels : dict
        ``id -> class index`` or ``(file name, row) -> class index`` (row -1: the file holds one
        cutout).
    """

    path: str
    sha256: str
    key: str
    classes: tuple
    labels: dict

    def card(self):
        """What a model card records of the catalog."""
        return {"path": os.path.abspath(self.path), "sha256": self.sha256, "key": self.key,
                "rows": len(self.labels), "classes": list(self.classes)}

    def lookup(self, meta):
        """Class index of each row of a Cutouts meta (-1: not in the catalog) and, for the
        unmatched ones, why."""
        n = len(meta)
        out = np.full(n, -1, np.int64)
        why = [""] * n
        if self.key == "id":
            ids = np.asarray(meta["id"], np.int64)
            given = np.asarray(meta["id_given"], bool) if "id_given" in meta.colnames else \
                np.ones(n, bool)
            for i in range(n):
                if not given[i]:
                    why[i] = "the cutout has no id (no OBJID keyword or CATALOG ID)"
                    continue
                out[i] = self.labels.get(int(ids[i]), -1)
                if out[i] < 0:
                    why[i] = f"id {int(ids[i])} is not in the catalog"
            return out, why
        rows = np.asarray(meta["row"], np.int64)
        for i in range(n):
            src = str(meta["source"][i])
            names = (os.path.basename(src), os.path.abspath(src))
            hit = None
            for name in names:
                for key in ((name, int(rows[i])), (name, -1)):
                    if key in self.labels:
                        hit = key
                        break
                if hit:
                    break
            if hit is None:
                why[i] = f"{os.path.basename(src)} (row {int(rows[i])}) is not in the catalog"
            elif hit[1] == -1 and rows[i] > 0:
                raise GalguardValueError(
                    f"labels {self.path!r} names the file {hit[0]!r} without a row, but it holds "
                    f"several cutouts (a stack); add a 'row' column or key the catalog by 'id'")
            else:
                out[i] = self.labels[hit]
        return out, why


def read_labels(path, *, classes=None):
    """Read a label catalog.

    Parameters
    ----------
    path : str or path-like
        FITS, CSV, ECSV or Parquet table with a key column (``id``/``objid``, or
        ``file``/``source``/``filename`` plus an optional ``row``; names are case-insensitive)
        and a ``label`` column.
    classes : sequence of str, optional
        Class names in model order. Required when ``label`` holds integers (indices into it);
        with names, the catalog's names must be among them. Default: the catalog's class names,
        sorted.

    Returns
    -------
    LabelCatalog

    Raises
    ------
    GalguardValueError
        A missing file, an unknown format, a missing key or label column, labels outside
        ``classes``, or one cutout given two different labels.
    """
    from astropy.table import Table

    path = str(path)
    if not os.path.isfile(path):
        raise GalguardValueError(f"labels {path!r}: no such file")
    try:
        fmt = _format(path)
        if fmt == "parquet":  # pyarrow directly (astropy's reader wants pandas)
            import pyarrow.parquet as pq

            pa = pq.read_table(path)
            t = Table({c: np.asarray(pa.column(c).to_numpy(zero_copy_only=False))
                       for c in pa.column_names})
        else:
            t = Table.read(path, format=fmt)
    except GalguardValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error names the file
        raise GalguardValueError(f"labels {path!r}: cannot read the catalog ({type(exc).__name__}:"
                                 f" {exc})") from None
    cols = {c.lower(): c for c in t.colnames}
    keycol = next((cols[c] for c in _KEY_COLUMNS if c in cols), None)
    if keycol is None or "label" not in cols:
        raise GalguardValueError(
            f"labels {path!r} needs a key column (id, objid, file, source or filename) and a "
            f"'label' column; it has {t.colnames}")
    key = _KEY_COLUMNS[keycol.lower()]
    raw = t[cols["label"]]
    if hasattr(raw, "mask") and np.any(raw.mask):
        raise GalguardValueError(f"labels {path!r}: {int(np.sum(raw.mask))} rows have no label")
    values = np.asarray(raw)
    if classes is not None:
        classes = tuple(str(c) for c in classes)
    if values.dtype.kind in "iu":
        if classes is None:
            raise GalguardValueError(f"labels {path!r} holds integer labels; give the class names "
                                     f"(classes=..., --classes NAMES)")
        idx = values.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(classes)):
            raise GalguardValueError(f"labels {path!r}: integer labels must be in 0.."
                                     f"{len(classes) - 1} for classes {classes}, got "
                                     f"{idx.min()}..{idx.max()}")
    else:
        names = np.char.strip(np.asarray(values.astype(str), dtype=str))
        found = sorted(set(names.tolist()))
        if classes is None:
            classes = tuple(found)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise GalguardValueError(f"labels {path!r}: labels {unknown} are not among the "
                                     f"classes {classes}")
        lookup = {c: i for i, c in enumerate(classes)}
        idx = np.array([lookup[v] for v in names.tolist()], np.int64)
    if len(classes) < 2:
        raise GalguardValueError(f"labels {path!r}: at least two classes are needed, got "
                                 f"{classes}")
    if key == "id":
        keys = [int(v) for v in np.asarray(t[keycol])]
    else:
        rows = np.asarray(t[cols["row"]], np.int64) if "row" in cols else np.full(len(t), -1)
        base = os.path.dirname(os.path.abspath(path))
        keys = [(v if os.sep not in v else os.path.abspath(os.path.join(base, v)), int(r))
                for v, r in zip(np.char.strip(np.asarray(t[keycol]).astype(str)).tolist(),
                                rows)]
    labels = {}
    for k, v in zip(keys, idx.tolist()):
        if labels.get(k, v) != v:
            raise GalguardValueError(f"labels {path!r}: {k!r} is given two labels "
                                     f"({classes[labels[k]]!r} and {classes[v]!r})")
        labels[k] = v
    from ..models.store import sha256_file

    return LabelCatalog(path=path, sha256=sha256_file(path), key=key, classes=classes,
                        labels=labels)


@dataclasses.dataclass
class Ingested:
    """Cutouts gathered for training or evaluation.

    Attributes
    ----------
    images : numpy.ndarray
        float32 (N, C, H, W), memory-mapped from ``directory/NAME.f32``.
    labels : numpy.ndarray or None
        int64 (N,) class indices (None for unlabelled data).
    bands : tuple of str
    size : (int, int)
    report : dict
        Counts (read, kept, bad, unmatched, per class), the first bad and unmatched cutouts
        with the reason, the inputs' hash and the catalog (for the model card).
    """

    images: np.ndarray
    labels: object
    bands: tuple
    size: tuple
    report: dict


class _Sink:
    """Appends float32 rows to a raw file; `array` memory-maps what was written."""

    def __init__(self, path):
        self.path = Path(path)
        self.fh = open(self.path, "wb")
        self.n = 0
        self.shape = None

    def add(self, x):
        if not len(x):
            return
        self.shape = x.shape[1:]
        self.fh.write(np.ascontiguousarray(x, np.float32).tobytes())
        self.n += len(x)

    def array(self):
        self.fh.close()
        if self.n == 0:
            return None
        return np.memmap(self.path, dtype=np.float32, mode="r+", shape=(self.n, *self.shape))


def _unit_hash(seed, index):
    """A deterministic number in [0, 1) per (seed, index) (splitmix64)."""
    z = (np.asarray(index, np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def ingest(paths, directory, name, *, labels=None, bands=None, size=None, chunk_size=256,
           split=0.0, seed=0, progress=False, recursive=False, mask_bits=None):
    """Stream cutouts into memory-mapped arrays, labelled from a catalog.

    Parameters
    ----------
    paths : list of str
        Inputs in any form `galguard.io.iter_cutouts` takes (files, directories, globs,
        ``@lists``).
    directory : path-like
        Where the memory-mapped arrays are written (``NAME.f32``, ``NAME-split.f32``).
    name : str
        What the set is ("source", "target", ...), for file names and messages.
    labels : LabelCatalog, optional
        Keep only the cutouts it labels (None: unlabelled data, every good cutout).
    bands, size : optional
        As in `read_cutouts` (default: the first good cutout's).
    chunk_size : int
        Cutouts read at a time (memory: about two chunks).
    split : float
        Fraction of the kept cutouts set aside (a deterministic hash of the input position and
        ``seed``), returned as a second `Ingested` (validation).
    seed : int

    Returns
    -------
    Ingested, or (Ingested, Ingested) when ``split > 0``

    Raises
    ------
    GalguardValueError
        When no cutout is kept (the report's reasons are in the message).
    """
    from tqdm.auto import tqdm

    from ..catalog import hash_inputs
    from ..io import iter_cutouts
    from ..io._paths import expand_inputs

    files = expand_inputs(list(paths), recursive=recursive)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sinks = [_Sink(directory / f"{name}.f32")]
    if split > 0:
        sinks.append(_Sink(directory / f"{name}-split.f32"))
    ys = [[] for _ in sinks]
    report = {"inputs": len(files), "inputs_sha256": hash_inputs(files), "read": 0, "kept": 0,
              "bad": 0, "unmatched": 0, "bad_examples": [], "unmatched_examples": []}
    if labels is not None:
        report["labels"] = labels.card()
    got_bands = got_size = None
    kwargs = {"bands": bands, "size": size}
    bar = tqdm(total=None, desc=f"reading {name}", unit="cutout", disable=not progress,
               leave=False)
    try:
        for chunk in iter_cutouts(files, chunk_size=chunk_size, mask_bits=mask_bits, **kwargs):
            n = len(chunk)
            report["read"] += n
            bar.update(n)
            good = chunk.good
            for i in np.flatnonzero(~good):
                report["bad"] += 1
                if len(report["bad_examples"]) < REPORT_LIST:
                    report["bad_examples"].append(str(chunk.meta["error"][i]))
            if labels is not None:
                y, why = labels.lookup(chunk.meta)
                miss = good & (y < 0)
                for i in np.flatnonzero(miss):
                    report["unmatched"] += 1
                    if len(report["unmatched_examples"]) < REPORT_LIST:
                        report["unmatched_examples"].append(why[i])
                keep = good & (y >= 0)
            else:
                y, keep = np.full(n, -1, np.int64), good
            if not keep.any():
                continue
            if got_bands is None:
                got_bands, got_size = chunk.bands, tuple(chunk.data.shape[-2:])
                kwargs = {"bands": got_bands, "size": got_size}  # later chunks follow suit
            sel = np.flatnonzero(keep)
            part = np.zeros(len(sel), np.int64)
            if split > 0:
                part = (_unit_hash(seed, np.asarray(chunk.meta["index"])[sel]) < split).astype(
                    np.int64)
            for k, sink in enumerate(sinks):
                rows = sel[part == k]
                sink.add(chunk.data[rows])
                ys[k].append(y[rows])
            report["kept"] += len(sel)
    finally:
        bar.close()
        arrays = [s.array() for s in sinks]
    if report["unmatched"] or report["bad"]:
        log.warning("%s: %d of %d cutouts left out (%d bad, %d not in the label catalog)%s", name,
                    report["bad"] + report["unmatched"], report["read"], report["bad"],
                    report["unmatched"], "; first: " + (report["unmatched_examples"]
                                                        + report["bad_examples"])[0])
    if arrays[0] is None:
        why = (report["unmatched_examples"] + report["bad_examples"])[:3]
        raise GalguardValueError(f"{name}: no usable cutout among {report['read']} read from "
                                 f"{len(files)} input(s)" + (f" ({'; '.join(why)})" if why else ""))
    out = []
    for k, arr in enumerate(arrays):
        if arr is None:
            raise GalguardValueError(f"{name}: the {split:g} split holds no cutout; give more "
                                     f"data or a validation set")
        y = np.concatenate(ys[k]) if labels is not None else None
        rep = dict(report) if k == 0 else {"split_of": name, "fraction": split, "seed": seed}
        rep["n"] = int(len(arr))
        if y is not None:
            rep["class_counts"] = {c: int(np.sum(y == i)) for i, c in enumerate(labels.classes)}
        out.append(Ingested(arr, y, tuple(got_bands), tuple(got_size), rep))
    return out[0] if len(out) == 1 else tuple(out)

"""Tests of galguard.catalog: format round trips, atomic writes and the run journal."""

import json
import os

import numpy as np
import pytest
from astropy.table import Table

from galguard.catalog import (FORMATS, CatalogWriter, Journal, JournalMismatch, format_from_path,
                              hash_inputs, journal_dir, read_catalog, write_catalog)
from galguard.errors import GalguardValueError


def table(n=5, seed=0):
    rng = np.random.default_rng(seed)
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64) + 100
    t["source"] = np.array([f"dir é/gal_{i}, \"q\".fits" for i in range(n)])
    t["probs"] = rng.random((n, 3)).astype(np.float32)
    t["probs"][0, 1] = np.nan
    t["onepixel_values"] = rng.random((n, 2, 3)).astype(np.float32)
    t["fragile"] = rng.random(n) > 0.5
    t["flags"] = rng.integers(0, 1 << 13, n).astype(np.int64)
    t["error"] = np.array([""] * (n - 1) + ["x: bad, file"])
    t.meta.update({"config": json.dumps({"seed": 3, "preset": "default"}), "seed": 3,
                   "model_name": "m", "classes": "spiral,elliptical,merger"})
    return t


def assert_equal_tables(a, b):
    assert a.colnames == b.colnames
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert dict(a.meta) == dict(b.meta)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format(fmt, tmp_path):
    t = table()
    before = t.copy()
    path = tmp_path / f"cat.{fmt}"
    assert write_catalog(t, path) == path
    assert_equal_tables(t, read_catalog(path))
    assert_equal_tables(before, t)  # not modified
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    with pytest.raises(GalguardValueError, match="exists; pass overwrite=True"):
        write_catalog(t, path)
    write_catalog(table(seed=1), path, overwrite=True)
    assert_equal_tables(table(seed=1), read_catalog(path))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "fits", "ecsv"])
def test_writer_streams_chunks_in_order(fmt, tmp_path):
    t = table(9)
    w = CatalogWriter(tmp_path / "out.dat", meta=t.meta, format=fmt)
    for s in range(0, 9, 4):
        w.write(t[s:s + 4])
    assert not (tmp_path / "out.dat").exists()  # nothing at the final path before commit
    w.commit()
    assert_equal_tables(t, read_catalog(tmp_path / "out.dat", format=fmt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dat"]


def test_abort_leaves_an_existing_catalog_untouched(tmp_path):
    path = tmp_path / "cat.parquet"
    write_catalog(table(), path)
    data = path.read_bytes()
    w = CatalogWriter(path, meta={})
    w.write(table(3, seed=2))
    w.abort()
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["cat.parquet"]


def test_format_from_path():
    assert format_from_path("a/b.FITS") == "fits"
    assert format_from_path("b.fts") == "fits"
    assert format_from_path("b.pq") == "parquet"
    assert format_from_path("b.txt", "csv") == "csv"
    with pytest.raises(GalguardValueError, match="cannot tell the catalog format from the name "
                                                 "'b.txt'"):
        format_from_path("b.txt")
    with pytest.raises(GalguardValueError, match="format must be one of .* got 'xml'"):
        format_from_path("b.fits", "xml")


def test_journal_resume_and_mismatch(tmp_path):
    cat = tmp_path / "cat.parquet"
    man = {"config_hash": "a" * 64, "inputs_hash": "b" * 64, "chunk_size": 4}
    j = Journal(cat, manifest=man)
    assert j.dir == journal_dir(cat) == tmp_path / "cat.parquet.partial"
    assert j.open() == set()
    t = table(8)
    j.write_chunk(0, t[:4])
    j.write_chunk(1, t[4:])
    (j.dir / "chunk-000002.parquet.tmp").write_bytes(b"half a file")  # a write cut short
    assert j.finished() == {0, 1}
    assert_equal_tables(j.read_chunk(1), Table(t[4:], meta={}))
    # Same manifest: resumes with the finished chunks.
    assert Journal(cat, manifest=man).open(resume=True) == {0, 1}
    # Other config or inputs: refused, naming what differs; the journal stays.
    with pytest.raises(JournalMismatch, match="other config_hash"):
        Journal(cat, manifest=dict(man, config_hash="c" * 64)).open(resume=True)
    with pytest.raises(JournalMismatch, match="other chunk_size, inputs_hash"):
        Journal(cat, manifest=dict(man, inputs_hash="d", chunk_size=5)).open(resume=True)
    assert j.finished() == {0, 1}
    # A fresh open starts again; remove() deletes the directory.
    assert Journal(cat, manifest=man).open() == set()
    assert not any(j.dir.glob("chunk-*"))
    j.remove()
    assert not j.dir.exists()


def test_hash_inputs_sees_order_content_and_names(tmp_path):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    h = hash_inputs([str(a), str(b)])
    assert h == hash_inputs([str(a), str(b)])
    assert h != hash_inputs([str(b), str(a)])
    assert h != hash_inputs([str(a)])
    b.write_bytes(b"333")
    assert h != hash_inputs([str(a), str(b)])
    os.rename(b, tmp_path / "c.fits")
    assert hash_inputs([str(a), str(tmp_path / "c.fits")]) != hash_inputs([str(a), str(b)])

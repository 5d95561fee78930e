"""Versioned stores: atomic commits, crash safety, gc, the TPM embedding store's lookups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mdctr.platform.stores.embeddings import EmbeddingStore
from mdctr.platform.stores.versioned import VersionedStore


def _snapshot(seed: int, n: int = 500, dim: int = 8):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=n, replace=False).astype(np.int64)
    return ids, rng.standard_normal((n, dim)).astype(np.float32)


def test_lookup_returns_the_written_vectors(tmp_path):
    store = EmbeddingStore(tmp_path)
    users, items = _snapshot(0), _snapshot(1, n=300)
    store.write("1997-11", {"user": users, "item": items}, {"version_id": "tpm-x"})
    ids, vectors = users
    query = np.concatenate([ids[::-1], [10_001, -5]])  # reversed known ids, then unknown ones
    got, found = store.lookup("1997-11", "user", query)
    np.testing.assert_array_equal(found, [True] * len(ids) + [False, False])
    np.testing.assert_array_equal(got[: len(ids)], vectors[::-1])
    assert not got[len(ids):].any()
    assert store.meta("1997-11") == {"version_id": "tpm-x", "user_rows": 500, "item_rows": 300, "dim": 8}
    # DuckDB reads the committed files with plain SQL
    rows = duckdb.sql(f"SELECT month, count(*) FROM read_parquet({store.files('user')}) GROUP BY month").fetchall()
    assert rows == [("1997-11", 500)]


def test_months_latest_replace_and_gc(tmp_path):
    store = EmbeddingStore(tmp_path)
    for i, month in enumerate(["1997-10", "1997-12", "1997-11", "1998-01"]):
        store.write(month, {"user": _snapshot(i)})
    assert store.months() == ["1997-10", "1997-11", "1997-12", "1998-01"]
    assert store.latest(3, at_or_before="1997-12") == ["1997-10", "1997-11", "1997-12"]
    ids, _ = _snapshot(7)
    store.write("1997-11", {"user": _snapshot(7)})  # replaces the month
    assert store.lookup("1997-11", "user", ids)[1].all()
    assert len(list((tmp_path / "data").iterdir())) == 4
    assert store.gc(keep=2) == ["1997-10", "1997-11"]
    assert store.months() == ["1997-12", "1998-01"]
    assert len(list((tmp_path / "data").iterdir())) == 2
    with pytest.raises(ValueError, match="no version .1997-10."):
        store.lookup("1997-10", "user", ids)


@pytest.mark.parametrize("bad, match", [
    ({"month": "1997-13"}, "YYYY-MM"),
    ({"tables": {"author": _snapshot(0)}}, "unknown entities"),
    ({"tables": {"user": (np.array([1, 1]), np.zeros((2, 4)))}}, "duplicate ids"),
    ({"tables": {"user": (np.array([1, 2]), np.zeros((3, 4)))}}, "vectors of shape"),
])
def test_bad_snapshots_are_refused_and_leave_nothing(tmp_path, bad, match):
    store = EmbeddingStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        store.write(bad.get("month", "1997-11"), bad.get("tables", {"user": _snapshot(0)}))
    assert store.months() == []
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob("data/*"))


WRITER = """
import sys, time, numpy as np
from mdctr.platform.stores.versioned import VersionedStore
store = VersionedStore(sys.argv[1], kind="test")
with store.write(sys.argv[2]) as tmp:
    (tmp / "part.bin").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writer_leaves_committed_versions_and_nothing_partial(tmp_path):
    store = VersionedStore(tmp_path, kind="test")
    with store.write("v1", {"rows": 1}) as d:
        (d / "part.bin").write_bytes(b"committed")
    manifest = (tmp_path / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "v2"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "manifest.json").read_bytes() == manifest
    assert store.names() == ["v1"] and store.get("v1").meta == {"rows": 1}
    assert store.get("v1").file("part.bin").read_bytes() == b"committed"
    assert len(list(tmp_path.glob(".tmp-*"))) == 1  # the dead writer's scratch, invisible
    store.gc()
    assert not list(tmp_path.glob(".tmp-*"))
    assert json.loads(manifest)["versions"][0]["name"] == "v1"


def test_store_kinds_do_not_mix(tmp_path):
    with VersionedStore(tmp_path, kind="labels").write("v2"):
        pass
    with pytest.raises(ValueError, match="not a tpm-embeddings store"):
        EmbeddingStore(tmp_path).months()


@pytest.mark.parametrize("span", [2, 1000])  # dense keys (direct table) and sparse keys (sorted search)
def test_id_index_matches_a_dictionary(span):
    from mdctr.platform.stores.index import IdIndex
    rng = np.random.default_rng(span)
    keys = rng.choice(5000 * span, size=5000, replace=False).astype(np.int64) - 7
    index = IdIndex(keys)
    assert (index._table is not None) == (span == 2)
    query = np.concatenate([rng.choice(keys, 3000), rng.integers(-100, 5000 * span + 100, 3000)])
    pos, found = index.find(query)
    where = {int(k): i for i, k in enumerate(keys)}
    assert found.tolist() == [int(q) in where for q in query]
    assert (pos[found] == [where[int(q)] for q in query[found]]).all() and not pos[~found].any()
    empty_pos, empty_found = IdIndex(np.empty(0, np.int64)).find(query[:5])
    assert not empty_found.any() and not empty_pos.any()

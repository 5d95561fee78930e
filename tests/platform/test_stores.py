"""Versioned stores: atomic commits, crash safety, gc, the TPM embedding store's lookups."""

from __future__ import annotations

import hashlib
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

from mdctr.core.errors import ArtifactError
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
    assert store.gc(keep=2, protect={"1997-10"}) == ["1997-11"]  # a month still in use stays
    assert store.months() == ["1997-10", "1997-12", "1998-01"]
    assert store.gc(keep=2) == ["1997-10"]
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


# -- paths stay inside the store, integrity of versions, stale scratch ------------------------------


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tamper(root: Path, version: int, **entry) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["versions"][version].update(entry)
    path.write_text(json.dumps(manifest))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("bad_dir", [
    "../outside", "../../outside", "/ABS/outside", "data/../../outside", "data/x/../../../outside", "data",
    "data/", "./data/x", "data//x", "data/.hidden", "versions/x", "SYMLINK",
], ids=["parent", "grandparent", "absolute", "dotdot-in-data", "deep-dotdot", "data-itself", "trailing-slash",
        "dot-prefix", "double-slash", "hidden", "other-folder", "symlink-out"])
def test_manifest_dirs_outside_the_store_are_refused_before_anything_is_deleted(tmp_path, bad_dir):
    root, outside = tmp_path / "store", tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "precious.txt").write_text("mine")
    store = EmbeddingStore(root)
    store.write("1997-10", {"user": _snapshot(0)})
    store.write("1997-11", {"user": _snapshot(1)})
    if bad_dir == "SYMLINK":
        (root / "data" / "evil").symlink_to(outside, target_is_directory=True)
        bad_dir = "data/evil"
    bad_dir = bad_dir.replace("/ABS/outside", str(outside))
    _tamper(root, 0, dir=bad_dir)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for action in (lambda: store.gc(keep=0), lambda: store.versions.gc(), lambda: store.months(),
                   lambda: store.lookup("1997-11", "user", np.arange(3)), lambda: store.files("user"),
                   lambda: store.versions.delete(["1997-10"]),
                   lambda: store.write("1997-12", {"user": _snapshot(2)})):
        with pytest.raises(ArtifactError) as info:
            action()
        line = _one_line(info.value)
        assert line.startswith(f"{root / 'manifest.json'}: ") and "outside the store's data/ directory" in line, line
    assert (outside / "keep" / "precious.txt").read_text() == "mine"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.startswith(".tmp-"))
    assert after == [p for p in before if not p.name.startswith(".tmp-")]  # nothing read-write happened


@pytest.mark.parametrize("files", [{"../../outside/x": {"bytes": 1, "sha256": "0"}},
                                   {"/etc/passwd": {"bytes": 1, "sha256": "0"}}, ["user.parquet"]],
                         ids=["dotdot-file", "absolute-file", "not-a-mapping"])
def test_manifest_file_records_outside_the_version_are_refused(tmp_path, files):
    store = EmbeddingStore(tmp_path)
    store.write("1997-10", {"user": _snapshot(0)})
    _tamper(tmp_path, 0, files=files)
    with pytest.raises(ArtifactError, match="manifest.json: version '1997-10'"):
        store.lookup("1997-10", "user", np.arange(3))


def test_commit_records_size_and_sha256_of_every_file(tmp_path):
    store = EmbeddingStore(tmp_path)
    v = store.write("1997-10", {"user": _snapshot(0), "item": _snapshot(1)})
    entry = json.loads((tmp_path / "manifest.json").read_text())["versions"][0]
    assert sorted(entry["files"]) == ["item.parquet", "user.parquet"] == sorted(v.files)
    for name, rec in entry["files"].items():
        data = (v.path / name).read_bytes()
        assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    v.verify()  # intact


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = [
    # id, what is done to user.parquet of the version, message fragment
    ("flipped-byte-middle", lambda p: _flip(p, p.stat().st_size // 2), "store file is corrupt"),
    ("flipped-byte-first", lambda p: _flip(p, 0), "store file is corrupt"),
    ("flipped-byte-last", lambda p: _flip(p, -1), "store file is corrupt"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:-10]), "store file is corrupt"),
    ("appended", lambda p: p.write_bytes(p.read_bytes() + b"\0"), "store file is corrupt"),
    ("deleted", lambda p: p.unlink(), "store file is missing"),
]


@pytest.mark.parametrize("damage, match", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_damaged_snapshot_file_is_refused_naming_it(tmp_path, damage, match):
    store = EmbeddingStore(tmp_path)
    v = store.write("1997-10", {"user": _snapshot(0), "item": _snapshot(1)})
    damage(v.file("user.parquet"))
    fresh = EmbeddingStore(tmp_path)
    with pytest.raises(ArtifactError) as info:
        fresh.lookup("1997-10", "user", np.arange(3))
    line = _one_line(info.value)
    assert line.startswith(f"{v.file('user.parquet')}: ") and match in line and "version '1997-10'" in line
    assert fresh.lookup("1997-10", "item", _snapshot(1)[0])[1].all()  # the other entity's file is intact


def test_a_loaded_snapshot_is_verified_once(tmp_path, monkeypatch):
    from mdctr.platform.stores import versioned

    store = EmbeddingStore(tmp_path)
    store.write("1997-10", {"user": _snapshot(0)})
    calls = []
    real = versioned.file_digest
    monkeypatch.setattr(versioned, "file_digest", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        store.lookup("1997-10", "user", np.arange(10))
    assert len(calls) == 1


def test_next_write_and_gc_remove_scratch_of_dead_writers_only(tmp_path):
    store = VersionedStore(tmp_path, kind="test")
    with store.write("v1") as d:
        (d / "part.bin").write_bytes(b"1")
    dead = tmp_path / f".tmp-{_dead_pid()}-deadbeef"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "predictions.parquet").write_bytes(b"x" * 100)
    mine = tmp_path / f".tmp-{os.getpid()}-cafecafe"  # a live writer's (this process)
    mine.mkdir()
    odd = tmp_path / ".tmp-notapid"
    odd.mkdir()
    with store.write("v2") as d:
        (d / "part.bin").write_bytes(b"2")
        assert not dead.exists() and mine.exists() and odd.exists()  # gone before the new version is written
    (dead / "again").mkdir(parents=True)
    store.gc()
    assert not dead.exists() and mine.exists() and odd.exists()
    assert store.names() == ["v1", "v2"]

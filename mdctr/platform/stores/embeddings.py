"""The TPM embedding store: monthly snapshots of user and item embeddings, keyed by raw id.

One snapshot is one version of a :class:`~mdctr.platform.stores.versioned.VersionedStore`
named by its month (``YYYY-MM``) and holding one Parquet file per entity::

    data/1997-11-3fa2c1d0/user.parquet    id int64 (sorted), month string, embedding list<float>[D]
    data/1997-11-3fa2c1d0/item.parquet

Rules (on top of the versioned store's):

- A snapshot holds the ids its model was trained on; ids it never saw are absent, and a
  lookup reports them as not found (the consumer supplies a default).
- ``lookup`` reads a snapshot's file once, after checking its size and SHA-256 against the
  manifest, and then answers from memory (an :class:`~mdctr.platform.stores.index.IdIndex`
  over its ids).
- ``gc(keep=K)`` keeps the K newest months.

DuckDB reads the committed files directly::

    import duckdb
    duckdb.sql(f"SELECT month, count(*) FROM read_parquet({store.files('user')}) GROUP BY month")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mdctr.platform.stores.index import IdIndex
from mdctr.platform.stores.versioned import Version, VersionedStore

ENTITIES = ("user", "item")
MAX_LOADED = 16  # snapshot tables kept in memory for lookups


def _check_month(month: str) -> str:
    parts = month.split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or len(parts[0]) != 4 or not 1 <= int(parts[1]) <= 12:
        raise ValueError(f"snapshot month must be YYYY-MM, got {month!r}")
    return month


class EmbeddingStore:
    """Monthly user/item embedding snapshots under ``root``."""

    def __init__(self, root: str | Path):
        self.versions = VersionedStore(root, kind="tpm-embeddings")
        self.root = self.versions.root
        self._loaded: dict[tuple[Path, str], tuple[IdIndex, np.ndarray]] = {}

    def write(self, month: str, tables: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict | None = None) -> Version:
        """Commit the snapshot of ``month``: ``tables[entity] = (ids (n,), vectors (n, D))``.

        Replaces an existing snapshot of the same month atomically.
        """
        _check_month(month)
        unknown = set(tables) - set(ENTITIES)
        if unknown:
            raise ValueError(f"unknown entities {sorted(unknown)} (expected {ENTITIES})")
        meta = dict(meta or {})
        with self.versions.write(month, meta) as tmp:
            for entity, (ids, vectors) in tables.items():
                ids = np.asarray(ids, dtype=np.int64)
                vectors = np.asarray(vectors, dtype=np.float32)
                if vectors.ndim != 2 or len(vectors) != len(ids):
                    raise ValueError(f"{entity}: {len(ids)} ids but vectors of shape {vectors.shape}")
                if len(np.unique(ids)) != len(ids):
                    raise ValueError(f"{entity}: duplicate ids in the snapshot")
                order = np.argsort(ids, kind="stable")
                dim = vectors.shape[1]
                emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors[order].reshape(-1)), dim)
                table = pa.table({"id": pa.array(ids[order]), "month": pa.array([month] * len(ids), pa.string()),
                                  "embedding": emb})
                pq.write_table(table, tmp / f"{entity}.parquet", row_group_size=1 << 18)
                meta[f"{entity}_rows"] = int(len(ids))
                meta["dim"] = int(dim)
        return self.versions.get(month)

    def months(self) -> list[str]:
        """Committed snapshot months, oldest first."""
        return sorted(self.versions.names())

    def latest(self, k: int, at_or_before: str | None = None) -> list[str]:
        """The newest ``k`` months at or before ``at_or_before`` (oldest first)."""
        months = [m for m in self.months() if at_or_before is None or m <= at_or_before]
        return months[-k:] if k > 0 else []

    def files(self, entity: str) -> list[str]:
        """Committed Parquet files of ``entity`` (for DuckDB / pyarrow readers)."""
        return [str(v.file(f"{entity}.parquet")) for v in self.versions.versions()]

    def meta(self, month: str) -> dict:
        return self.versions.get(month).meta

    def _table(self, month: str, entity: str) -> tuple[IdIndex, np.ndarray]:
        if entity not in ENTITIES:
            raise ValueError(f"unknown entity {entity!r} (expected {ENTITIES})")
        version = self.versions.get(month)
        key = (version.path, entity)
        hit = self._loaded.get(key)
        if hit is None:
            version.verify([f"{entity}.parquet"])  # size and SHA-256 recorded at commit
            t = pq.read_table(version.file(f"{entity}.parquet"), columns=["id", "embedding"])
            emb = t.column("embedding").combine_chunks()
            dim = emb.type.list_size
            vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            hit = (IdIndex(t.column("id").to_numpy()), np.ascontiguousarray(vectors, dtype=np.float32))
            if len(self._loaded) >= MAX_LOADED:  # a replaced or old snapshot: drop the oldest
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[key] = hit
        return hit

    def lookup(self, month: str, entity: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (B, D) float32, found (B,) bool)`` for raw ``ids``; rows of ids the
        snapshot lacks are zero with ``found`` False."""
        index, vectors = self._table(month, entity)
        pos, found = index.find(ids)
        if not len(vectors):
            return np.zeros((len(pos), vectors.shape[1]), np.float32), found
        out = vectors[pos]
        out[~found] = 0.0
        return out, found

    def gc(self, keep: int, protect: set[str] = frozenset()) -> list[str]:
        """Keep the newest ``keep`` months and those in ``protect``; returns the removed ones."""
        return self.versions.gc(keep=keep, protect=protect)

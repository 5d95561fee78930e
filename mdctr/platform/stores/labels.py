"""The teacher-label store: one teacher labels examples once, many students read the labels.

A labelling run is one version of a :class:`~mdctr.platform.stores.versioned.VersionedStore`
(kind ``teacher-labels``), written as Parquet parts::

    data/20261123-120801-3fa2c1/part-00000.parquet
        example_id int64 (sorted within the part), teacher_logit float32, domain string, ts int64

with metadata: the teacher's run id and config fingerprint, the data directory and its
fingerprint, split, row count, domains and the ``ts`` range of the labelled rows.

Rules (on top of the versioned store's):

- A version becomes visible all at once, after every part is written; a writer killed
  mid-way leaves the earlier versions readable and its own invisible (tested).
- Version names start with the UTC commit time, so name order is commit order; ``latest``
  is the newest version, ``latest`` with ``at_or_before=D`` the newest whose labelled data
  ends before D (so a student of date D never reads labels of later data).
- Example ids are unique within a version (a duplicate is refused at write).
- Readers load a version's ``example_id`` and ``teacher_logit`` columns once (~12 bytes a
  label, plus an :class:`~mdctr.platform.stores.index.IdIndex`) and answer batch lookups
  from memory; the parts' sizes and SHA-256 (recorded at commit) are checked first.
  ``files`` hands out paths unchecked (for DuckDB).

DuckDB reads the committed files directly::

    duckdb.sql(f"SELECT domain, count(*), avg(teacher_logit) FROM read_parquet({store.files('latest')}) GROUP BY 1")
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mdctr.core.errors import ArtifactError, ConfigError
from mdctr.platform.stores.index import IdIndex
from mdctr.platform.stores.versioned import Version, VersionedStore

SCHEMA = pa.schema([("example_id", pa.int64()), ("teacher_logit", pa.float32()), ("domain", pa.string()),
                    ("ts", pa.int64())])


class LabelReader:
    """Batch lookups of one version's teacher logits by example id."""

    def __init__(self, version: Version):
        self.version = version
        version.verify()  # sizes and SHA-256 of every part, before any is parsed
        parts = [pq.read_table(f, columns=["example_id", "teacher_logit"]) for f in sorted(version.path.glob("part-*.parquet"))]
        ids = np.concatenate([p.column("example_id").to_numpy() for p in parts]) if parts else np.empty(0, np.int64)
        logits = (np.concatenate([p.column("teacher_logit").to_numpy() for p in parts]) if parts
                  else np.empty(0, np.float32))
        self.ids, self.logits = ids, logits.astype(np.float32)
        self.index = IdIndex(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, example_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(teacher_logit (B,) float32, found (B,) bool)``; missing ids get 0 and False."""
        pos, found = self.index.find(example_ids)
        return np.where(found, self.logits[pos], 0.0).astype(np.float32), found


class TeacherLabelStore:
    """Versions of teacher labels under ``root``."""

    def __init__(self, root: str | Path):
        self.versions = VersionedStore(root, kind="teacher-labels")
        self.root = self.versions.root

    def write(self, parts: Iterable[pa.Table], meta: dict) -> Version:
        """Commit one labelling run. ``parts`` are Arrow tables with :data:`SCHEMA`'s
        columns (streamed: each is sorted and written as it arrives); ``meta`` should name
        the teacher (``teacher_run_id``, ``teacher_fingerprint``) and the data."""
        now = datetime.now(timezone.utc)
        name = f"{now:%Y%m%d-%H%M%S}-{now.microsecond:06d}-{uuid.uuid4().hex[:4]}"
        meta = dict(meta)
        rows, lo, hi, domains = 0, None, None, set()
        seen: list[np.ndarray] = []
        with self.versions.write(name, meta) as tmp:
            for i, part in enumerate(parts):
                part = part.select(SCHEMA.names).cast(SCHEMA)
                if part.num_rows == 0:
                    continue
                part = part.sort_by("example_id")
                ids = part.column("example_id").to_numpy()
                if (np.diff(ids) == 0).any():
                    raise ValueError("teacher labels: duplicate example_id within a labelling run")
                seen.append(ids)
                pq.write_table(part, tmp / f"part-{i:05d}.parquet", row_group_size=1 << 20)
                rows += part.num_rows
                mm = pc.min_max(part.column("ts")).as_py()
                lo = mm["min"] if lo is None else min(lo, mm["min"])
                hi = mm["max"] if hi is None else max(hi, mm["max"])
                domains.update(pc.unique(part.column("domain")).to_pylist())
            if len(seen) > 1:
                all_ids = np.sort(np.concatenate(seen))
                if (np.diff(all_ids) == 0).any():
                    raise ValueError("teacher labels: duplicate example_id within a labelling run")
            if rows == 0:
                raise ConfigError("teacher labels: nothing to write (no rows)", file=self.root)
            meta.update(rows=rows, ts_min=lo, ts_max=hi, domains=sorted(domains), created=time.time())
        return self.versions.get(name)

    def list(self) -> list[Version]:
        return self.versions.versions()

    def resolve(self, ref: str = "latest", *, at_or_before: date | None = None) -> Version:
        """A named version, or ``latest`` (optionally: whose data ends before ``at_or_before``)."""
        if ref != "latest":
            return self.versions.get(ref)
        versions = self.list()
        if at_or_before is not None:
            limit = datetime(at_or_before.year, at_or_before.month, at_or_before.day, tzinfo=timezone.utc).timestamp()
            versions = [v for v in versions if v.meta.get("ts_max") is not None and v.meta["ts_max"] < limit]
        if not versions:
            when = f" with data before {at_or_before}" if at_or_before else ""
            raise ArtifactError(f"no teacher-label version{when} (run `mdctr labels write` first)", file=self.root)
        return max(versions, key=lambda v: v.name)

    def reader(self, ref: str = "latest", *, at_or_before: date | None = None) -> LabelReader:
        return LabelReader(self.resolve(ref, at_or_before=at_or_before))

    def files(self, ref: str = "latest") -> list[str]:
        """The Parquet parts of a version (for DuckDB / pyarrow)."""
        return [str(f) for f in sorted(self.resolve(ref).path.glob("part-*.parquet"))]

    def read_range(self, ref: str = "latest", *, domain: str | None = None, start: int | None = None,
                   end: int | None = None) -> pa.Table:
        """Rows of a version for one domain and/or ``start <= ts < end`` (its files are
        checked against their checksums first)."""
        version = self.resolve(ref)
        version.verify()
        table = pq.read_table([str(f) for f in sorted(version.path.glob("part-*.parquet"))])
        keep = pa.array(np.ones(table.num_rows, bool))
        if domain is not None:
            keep = pc.and_(keep, pc.equal(table.column("domain"), domain))
        if start is not None:
            keep = pc.and_(keep, pc.greater_equal(table.column("ts"), start))
        if end is not None:
            keep = pc.and_(keep, pc.less(table.column("ts"), end))
        return table.filter(keep)

    def gc(self, keep: int | None = None) -> list[str]:
        """Keep the newest ``keep`` versions (None: all) and remove crashed writers' files;
        returns the removed version names."""
        return self.versions.gc(keep=keep)

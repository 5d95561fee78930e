"""Lineage of pipeline versions: what each stage run consumed and produced.

A SQL database (SQLite by default, any SQLAlchemy URL for a server database) with two
tables::

    versions     version_id (key), stage, date, config_hash, window_start, window_end,
                 rows, inputs (JSON: e.g. the CPM version and TPM snapshot months an
                 A-CTR used), metrics (JSON), path (the artifact directory, relative to
                 the store), created
    evaluations  version_id, name (e.g. "next_day"), window_start, window_end, metrics (JSON)

Rules: a version row is inserted once, after its artifact is committed, and never changed
(``record`` of an existing id is a no-op, so concurrent re-runs of one stage and date
agree); evaluations of a version are replaced by name.

Paths: with a ``root`` (the pipeline's store), ``path`` is stored relative to it (e.g.
``versions/actr-2024-03-02-HASH``) and handed out resolved against it, so a copied or moved
store reads its own versions; a recorded path that leaves the root (absolute, ``..``, a
symlink out) is refused with one :class:`ArtifactError` line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, insert,
                        select)
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from mdctr.core.errors import ArtifactError, ConfigError

#: seconds a SQLite connection waits for another process's write lock
SQLITE_BUSY_TIMEOUT_S = 60.0

_META = MetaData()
VERSIONS = Table(
    "versions", _META,
    Column("version_id", String(128), primary_key=True),
    Column("stage", String(16), nullable=False, index=True),
    Column("date", String(10), nullable=False, index=True),
    Column("config_hash", String(32), nullable=False),
    Column("window_start", String(10)),
    Column("window_end", String(10)),
    Column("rows", Integer),
    Column("inputs", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("created", Float, nullable=False),
)
EVALUATIONS = Table(
    "evaluations", _META,
    Column("version_id", String(128), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("window_start", String(10)),
    Column("window_end", String(10)),
    Column("metrics", Text, nullable=False),
)


def create_tables(meta: MetaData, engine) -> None:
    """``meta``'s tables, unless they exist. Two processes creating them at once both check,
    then both create: the second one's "already exists" means the tables are there."""
    for attempt in range(3):
        try:
            meta.create_all(engine)
            return
        except OperationalError as exc:
            if "already exists" not in str(exc.orig) or attempt == 2:
                raise


@dataclass(frozen=True)
class VersionRecord:
    version_id: str
    stage: str
    date: str
    config_hash: str
    window_start: str | None
    window_end: str | None
    rows: int | None
    inputs: dict
    metrics: dict
    path: str
    created: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Lineage:
    """The lineage database at ``url`` (tables created on first use); version paths are
    stored relative to ``root`` when one is given."""

    def __init__(self, url: str, *, root: str | Path | None = None):
        self.where = url
        self.sqlite_file = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
        if self.sqlite_file is not None:
            self.where = str(self.sqlite_file)
        self.root = None if root is None else Path(root).absolute()
        try:
            # SQLite: writers from several processes (concurrent ticks, stage jobs) wait for
            # each other's short transactions instead of failing with "database is locked"
            kw = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if url.startswith("sqlite") else {}
            self.engine = create_engine(url, **kw)
        except ArgumentError as exc:  # not a URL, or an unknown dialect / driver
            raise ConfigError(f"lineage_url: not a usable SQLAlchemy URL ({exc})") from None
        self._ready = False

    def create(self) -> None:
        """Create the database's tables (and a SQLite file) now rather than on first write."""
        self._open(write=True)

    def _open(self, *, write: bool) -> bool:
        """Create the tables on the first write; reads of a SQLite database that does not
        exist yet see no versions and create nothing (so read-only commands leave no file)."""
        if self._ready:
            return True
        if self.sqlite_file is not None and not write and not self.sqlite_file.exists():
            return False
        if self.sqlite_file is not None:
            self.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        create_tables(_META, self.engine)
        self._ready = True
        return True

    # -- paths ------------------------------------------------------------------------------
    def _outside(self, version_id: str, path: str) -> ArtifactError:
        return ArtifactError(f"version '{version_id}': recorded path {path!r} is outside the store {self.root}",
                             file=self.where)

    def _inside(self, version_id: str, rel: str) -> Path:
        """``root / rel``, refused unless ``rel`` is relative and resolves inside the root."""
        assert self.root is not None
        p = PurePosixPath(rel)
        if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or p.parts in ((), (".",)):
            raise self._outside(version_id, rel)
        full = self.root / p
        if not full.resolve().is_relative_to(self.root.resolve()):
            raise self._outside(version_id, rel)
        return full

    def relative(self, version_id: str, path: str | Path) -> str:
        """How ``path`` (absolute, or relative to the root) is stored."""
        if self.root is None:
            return str(path)
        p = Path(path)
        if p.is_absolute():
            for base in (self.root, self.root.resolve()):
                if p.is_relative_to(base):
                    p = p.relative_to(base)
                    break
            else:
                raise self._outside(version_id, str(path))
        rel = p.as_posix()
        self._inside(version_id, rel)
        return rel

    def _record(self, row) -> VersionRecord:
        m = row._mapping
        path = m["path"] if self.root is None else str(self._inside(m["version_id"], m["path"]))
        return VersionRecord(m["version_id"], m["stage"], m["date"], m["config_hash"], m["window_start"],
                             m["window_end"], m["rows"], json.loads(m["inputs"]), json.loads(m["metrics"]), path,
                             m["created"])

    # -- versions ---------------------------------------------------------------------------
    def record(self, rec: VersionRecord) -> VersionRecord:
        """Insert ``rec`` unless its version exists; returns the stored record (its path
        resolved against the root)."""
        row = rec.to_dict()
        row.update(inputs=json.dumps(rec.inputs, sort_keys=True), metrics=json.dumps(rec.metrics, sort_keys=True),
                   created=rec.created or time.time(), path=self.relative(rec.version_id, rec.path))
        self._open(write=True)
        try:
            with self.engine.begin() as con:
                con.execute(insert(VERSIONS).values(**row))
        except IntegrityError:
            pass  # recorded already (a re-run or a concurrent run of the same stage and date)
        found = self.get(rec.version_id)
        if found is None:
            raise RuntimeError(f"{rec.version_id}: inserted but not found in the lineage database")
        return found

    def get(self, version_id: str) -> VersionRecord | None:
        if not self._open(write=False):
            return None
        with self.engine.connect() as con:
            row = con.execute(select(VERSIONS).where(VERSIONS.c.version_id == version_id)).first()
        return None if row is None else self._record(row)

    def list(self, stage: str | None = None, *, config_hash: str | None = None,
             at_or_before: str | None = None) -> list[VersionRecord]:
        """Versions ordered by date, filtered by stage, config hash and date."""
        q = select(VERSIONS).order_by(VERSIONS.c.date, VERSIONS.c.created)
        if stage is not None:
            q = q.where(VERSIONS.c.stage == stage)
        if config_hash is not None:
            q = q.where(VERSIONS.c.config_hash == config_hash)
        if at_or_before is not None:
            q = q.where(VERSIONS.c.date <= at_or_before)
        if not self._open(write=False):
            return []
        with self.engine.connect() as con:
            return [self._record(r) for r in con.execute(q)]

    def set_evaluation(self, version_id: str, name: str, window: tuple[str, str], metrics: dict) -> None:
        self._open(write=True)
        with self.engine.begin() as con:
            con.execute(delete(EVALUATIONS).where((EVALUATIONS.c.version_id == version_id)
                                                  & (EVALUATIONS.c.name == name)))
            con.execute(insert(EVALUATIONS).values(version_id=version_id, name=name, window_start=window[0],
                                                   window_end=window[1], metrics=json.dumps(metrics, sort_keys=True)))

    def evaluations(self, version_id: str) -> dict[str, dict]:
        if not self._open(write=False):
            return {}
        with self.engine.connect() as con:
            rows = con.execute(select(EVALUATIONS).where(EVALUATIONS.c.version_id == version_id)).all()
        return {r._mapping["name"]: {"window": [r._mapping["window_start"], r._mapping["window_end"]],
                                     **json.loads(r._mapping["metrics"])} for r in rows}

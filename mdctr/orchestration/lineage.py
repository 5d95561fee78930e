"""Lineage of pipeline versions: what each stage run consumed and produced.

A SQL database (SQLite by default, any SQLAlchemy URL for a server database) with two
tables::

    versions     version_id (key), stage, date, config_hash, window_start, window_end,
                 rows, inputs (JSON: e.g. the CPM version and TPM snapshot months an
                 A-CTR used), metrics (JSON), path (the artifact directory), created
    evaluations  version_id, name (e.g. "next_day"), window_start, window_end, metrics (JSON)

Rules: a version row is inserted once, after its artifact is committed, and never changed
(``record`` of an existing id is a no-op, so concurrent re-runs of one stage and date
agree); evaluations of a version are replaced by name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, insert,
                        select)
from sqlalchemy.exc import ArgumentError, IntegrityError

from mdctr.core.errors import ConfigError

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


def _record(row) -> VersionRecord:
    m = row._mapping
    return VersionRecord(m["version_id"], m["stage"], m["date"], m["config_hash"], m["window_start"], m["window_end"],
                         m["rows"], json.loads(m["inputs"]), json.loads(m["metrics"]), m["path"], m["created"])


class Lineage:
    """The lineage database at ``url`` (tables created on first use)."""

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(url)
        except ArgumentError as exc:  # not a URL, or an unknown dialect / driver
            raise ConfigError(f"lineage_url: not a usable SQLAlchemy URL ({exc})") from None
        _META.create_all(self.engine)

    def record(self, rec: VersionRecord) -> VersionRecord:
        """Insert ``rec`` unless its version exists; returns the stored record."""
        row = rec.to_dict()
        row.update(inputs=json.dumps(rec.inputs, sort_keys=True), metrics=json.dumps(rec.metrics, sort_keys=True),
                   created=rec.created or time.time())
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
        with self.engine.connect() as con:
            row = con.execute(select(VERSIONS).where(VERSIONS.c.version_id == version_id)).first()
        return None if row is None else _record(row)

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
        with self.engine.connect() as con:
            return [_record(r) for r in con.execute(q)]

    def set_evaluation(self, version_id: str, name: str, window: tuple[str, str], metrics: dict) -> None:
        with self.engine.begin() as con:
            con.execute(delete(EVALUATIONS).where((EVALUATIONS.c.version_id == version_id)
                                                  & (EVALUATIONS.c.name == name)))
            con.execute(insert(EVALUATIONS).values(version_id=version_id, name=name, window_start=window[0],
                                                   window_end=window[1], metrics=json.dumps(metrics, sort_keys=True)))

    def evaluations(self, version_id: str) -> dict[str, dict]:
        with self.engine.connect() as con:
            rows = con.execute(select(EVALUATIONS).where(EVALUATIONS.c.version_id == version_id)).all()
        return {r._mapping["name"]: {"window": [r._mapping["window_start"], r._mapping["window_end"]],
                                     **json.loads(r._mapping["metrics"])} for r in rows}

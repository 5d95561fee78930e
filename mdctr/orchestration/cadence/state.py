"""The cadence's state: runs, the tick lock and the serving pointer, in the lineage database.

One SQL database holds everything a cadence knows: the pipeline's lineage (``versions``,
``evaluations``; :mod:`mdctr.orchestration.lineage`) and these tables (SQLite in the store by
default, ``lineage_url``/``--state-url`` for any SQLAlchemy URL, e.g. PostgreSQL)::

    mdctr_schema      component, version        (the schema's version, migrated on open)
    cadence_runs      run_id (= the version id it makes: STAGE-DATE-HASH), stage, day,
                      config_hash, status, attempts, not_before, job_id, error, gate (JSON),
                      created, updated
    cadence_lock      name ('tick'), holder, host, pid, acquired, heartbeat
    serving           model ('actr'), version_id, since, reason
    serving_history   id, model, action (promote, gate, manual, rollback), version_id,
                      previous, at, reason, metrics (JSON)

Run status: ``waiting`` (due, not started), ``submitted`` (a job is running), ``retry``
(failed, another attempt after ``not_before``), ``succeeded``, ``failed`` (``max_attempts``
used up), ``blocked`` (an input run failed), ``skipped`` (its training window has no rows:
nothing to train, not a failure). Every gate decision and every change of the
serving pointer appends a ``serving_history`` row with its reason.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import date

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, delete, insert, inspect, select,
                        update)
from sqlalchemy.exc import IntegrityError, OperationalError

from mdctr.core.errors import ArtifactError
from mdctr.core.io import pid_alive
from mdctr.orchestration.lineage import Lineage, create_tables

#: this code's schema version of the cadence tables
SCHEMA_VERSION = 1
COMPONENT = "cadence"

STATUSES = ("waiting", "submitted", "retry", "succeeded", "failed", "blocked", "skipped")
OPEN = ("waiting", "submitted", "retry")

_META = MetaData()
SCHEMA = Table(
    "mdctr_schema", _META,
    Column("component", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)
RUNS = Table(
    "cadence_runs", _META,
    Column("run_id", String(128), primary_key=True),
    Column("stage", String(16), nullable=False, index=True),
    Column("day", String(10), nullable=False, index=True),
    Column("config_hash", String(32), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("job_id", String(128)),
    Column("error", Text),
    Column("gate", Text),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
LOCK = Table(
    "cadence_lock", _META,
    Column("name", String(32), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
)
SERVING = Table(
    "serving", _META,
    Column("model", String(32), primary_key=True),
    Column("version_id", String(128), nullable=False),
    Column("since", Float, nullable=False),
    Column("reason", Text, nullable=False),
)
HISTORY = Table(
    "serving_history", _META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(32), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("version_id", String(128)),
    Column("previous", String(128)),
    Column("at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("metrics", Text, nullable=False),
)

#: migrations: ``MIGRATIONS[v]`` takes a database at version ``v`` to ``v + 1``
MIGRATIONS: dict[int, object] = {}


@dataclass(frozen=True)
class Run:
    run_id: str
    stage: str
    day: date
    config_hash: str
    status: str
    attempts: int
    not_before: float
    job_id: str | None
    error: str | None
    gate: dict | None
    created: float
    updated: float

    @classmethod
    def from_row(cls, row) -> "Run":
        m = row._mapping
        return cls(m["run_id"], m["stage"], date.fromisoformat(m["day"]), m["config_hash"], m["status"],
                   m["attempts"], m["not_before"], m["job_id"], m["error"],
                   json.loads(m["gate"]) if m["gate"] else None, m["created"], m["updated"])


@dataclass(frozen=True)
class Lock:
    holder: str
    host: str
    pid: int
    acquired: float
    heartbeat: float


class CadenceState:
    """The cadence tables in ``lineage``'s database (created and migrated on first write)."""

    def __init__(self, lineage: Lineage):
        self.lineage = lineage
        self.engine = lineage.engine
        self._ready = False

    # -- schema ----------------------------------------------------------------------------
    def _open(self, *, write: bool) -> bool:
        """Create (and migrate) the tables on the first write; a read of a database without
        them sees an empty state and changes nothing."""
        if self._ready:
            return True
        if not self.lineage._open(write=write):
            return False
        if not write:
            try:
                if not inspect(self.engine).has_table(SCHEMA.name):
                    return False
            except OperationalError as exc:
                raise ArtifactError(f"not a usable state database ({' '.join(str(exc.orig).split())[:160]})",
                                    file=self.lineage.where) from None
        try:
            create_tables(_META, self.engine)
            with self.engine.begin() as con:
                found = con.execute(select(SCHEMA.c.version).where(SCHEMA.c.component == COMPONENT)).scalar()
                if found is None:
                    con.execute(insert(SCHEMA).values(component=COMPONENT, version=SCHEMA_VERSION))
                    found = SCHEMA_VERSION
                if found > SCHEMA_VERSION:
                    raise ArtifactError(f"cadence schema version {found} is newer than this mdctr's "
                                        f"({SCHEMA_VERSION}): upgrade mdctr", file=self.lineage.where)
                while found < SCHEMA_VERSION:
                    MIGRATIONS[found](con)
                    found += 1
                    con.execute(update(SCHEMA).where(SCHEMA.c.component == COMPONENT).values(version=found))
        except IntegrityError:  # another process created the schema row meanwhile
            return self._open(write=write)
        except OperationalError as exc:
            raise ArtifactError(f"not a usable state database ({' '.join(str(exc.orig).split())[:160]})",
                                file=self.lineage.where) from None
        self._ready = True
        return True

    # -- the tick lock -----------------------------------------------------------------------
    def acquire(self, lease_s: float, now: float | None = None) -> tuple[str | None, Lock | None]:
        """Take the tick lock: ``(holder, None)``, or ``(None, current)`` when another live tick
        holds it. A lock whose holder is a dead process on this host, or whose heartbeat is older
        than ``lease_s``, is taken over."""
        self._open(write=True)
        now = time.time() if now is None else now
        host, pid = socket.gethostname(), os.getpid()
        holder = f"{host}:{pid}:{now:.6f}"
        row = {"name": "tick", "holder": holder, "host": host, "pid": pid, "acquired": now, "heartbeat": now}
        for _ in range(3):
            try:
                with self.engine.begin() as con:
                    con.execute(insert(LOCK).values(**row))
                return holder, None
            except IntegrityError:
                pass
            current = self.lock()
            if current is None:
                continue  # released meanwhile
            stale = (current.host == host and not pid_alive(current.pid)) or now - current.heartbeat > lease_s
            if not stale:
                return None, current
            with self.engine.begin() as con:  # take it over only if nobody else did first
                taken = con.execute(update(LOCK).where((LOCK.c.name == "tick") & (LOCK.c.holder == current.holder))
                                    .values(**row)).rowcount
            if taken == 1:
                return holder, None
        return None, self.lock()

    def lock(self) -> Lock | None:
        if not self._open(write=False):
            return None
        with self.engine.connect() as con:
            row = con.execute(select(LOCK).where(LOCK.c.name == "tick")).first()
        if row is None:
            return None
        m = row._mapping
        return Lock(m["holder"], m["host"], m["pid"], m["acquired"], m["heartbeat"])

    def heartbeat(self, holder: str) -> bool:
        """Renew the lock; False if ``holder`` no longer holds it (taken over as stale)."""
        with self.engine.begin() as con:
            return con.execute(update(LOCK).where((LOCK.c.name == "tick") & (LOCK.c.holder == holder))
                               .values(heartbeat=time.time())).rowcount == 1

    def release(self, holder: str) -> None:
        with self.engine.begin() as con:
            con.execute(delete(LOCK).where((LOCK.c.name == "tick") & (LOCK.c.holder == holder)))

    # -- runs --------------------------------------------------------------------------------
    def add(self, run_id: str, stage: str, day: date, config_hash: str) -> bool:
        """Record a due run (status ``waiting``) unless it is recorded; True if it was new."""
        self._open(write=True)
        now = time.time()
        try:
            with self.engine.begin() as con:
                con.execute(insert(RUNS).values(run_id=run_id, stage=stage, day=day.isoformat(),
                                                config_hash=config_hash, status="waiting", attempts=0,
                                                not_before=0.0, created=now, updated=now))
        except IntegrityError:
            return False
        return True

    def update(self, run_id: str, **fields) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        if "gate" in fields and fields["gate"] is not None:
            fields["gate"] = json.dumps(fields["gate"], sort_keys=True)
        with self.engine.begin() as con:
            con.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(updated=time.time(), **fields))

    def get(self, run_id: str) -> Run | None:
        if not self._open(write=False):
            return None
        with self.engine.connect() as con:
            row = con.execute(select(RUNS).where(RUNS.c.run_id == run_id)).first()
        return None if row is None else Run.from_row(row)

    def runs(self, *, stage: str | None = None, status: tuple[str, ...] | None = None) -> list[Run]:
        """Runs oldest first (by day, then when they were recorded)."""
        if not self._open(write=False):
            return []
        q = select(RUNS).order_by(RUNS.c.day, RUNS.c.created)
        if stage is not None:
            q = q.where(RUNS.c.stage == stage)
        if status is not None:
            q = q.where(RUNS.c.status.in_(status))
        with self.engine.connect() as con:
            return [Run.from_row(r) for r in con.execute(q)]

    # -- serving -----------------------------------------------------------------------------
    def serving(self, model: str = "actr") -> str | None:
        if not self._open(write=False):
            return None
        with self.engine.connect() as con:
            return con.execute(select(SERVING.c.version_id).where(SERVING.c.model == model)).scalar()

    def record_decision(self, model: str, action: str, version_id: str, reason: str, metrics: dict) -> None:
        """Append a decision about ``version_id`` to the history; unless ``action`` is
        ``gate``, point the serving pointer at it (in the same transaction)."""
        if action not in ("promote", "gate", "manual", "rollback"):
            raise ValueError(f"unknown serving action {action!r}")
        serve = action != "gate"
        self._open(write=True)
        now = time.time()
        with self.engine.begin() as con:
            previous = con.execute(select(SERVING.c.version_id).where(SERVING.c.model == model)).scalar()
            if serve:
                if previous is None:
                    con.execute(insert(SERVING).values(model=model, version_id=version_id, since=now, reason=reason))
                else:
                    con.execute(update(SERVING).where(SERVING.c.model == model)
                                .values(version_id=version_id, since=now, reason=reason))
            con.execute(insert(HISTORY).values(model=model, action=action, version_id=version_id, previous=previous,
                                               at=now,
                                               reason=reason, metrics=json.dumps(metrics, sort_keys=True)))

    def history(self, model: str = "actr") -> list[dict]:
        """The serving decisions for ``model``, oldest first."""
        if not self._open(write=False):
            return []
        with self.engine.connect() as con:
            rows = con.execute(select(HISTORY).where(HISTORY.c.model == model).order_by(HISTORY.c.id)).all()
        return [{**r._mapping, "metrics": json.loads(r._mapping["metrics"])} for r in rows]

"""The tick: what is due up to now, started in dependency order, retried, gated, recorded.

:meth:`Cadence.tick` at ``now`` (a timestamp; its UTC date is "today"):

1. **Lock.** It takes the tick lock in the state database or, if another live tick holds it,
   does nothing (a CronJob's ``concurrencyPolicy: Forbid``). A lock whose holder died is
   taken over.
2. **Plan.** Every run the due rules name from ``cadence.start`` to today (TPM on the first of
   a month, CPM on its weekday, A-CTR daily, teacher labels on their schedule and whenever
   the teacher has a newer run than the latest labels), plus, on the cadence's first day, the
   inputs that have no version yet, is recorded once as ``waiting`` (its run id is the
   version id it makes, so nothing can be recorded twice). A catch-up of more than
   ``cadence.max_catchup_days`` days needs ``backfill``.
3. **Run.** Oldest first and inputs first, at most ``max_parallel`` at a time: a run starts
   when the latest runs of its input stages (at or before its day) succeeded; it is
   ``blocked`` if one of them failed, and ``skipped`` if its training window has no rows. A failed attempt is retried after
   ``retry_backoff_s * 2**(attempt - 1)`` seconds, up to ``max_attempts``, then ``failed``;
   unrelated runs go on meanwhile.
4. **Gate.** A succeeded A-CTR replaces the serving version only if it passes the promotion
   gate (:mod:`.gate`); every decision is recorded.

With ``wait`` (the default) the tick returns when nothing more can start; without it, once
everything that can start now has been started (the next tick follows them up). Running a
tick again at the same ``now`` starts nothing new.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from mdctr.core.errors import ConfigError
from mdctr.orchestration.cadence import gate
from mdctr.orchestration.cadence.executors import FAILED, RUNNING, SUCCEEDED, Executor
from mdctr.orchestration.cadence.state import CadenceState, Lock, Run
from mdctr.orchestration.config import CadenceConfig
from mdctr.orchestration.stages.registry import get_stage, schedule_order

log = logging.getLogger("mdctr.cadence")

#: the model the serving pointer and the gate are about
SERVED = "actr"


@dataclass
class TickResult:
    today: date
    locked_by: Lock | None = None
    planned: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    gated: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("today", "locked_by")} | {
            "today": self.today.isoformat()}


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


class Cadence:
    """The cadence of ``pipeline`` (its config's ``cadence:`` section), its state in
    ``state`` and its runs on ``executor``. ``say`` prints one line per event."""

    def __init__(self, pipeline, state: CadenceState, executor: Executor, *, cadence: CadenceConfig | None = None,
                 say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep):
        cadence = cadence if cadence is not None else pipeline.cfg.cadence
        if cadence is None:
            raise ConfigError("cadence: the config has no cadence section (e.g. cadence: {start: 1998-03-01})")
        self.pipeline, self.state, self.executor = pipeline, state, executor
        self.cfg: CadenceConfig = cadence
        self.say, self.sleep = say, sleep
        self.order = {s.name: i for i, s in enumerate(schedule_order(pipeline.cfg))}

    # -- planning -------------------------------------------------------------------------
    def run_id(self, stage: str, day: date) -> str:
        return self.pipeline.version_id(stage, day)

    def expected(self, today: date) -> list[tuple[str, date]]:
        """The runs the cadence owes up to ``today``, oldest first, inputs first."""
        cfg = self.pipeline.cfg
        stages = schedule_order(cfg)
        out: list[tuple[str, date]] = []
        for day in days_between(self.cfg.start, today) if today >= self.cfg.start else []:
            names = [s.name for s in stages if s.due(cfg).due(day)]
            if day == self.cfg.start:  # the first day: inputs without a version run too
                names = self.pipeline.with_inputs(names, day)
            out += [(n, day) for n in names]
        if "labels" in self.order and today >= self.cfg.start:
            out += self._teacher_labels(today, out)
        return sorted(out, key=lambda r: (r[1], self.order[r[0]]))

    def _teacher_labels(self, today: date, planned: list[tuple[str, date]]) -> list[tuple[str, date]]:
        """Labels for today if the teacher's current run has none yet (its run is part of
        the labels' version hash, so a newer teacher run means a new hash)."""
        wanted = self.pipeline.stage_hash("labels")
        if any(n == "labels" for n, _ in planned) or self.pipeline.available("labels", today):
            return []
        if any(r.config_hash == wanted for r in self.state.runs(stage="labels")):
            return []
        return [("labels", today)]

    def plan(self, today: date, *, backfill: bool) -> list[str]:
        """Record the owed runs not yet recorded; returns their run ids."""
        missing = [(n, d) for n, d in self.expected(today) if self.state.get(self.run_id(n, d)) is None]
        if missing and not backfill:
            span = (today - missing[0][1]).days
            if span > self.cfg.max_catchup_days:
                raise ConfigError(f"--now: {len(missing)} runs to catch up since {missing[0][1]} ({span} days, more "
                                  f"than cadence.max_catchup_days {self.cfg.max_catchup_days}): pass --backfill")
        new = []
        for name, day in missing:
            rid = self.run_id(name, day)
            if self.state.add(rid, name, day, self.pipeline.stage_hash(name)):
                new.append(rid)
        return new

    # -- readiness ------------------------------------------------------------------------
    def _inputs(self, run: Run, runs: list[Run]) -> tuple[str, str | None]:
        """``("ready" | "wait" | "blocked", why)`` for ``run`` given every recorded run."""
        for dep in get_stage(run.stage).inputs(self.pipeline.cfg):
            wanted = self.pipeline.stage_hash(dep)
            before = [r for r in runs if r.stage == dep and r.config_hash == wanted and r.day <= run.day
                      and r.status != "skipped"]  # a skipped run made no version: an earlier one serves
            if before:
                last = before[-1]
                if last.status in ("failed", "blocked"):
                    return "blocked", f"input {last.run_id} {last.status}"
                if last.status != "succeeded":
                    return "wait", None
            elif not self.pipeline.available(dep, run.day):
                return "blocked", f"no {dep} version at or before {run.day}"
        return "ready", None

    # -- the tick -------------------------------------------------------------------------
    def tick(self, now: datetime, *, backfill: bool = False, wait: bool = True) -> TickResult:
        today = now.date()
        result = TickResult(today)
        holder, current = self.state.acquire(self.cfg.lock_lease_s)
        if holder is None:
            result.locked_by = current
            since = datetime.fromtimestamp(current.acquired, timezone.utc)
            self.say(f"another tick holds the lock ({current.holder}, since {since:%Y-%m-%d %H:%M:%S}Z): nothing done")
            return result
        try:
            result.planned = self.plan(today, backfill=backfill)
            for rid in result.planned:
                self.say(f"due      {rid}")
            self._drive(holder, result, wait=wait)
        finally:
            self.state.release(holder)
        result.open = [r.run_id for r in self.state.runs(status=("waiting", "submitted", "retry"))]
        return result

    def _drive(self, holder: str, result: TickResult, *, wait: bool) -> None:
        while True:
            if not self.state.heartbeat(holder):
                raise RuntimeError("the tick lock was taken over by another tick (this one stalled)")
            self._follow_up(result)
            runs = self.state.runs()
            in_flight = sum(r.status == "submitted" for r in runs)
            now = time.time()
            started_any = False
            for run in sorted((r for r in runs if r.status in ("waiting", "retry")),
                              key=lambda r: (r.day, self.order.get(r.stage, 99))):
                if in_flight >= self.cfg.max_parallel:
                    break
                if run.not_before > now:
                    continue
                ready, why = self._inputs(run, runs)
                if ready == "blocked":
                    self.state.update(run.run_id, status="blocked", error=why)
                    result.blocked.append(run.run_id)
                    self.say(f"blocked  {run.run_id}: {why}")
                    runs = self.state.runs()
                    continue
                if ready == "wait":
                    continue
                empty = self.pipeline.empty_window(run.stage, run.day)
                if empty is not None:  # nothing to train on that day: no version, not a failure
                    self.state.update(run.run_id, status="skipped", error=str(empty))
                    result.skipped.append(run.run_id)
                    self.say(f"skipped  {run.run_id}: no rows in its training window")
                    runs = self.state.runs()
                    continue
                attempt = run.attempts + 1
                # recorded first: a tick killed from here on leaves a job id the next one follows
                self.state.update(run.run_id, status="submitted", attempts=attempt,
                                  job_id=self.executor.job_id(run, attempt))
                self.say(f"start    {run.run_id} (attempt {attempt}/{self.cfg.max_attempts})")
                self.executor.start(run, attempt)
                result.started.append(run.run_id)
                in_flight += 1
                started_any = True
                runs = self.state.runs()  # a local executor may have finished it already
            if started_any:
                continue
            runs = self.state.runs()
            if not wait:
                self._follow_up(result)
                return
            if any(r.status == "submitted" for r in runs):
                self.sleep(self.cfg.poll_s)
                continue
            retries = [r.not_before for r in runs if r.status == "retry"]
            if retries:
                self.sleep(max(0.0, min(retries) - time.time()))
                continue
            return

    def _follow_up(self, result: TickResult) -> None:
        """Poll the submitted runs; record their ends, retries and gate decisions."""
        for run in self.state.runs(status=("submitted",)):
            job_id = run.job_id
            state, error = self.executor.poll(job_id)
            if state == RUNNING:
                continue
            if state == SUCCEEDED and self.pipeline.lineage.get(run.run_id) is None:
                state, error = FAILED, f"job {job_id} succeeded but no version {run.run_id} was recorded"
            if state == SUCCEEDED:
                self.state.update(run.run_id, status="succeeded", error=None)
                result.succeeded.append(run.run_id)
                self.say(f"done     {run.run_id}")
                if run.stage == SERVED:
                    self._gate(run, result)
            elif run.attempts < self.cfg.max_attempts:
                delay = self.cfg.retry_backoff_s * 2 ** (run.attempts - 1)
                self.state.update(run.run_id, status="retry", error=error, not_before=time.time() + delay)
                result.retrying.append(run.run_id)
                self.say(f"retry    {run.run_id} in {delay:.0f} s: {error}")
            else:
                self.state.update(run.run_id, status="failed", error=error)
                result.failed.append(run.run_id)
                self.say(f"FAILED   {run.run_id} after {run.attempts} attempts: {error}")

    def _gate(self, run: Run, result: TickResult) -> None:
        lineage = self.pipeline.lineage
        candidate = lineage.get(run.run_id)
        serving_id = self.state.serving(SERVED)
        serving = lineage.get(serving_id) if serving_id is not None else None
        if serving is not None and serving.date >= candidate.date:
            return  # a newer version serves already (e.g. promoted by hand)
        if not self.cfg.gate.enabled:
            decision = gate.Decision(True, "promoted (the gate is off)", {})
        else:
            decision = gate.decide(self.pipeline, candidate, serving, self.cfg.gate)
        self.state.update(run.run_id, gate={"promoted": decision.promote, "reason": decision.reason,
                                            **decision.metrics})
        self.state.record_decision(SERVED, "promote" if decision.promote else "gate", run.run_id, decision.reason,
                                   decision.metrics)
        (result.promoted if decision.promote else result.gated).append(run.run_id)
        self.say(f"{'serving ' if decision.promote else 'gated   '} {run.run_id}: {decision.reason}")

"""Where the cadence's runs execute: as Ray jobs (``mdctr cadence tick``) or in this process
(``mdctr cadence replay`` and ``tick --executor local``).

An executor starts attempt ``n`` of a run and later tells how it went:

- ``job_id(run, attempt)``: the attempt's job id, deterministic (for Ray, the submission id
  ``mdctr-<run id>``, then ``-2``, ``-3``, ...), recorded before the job starts;
- ``start(run, attempt)``: idempotent: a job that exists already (submitted by a tick killed
  right after) is not submitted again.
- ``poll(job_id) -> (state, error)``: ``running``, ``succeeded`` or ``failed`` (with one line
  saying why).

Each run is ``mdctr pipeline run STAGE --date DAY --only``: the cadence orders the stages
itself, so a job never runs another stage's inputs.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mdctr.orchestration.cadence.state import Run
from mdctr.orchestration.ray import submit

log = logging.getLogger("mdctr.cadence")

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


class Executor(Protocol):
    def job_id(self, run: Run, attempt: int) -> str: ...

    def start(self, run: Run, attempt: int) -> None: ...

    def poll(self, job_id: str) -> tuple[str, str | None]: ...


def run_argv(run: Run, config: Path, state_url: str | None) -> list[str]:
    """The mdctr arguments of one run."""
    argv = ["pipeline", "run", run.stage, "--date", run.day.isoformat(), "--only", "--config", str(config)]
    if run.stage == "actr":
        argv.append("--evaluate-next-day")
    if state_url is not None:
        argv += ["--state-url", state_url]
    return argv


class LocalExecutor:
    """Runs each attempt in this process as it starts (so ``poll`` always knows the end)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.results: dict[str, tuple[str, str | None]] = {}

    def job_id(self, run: Run, attempt: int) -> str:
        return submit.attempt_id(f"local-{run.run_id}", attempt)

    def start(self, run: Run, attempt: int) -> None:
        job_id = self.job_id(run, attempt)
        try:
            self.pipeline.run(run.stage, run.day, evaluate_next_day=run.stage == "actr", verbose=False)
        except Exception as exc:  # noqa: BLE001 - a failed run is the scheduler's to record and retry
            log.debug("%s failed:\n%s", job_id, traceback.format_exc())
            self.results[job_id] = (FAILED, f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])
        else:
            self.results[job_id] = (SUCCEEDED, None)

    def poll(self, job_id: str) -> tuple[str, str | None]:
        # an attempt this process did not run was run by a tick that is gone
        return self.results.get(job_id, (FAILED, "its tick ended before the run did"))


class RayJobExecutor:
    """Submits each attempt as a Ray job (``address``: a job server; default the local
    cluster, started if needed, or the cluster this process runs in)."""

    def __init__(self, config: Path, *, address: str | None = None, state_url: str | None = None,
                 say: Callable[[str], None] = print):
        self.config, self.state_url = Path(config).absolute(), state_url
        self.client, local = submit._client(address, say)
        self.cwd = Path.cwd() if local is not None else None  # the local cluster shares this file system

    def job_id(self, run: Run, attempt: int) -> str:
        return submit.attempt_id(f"{submit.PREFIX}{run.run_id}", attempt)

    def start(self, run: Run, attempt: int) -> None:
        job_id = self.job_id(run, attempt)
        if submit._job_info(self.client, job_id) is None:  # else submitted already (by a killed tick)
            argv = run_argv(run, self.config, self.state_url)
            self.client.submit_job(entrypoint=submit.entrypoint(argv, self.cwd), submission_id=job_id,
                                   metadata={"mdctr_argv": json.dumps(argv), "mdctr_run": run.run_id})

    def poll(self, job_id: str) -> tuple[str, str | None]:
        info = submit._job_info(self.client, job_id)
        if info is None:
            return FAILED, f"job {job_id} is unknown to the cluster"
        status = submit._status(info)
        if status in ("PENDING", "RUNNING"):
            return RUNNING, None
        if status == "SUCCEEDED":
            return SUCCEEDED, None
        lines = [ln for ln in self.client.get_job_logs(job_id).splitlines() if ln.strip()]
        return FAILED, f"job {job_id} {status}: {lines[-1] if lines else info.message or ''}"[:500]

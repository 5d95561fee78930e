"""``mdctr submit``: run an mdctr command as a Ray job (``JobSubmissionClient``), DESIGN.md §7.

The submission id is deterministic, ``mdctr-<sha256(argv, sha256 of the --config file,
--date, working directory)[:16]>``, so submitting the same command again is recognised: a
pending, running or finished job is reported (``already submitted: <id> (<status>)``)
instead of duplicated; after a FAILED or STOPPED one, the command is submitted again as the
next attempt (``<id>-2``, ``<id>-3``, ...; :func:`attempt_id`). The
entrypoint is this environment's ``mdctr`` script. On the local cluster (the same machine)
the job runs in the submitter's working directory, so relative paths mean what they mean
here; on another cluster, paths must be ones its nodes see.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mdctr.core.errors import ConfigError, InputError
from mdctr.orchestration.ray import cluster

__all__ = ["PREFIX", "entrypoint", "list_jobs", "submission_id", "submit"]

PREFIX = "mdctr-"
_RUNNING = ("PENDING", "RUNNING")
_RETRYABLE = ("FAILED", "STOPPED")


class SubmitError(InputError):
    """A job cannot be submitted or followed."""


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name V`` / ``--name=V`` in ``argv`` (the last one), else None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def submission_id(argv: list[str], cwd: str | Path | None = None) -> str:
    """``mdctr-`` + the first 16 hex digits of sha256 over (argv, sha256 of --config, --date,
    and ``cwd``, the job's working directory when it has one of ours)."""
    config = _option(argv, "--config")
    config_hash = None
    if config is not None:
        path = Path(config).expanduser()
        if not path.is_file():
            raise ConfigError("--config file not found", file=path)
        config_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    parts = [list(argv), config_hash, _option(argv, "--date")]
    if cwd is not None:
        parts.append(str(cwd))
    key = json.dumps(parts)
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def entrypoint(argv: list[str], cwd: str | Path | None = None) -> str:
    """The shell command of the job: this environment's ``mdctr`` with ``argv`` (run in
    ``cwd`` if given)."""
    script = Path(sys.executable).parent / "mdctr"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "mdctr.cli"]
    command = shlex.join(head + list(argv))
    return command if cwd is None else f"cd {shlex.quote(str(cwd))} && {command}"


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


#: Ray's default dashboard (job server) port
DASHBOARD_PORT = 8265


def default_address() -> str | None:
    """The job server to use when none is given: ``RAY_ADDRESS`` if it is a URL; inside a Ray
    job (e.g. a tick run by a KubeRay RayCronJob), the dashboard of the cluster it runs in,
    on the head's address and Ray's default port; else None (the local cluster)."""
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and env and env != "auto":  # set for job drivers
        host = env.rsplit(":", 1)[0] if ":" in env else env
        return f"http://{host}:{DASHBOARD_PORT}"
    return None


def _client(address: str | None, log: Callable[[str], None]):
    """``(client, local)``: a JobSubmissionClient for ``address`` (default:
    :func:`default_address`), else for the local cluster (started if needed); ``local`` is
    the local cluster's record if the client talks to it."""
    address = address if address is not None else default_address()
    if address is None:
        info, started = cluster.up(log=log)
        if started:
            log(f"started a local cluster: dashboard {info.dashboard}")
        address = info.dashboard
    else:
        info = cluster.running()
        info = info if info is not None and info.dashboard == address.rstrip("/") else None
    cluster.apply_client_env(info)
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed ..."
    try:
        return JobSubmissionClient(address), info
    except Exception as exc:  # noqa: BLE001 - cannot connect: the user's address or cluster
        raise SubmitError(f"cannot reach the job server at {address}: {' '.join(str(exc).split())[:200]}") from exc


def _job_info(client, sid: str):
    try:
        return client.get_job_info(sid)
    except RuntimeError as exc:  # the job server answers 404 with a RuntimeError
        if "does not exist" in str(exc) or "404" in str(exc):
            return None
        raise


#: how often the job's status is polled while its logs stream, seconds
POLL_S = 0.2
#: how long an ended job's log may take to appear, seconds
LOG_GRACE_S = 5.0


async def _follow(client, sid: str, write: Callable[[str], None]) -> tuple[object, str]:
    """Stream the job's logs through ``write`` until it ends; ``(info, logs written)``.

    Ray's log stream closes only seconds after the job ends, so the status is polled
    meanwhile: once the job is over, the stream is cancelled and whatever it had not yet
    delivered is taken from the complete log."""
    written: list[str] = []

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            written.append(chunk)
            write(chunk)

    task = asyncio.ensure_future(tail())
    try:
        while True:
            info = await asyncio.to_thread(client.get_job_info, sid)
            if _status(info) not in _RUNNING:
                break
            await asyncio.sleep(POLL_S)
        # the complete log, once the job server has it (it may lag the status a moment)
        deadline = time.monotonic() + LOG_GRACE_S
        full = ""
        while not task.done() and time.monotonic() < deadline:
            full = await asyncio.to_thread(client.get_job_logs, sid)
            if full:
                break
            await asyncio.sleep(POLL_S)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    streamed = "".join(written)
    if full.startswith(streamed) and len(full) > len(streamed):
        write(full[len(streamed):])
        streamed = full
    return info, streamed


def _wait(client, sid: str, write: Callable[[str], None], log: Callable[[str], None]) -> int:
    info, logs = asyncio.run(_follow(client, sid, write))
    status = _status(info)
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if status == "SUCCEEDED":
        log(f"job {sid} SUCCEEDED")
        return 0
    log(f"job {sid} {status}: {last or info.message or ''}")
    return 1


def attempt_id(sid: str, attempt: int) -> str:
    """The submission id of ``attempt`` (1, 2, ...) of the job ``sid``: ``sid`` itself, then
    ``sid-2``, ``sid-3``, ... (a failed job is never deleted: its log stays readable)."""
    return sid if attempt == 1 else f"{sid}-{attempt}"


def _latest_attempt(client, sid: str):
    """``((id, info) of the latest submitted attempt of sid or None, the next attempt number)``."""
    latest, attempt = None, 1
    while (info := _job_info(client, attempt_id(sid, attempt))) is not None:
        latest, attempt = (attempt_id(sid, attempt), info), attempt + 1
    return latest, attempt


def submit(argv: list[str], *, address: str | None = None, wait: bool = True,
           write: Callable[[str], None] = print, log: Callable[[str], None] = print) -> int:
    """Submit ``mdctr <argv>`` as a job; with ``wait``, stream its logs through ``write`` and
    return 0 if it SUCCEEDED, else 1. Messages about the job go to ``log``."""
    if not argv:
        raise SubmitError("nothing to submit: give the mdctr arguments after '--'")
    if argv[0] in ("mdctr", "submit"):
        raise SubmitError(f"give the arguments of mdctr, without '{argv[0]}' (e.g. mdctr submit -- data validate DIR)")
    client, local = _client(address, log)
    cwd = Path.cwd() if local is not None else None  # the local cluster shares this file system
    sid = submission_id(argv, cwd)
    latest, attempt = _latest_attempt(client, sid)
    if latest is not None:
        old_id, old = latest
        status = _status(old)
        if status not in _RETRYABLE:
            log(f"already submitted: {old_id} ({status})")
            if status in _RUNNING and wait:
                return _wait(client, old_id, write, log)
            return 0 if status in ("SUCCEEDED", *_RUNNING) else 1
        sid = attempt_id(sid, attempt)
        log(f"previous job {old_id} {status}: submitting again as {sid}")
    client.submit_job(entrypoint=entrypoint(argv, cwd), submission_id=sid,
                      metadata={"mdctr_argv": json.dumps(list(argv))})
    log(f"submitted: {sid}")
    if not wait:
        return 0
    return _wait(client, sid, write, log)


def list_jobs(address: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """mdctr's jobs on the cluster (submission ids starting with ``mdctr-``), oldest first."""
    client, _ = _client(address, log)
    rows = []
    for j in client.list_jobs():
        if not (j.submission_id or "").startswith(PREFIX):
            continue
        start = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j.start_time / 1000)) + "Z") if j.start_time else "-"
        rows.append({"id": j.submission_id, "status": _status(j), "entrypoint": j.entrypoint,
                     "start": start, "_t": j.start_time or 0})
    rows.sort(key=lambda r: r.pop("_t"))
    return rows

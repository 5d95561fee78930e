"""``mdctr cadence``: the scheduled retraining cadence (tick, status, promote, rollback,
replay, schedule)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import ConfigOpt

app = typer.Typer(no_args_is_help=True,
                  help="Scheduled retraining: tick (submit what is due), status, promote/rollback, replay, schedule.")

StateUrlOpt = typer.Option(None, "--state-url",
                           help="State database (SQLAlchemy URL; default: the config's lineage_url or STORE/lineage.sqlite).")


def _now(text: str | None) -> datetime:
    """``--now``: an ISO timestamp or date (UTC unless it names a zone); default: now."""
    from mdctr.core.errors import ConfigError

    if text is None:
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--now: expected YYYY-MM-DD[THH:MM], got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _open(config: Path, state_url: str | None, launcher=None):
    """``(pipeline, state)`` of the config (``--state-url`` replacing its lineage_url)."""
    from mdctr.cli.pipeline import _config
    from mdctr.orchestration.cadence.state import CadenceState
    from mdctr.orchestration.stages import Pipeline

    pipe = Pipeline(_config(config, state_url=state_url), launcher)
    return pipe, CadenceState(pipe.lineage)


def _say(msg: str) -> None:
    typer.echo(msg)


@app.command("tick")
def tick_cmd(
    config: Path = ConfigOpt,
    now: Optional[str] = typer.Option(None, "--now", help="The time to tick at, YYYY-MM-DDTHH:MM (UTC; default now)."),
    state_url: Optional[str] = StateUrlOpt,
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray job server URL (default: the local cluster, or the one this runs in)."),
    executor: str = typer.Option("ray", "--executor", help="ray (each run a Ray job) or local (in this process)."),
    backfill: bool = typer.Option(False, "--backfill", help="Allow catching up more than cadence.max_catchup_days."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Start what can start and return (the next tick follows up)."),
) -> int:
    """Start the runs that are due up to --now, inputs first; retry failures; gate promotions.
    Idempotent and exclusive: run it from cron as often as you like."""
    from mdctr.core.errors import ConfigError
    from mdctr.orchestration.cadence.executors import LocalExecutor, RayJobExecutor
    from mdctr.orchestration.cadence.tick import Cadence

    when = _now(now)
    if executor not in ("ray", "local"):
        raise ConfigError(f"--executor: expected ray or local, got {executor!r}")
    pipe, state = _open(config, state_url)
    if pipe.cfg.cadence is None:
        raise ConfigError("cadence: section missing (e.g. cadence: {start: 1998-03-01})", file=config)
    runner = LocalExecutor(pipe) if executor == "local" else RayJobExecutor(config, address=address,
                                                                             state_url=state_url, say=_say)
    result = Cadence(pipe, state, runner, say=_say).tick(when, backfill=backfill, wait=not no_wait)
    if result.locked_by is not None:
        return 0
    typer.echo(f"tick {when:%Y-%m-%dT%H:%M}Z: {len(result.planned)} due, {len(result.started)} started, "
               f"{len(result.succeeded)} succeeded, {len(result.failed)} failed, {len(result.blocked)} blocked, "
               f"{len(result.skipped)} skipped (no rows), "
               f"{len(result.open)} open; serving {state.serving() or '-'}")
    return 1 if result.failed or result.blocked else 0


@app.command("status")
def status_cmd(
    config: Path = ConfigOpt,
    state_url: Optional[str] = StateUrlOpt,
    now: Optional[str] = typer.Option(None, "--now", help="For 'next due' (default now)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """Per stage: last success, next due, open and failed runs; the serving version."""
    from mdctr.orchestration.cadence.status import cadence_status, format_status

    pipe, state = _open(config, state_url)
    report = cadence_status(pipe, state, _now(now).date())
    typer.echo(json.dumps(report, indent=1) if as_json else format_status(report))


@app.command("promote")
def promote_cmd(
    version: str = typer.Argument(..., help="An A-CTR version id."),
    config: Path = ConfigOpt,
    state_url: Optional[str] = StateUrlOpt,
    reason: str = typer.Option("promoted by hand", "--reason", help="Recorded with the change."),
) -> None:
    """Make VERSION the serving A-CTR (recorded with its reason)."""
    from mdctr.orchestration.cadence.status import promote

    pipe, state = _open(config, state_url)
    promote(pipe, state, version, reason)
    typer.echo(f"serving {version}")


@app.command("rollback")
def rollback_cmd(
    config: Path = ConfigOpt,
    state_url: Optional[str] = StateUrlOpt,
    reason: str = typer.Option("rolled back by hand", "--reason", help="Recorded with the change."),
) -> None:
    """Serve the version that served before the current one."""
    from mdctr.orchestration.cadence.status import rollback

    pipe, state = _open(config, state_url)
    typer.echo(f"serving {rollback(pipe, state, reason)}")


@app.command("replay")
def replay_cmd(
    start: str = typer.Option(..., "--from", help="First day YYYY-MM-DD."),
    end: str = typer.Option(..., "--to", help="Last day YYYY-MM-DD (inclusive)."),
    config: Path = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Per-day CSV (default: STORE/replay-FROM-TO-HASH.csv)."),
) -> None:
    """The tick on a simulated clock (in this process): every day from --from to --to at
    06:00; prints the per-day table of the A-CTR's next-day AUC."""
    from mdctr.cli.pipeline import pipeline_replay

    pipeline_replay(start=start, end=end, config=config, out=out)


@app.command("schedule")
def schedule_cmd(
    kind: str = typer.Option(..., "--print", help="crontab, systemd, k8s-cronjob or raycronjob."),
    config: Path = ConfigOpt,
    cron: str = typer.Option("0 6 * * *", "--cron", help="When to tick (cron syntax)."),
    name: str = typer.Option("mdctr-cadence", "--name", help="Unit / Kubernetes object name."),
    image: Optional[str] = typer.Option(None, "--image", help="Container image with mdctr (k8s kinds)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray job server URL the tick submits to."),
    state_url: Optional[str] = StateUrlOpt,
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Directory to run in (crontab, systemd)."),
    log_file: Optional[Path] = typer.Option(None, "--log", help="Append the tick's output here (crontab)."),
    tz: str = typer.Option("UTC", "--timezone", help="Time zone of --cron."),
) -> None:
    """Print a scheduler entry (crontab line, systemd units, Kubernetes CronJob or KubeRay
    RayCronJob) that runs `mdctr cadence tick` for this config."""
    import sys

    from mdctr.orchestration.cadence.schedule import ScheduleSpec, render

    here = Path(sys.executable).parent / "mdctr"
    k8s = kind in ("k8s-cronjob", "raycronjob")
    spec = ScheduleSpec(config=str(config if k8s else config.absolute()), mdctr="mdctr" if k8s or not here.exists()
                        else str(here), cron=cron, name=name, state_url=state_url, ray_address=address,
                        workdir=str(workdir.absolute()) if workdir else (None if k8s else str(Path.cwd())),
                        log=str(log_file.absolute()) if log_file else None, timezone=tz,
                        **({"image": image} if image else {}))
    typer.echo(render(kind, spec), nl=False)

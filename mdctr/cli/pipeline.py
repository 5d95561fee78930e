"""``mdctr pipeline``: the E-CDCTR tri-level transfer (run a stage, replay, lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import ConfigOpt

app = typer.Typer(no_args_is_help=True,
                  help="E-CDCTR tri-level transfer: run a stage for a date, replay the calendar, lineage.")


def _config(config: Path, workers: int | None = None, state_url: str | None = None):
    """The pipeline config (``--workers`` overrides ``resources.workers``; with more than one
    worker, the stages' world size is the number of workers; ``--state-url`` overrides
    ``lineage_url``); its ``store`` may not exist yet but must not be a file."""
    from mdctr.core.errors import ConfigError
    from mdctr.orchestration.config import load_pipeline_config

    cfg = load_pipeline_config(config)
    if state_url is not None:
        cfg = cfg.model_copy(update={"lineage_url": state_url})
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        cfg = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"workers": workers})})
    if cfg.resources.workers > 1:
        cfg = cfg.model_copy(update={"world_size": cfg.resources.workers})
    if Path(cfg.store).exists() and not Path(cfg.store).is_dir():
        raise ConfigError(f"store: {cfg.store} is not a directory", file=config)
    return cfg


def _pipeline(config: Path, launcher=None):
    from mdctr.orchestration.stages import Pipeline

    return Pipeline(_config(config), launcher)


def _stage(name: str, flag: str = "STAGE") -> str:
    from mdctr.core.errors import ConfigError
    from mdctr.orchestration.stages import STAGES

    if name not in STAGES:
        raise ConfigError(f"{flag}: unknown stage {name!r} (expected one of {', '.join(STAGES)})")
    return name


@app.command("run")
def pipeline_run(
    stage: str = typer.Argument(..., help="tpm (monthly tiny pretrain), cpm (weekly complete pretrain) or actr (daily ad model)."),
    day: str = typer.Option(..., "--date", help="Run date YYYY-MM-DD: the stage trains only on data before it."),
    config: Path = ConfigOpt,
    evaluate: bool = typer.Option(False, "--evaluate-next-day", help="actr: also score the ad rows of --date."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Ray Train workers for tpm/cpm/actr (resources.workers)."),
    only: bool = typer.Option(False, "--only",
                              help="Fail if an input stage has no usable version, rather than run it first."),
    state_url: Optional[str] = typer.Option(None, "--state-url", help="Lineage database URL (replaces lineage_url)."),
) -> None:
    """Run one stage for one date, after the inputs it needs that have no usable version yet
    (run for the same date). Idempotent: an existing version is reported, not re-run."""
    import json

    from mdctr.core.timeutil import parse_date
    from mdctr.orchestration.ray.train import resources_launcher
    from mdctr.orchestration.stages import Pipeline

    stage, when = _stage(stage), parse_date(day)  # arguments first: a bad one creates no store
    cfg = _config(config, workers, state_url)
    with resources_launcher(cfg.resources) as launcher:
        pipe = Pipeline(cfg, launcher)
        for name in ([] if only else pipe.with_inputs([stage], when)[:-1]):
            dep, dep_created = pipe.run(name, when)
            typer.echo(("created " if dep_created else "exists  ") + dep.version_id)
        rec, created = pipe.run(stage, when, evaluate_next_day=evaluate)
    typer.echo(("created " if created else "exists  ") + rec.version_id)
    typer.echo(json.dumps({"inputs": rec.inputs, "window": [rec.window_start, rec.window_end], "rows": rec.rows,
                           "metrics": rec.metrics, "path": rec.path}, indent=1))


@app.command("replay")
def pipeline_replay(
    start: str = typer.Option(..., "--from", help="First day YYYY-MM-DD."),
    end: str = typer.Option(..., "--to", help="Last day YYYY-MM-DD (inclusive)."),
    config: Path = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Per-day CSV (default: STORE/replay-FROM-TO-HASH.csv)."),
) -> None:
    """Run the cadence (monthly TPM, weekly CPM, daily A-CTR) over historical days and write
    the per-day table of the A-CTR's next-day AUC."""
    from mdctr.core.errors import ConfigError
    from mdctr.core.timeutil import parse_date
    from mdctr.orchestration.replay import calendar_days, format_table, replay

    first, last = parse_date(start, "--from"), parse_date(end, "--to")
    calendar_days(first, last)  # flags first: a bad one creates no store
    if out is not None and out.is_dir():
        raise ConfigError("--out is a directory (it names the per-day CSV file)", file=out)
    result = replay(_pipeline(config), first, last, out=out)
    typer.echo(format_table(result))


@app.command("list")
def pipeline_list(
    config: Path = ConfigOpt,
    stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
) -> None:
    """Versions recorded in the config's lineage database."""
    if stage is not None:
        _stage(stage, "--stage")
    for rec in _pipeline(config).lineage.list(stage):
        typer.echo(f"{rec.version_id:<32} window {rec.window_start}..{rec.window_end}  rows {rec.rows}  "
                   f"inputs {rec.inputs}")


@app.command("show")
def pipeline_show(version: str = typer.Argument(..., help="Version id."), config: Path = ConfigOpt) -> None:
    """One version's lineage: data window, rows, inputs (CPM version, TPM months), metrics."""
    import json

    from mdctr.core.errors import ArtifactError

    pipe = _pipeline(config)
    rec = pipe.lineage.get(version)
    if rec is None:
        raise ArtifactError(f"no version '{version}' in {pipe.lineage.engine.url}")
    typer.echo(json.dumps({**rec.to_dict(), "evaluations": pipe.lineage.evaluations(version)}, indent=1))

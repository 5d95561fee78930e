"""``mdctr tune``: an Optuna study of a train config's ``tune:`` space (``mdctr tune show``
prints a study's report again)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                  help="Tune a train config's tune: space with Optuna (TPE, pruning on validation WAUC), "
                       "trials in parallel on Ray.")

StorageOpt = typer.Option(None, "--storage",
                          help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file "
                               "(default: STATE/tune/STUDY.journal).")
StudyOpt = typer.Option(None, "--study", help="Study name (default: the config's name and hash).")


@app.callback()
def tune_cmd(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="Train config with a tune: section."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials in the study (default tune.trials)."),
    parallel: int = typer.Option(1, "--parallel", help="Trials at once, each a Ray task (1: in this process)."),
    storage: Optional[str] = StorageOpt,
    study: Optional[str] = StudyOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue an existing study."),
    out: Optional[Path] = typer.Option(None, "--out", help="Trials' run directories and best.yaml "
                                                              "(default runs/tune/STUDY)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address for the trials "
                                                                  "(default: a private local one)."),
) -> None:
    """Run a study: best trials, parameter importances, and the best config as a YAML that
    `mdctr train --config` takes."""
    if ctx.invoked_subcommand is not None:
        return
    from mdctr.adapters.run import load_config
    from mdctr.core.errors import ConfigError
    from mdctr.orchestration.tune.study import tune

    if config is None:
        raise ConfigError("--config: missing (the train config with a tune: section; see 'mdctr tune --help')")
    cfg = load_config(config)
    result = tune(config, cfg, trials=trials, parallel=parallel, storage=storage, study=study, resume=resume,
                  out=out, address=address)
    typer.echo(result.table)


@app.command("show")
def show_cmd(
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the latest study: the "
                                                               "newest journal file, or in --storage the "
                                                               "study started last)."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """A study's report: best trials, their parameters, importances, failures."""
    from mdctr.orchestration.tune.study import latest_study, report

    typer.echo(report(study or latest_study(storage), storage).table)

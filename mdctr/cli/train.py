"""``mdctr train`` and ``mdctr evaluate`` (top-level commands, registered on the root app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import SPLITS
from mdctr.core.errors import ConfigError


def train_cmd(
    config: Path = typer.Option(..., "--config", help="Training config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Processes (gloo on CPU, NCCL on GPU)."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the random train/valid/test split."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Initialisation and data-order seed."),
    workers: Optional[int] = typer.Option(None, "--workers",
                                          help="Ray Train workers (resources.workers); more than 1 trains on Ray."),
) -> None:
    """Train a model; writes RUN_DIR/metrics.json (test split)."""
    from mdctr.adapters.run import load_config, train
    from mdctr.platform.run import resolve_config

    cfg = resolve_config(config, world_size=world_size, split_seed=split_seed, seed=seed, workers=workers,
                         loader=load_config)
    from mdctr.orchestration.ray.train import resources_launcher

    with resources_launcher(cfg.resources) as launcher:
        train(cfg, out, resume=resume, launcher=launcher)


def evaluate_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset directory or NAME:SPLIT (default: the run's)."),
    split: str = typer.Option("test", "--split", help="train, valid, test or all."),
    out: Optional[Path] = typer.Option(None, "--out", help="Metrics file (default RUN_DIR/eval-SPLIT.json)."),
) -> None:
    """Evaluate a run's best model and write its metrics."""
    from mdctr.adapters.run import evaluate

    if split not in SPLITS:
        raise ConfigError(f"--split must be train, valid, test or all, got '{split}'")
    evaluate(run, data, split=None if split == "all" else split, out=out)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the root ``app``."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)

"""``mdctr data``: prepare, generate and validate datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import OutOpt, OverwriteOpt

app = typer.Typer(no_args_is_help=True, help="Prepare, generate and validate datasets.")


@app.command("prepare")
def data_prepare(
    dataset: str = typer.Argument(..., help="Built-in dataset: movielens-100k."),
    split: str = typer.Option("gender", "--split", help="Domains: gender, age, age3 (three age groups), occupation or ads."),
    out: Path = OutOpt,
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the random 80/10/10 split."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Download (once, into the cache), check and write a built-in dataset."""
    from mdctr.domains.datasets import prepare_builtin
    from mdctr.domains.summary import summary_text

    spec = prepare_builtin(dataset, split, out, split_seed=split_seed, overwrite=overwrite)
    typer.echo(summary_text(spec))
    typer.echo(f"wrote {out}")


@app.command("synth")
def data_synth(
    config: Path = typer.Option(..., "--config", help="Synthetic data config (YAML)."),
    out: Path = OutOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the config's seed."),
    rows: Optional[int] = typer.Option(None, "--rows", help="Override the config's row count."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Generate seeded synthetic multi-domain data with a known ground truth."""
    from mdctr.core.config import parse_model
    from mdctr.domains.summary import summary_text
    from mdctr.domains.synthetic import SyntheticConfig, generate_synthetic, load_synthetic_config

    cfg = load_synthetic_config(config)
    updates = {k: v for k, v in (("seed", seed), ("rows", rows)) if v is not None}
    if updates:  # a bad override is one line naming the flag, like a bad config
        flags = " ".join(f"--{k}" for k in updates)
        cfg = parse_model({**cfg.model_dump(), **updates}, SyntheticConfig, source=f"{config} with {flags}")
    spec = generate_synthetic(cfg, out, overwrite=overwrite)
    typer.echo(summary_text(spec))
    typer.echo(f"wrote {out}")


@app.command("validate")
def data_validate(directory: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check a dataset against the data contract and print its summary."""
    from mdctr.domains.summary import summary_text
    from mdctr.domains.validate import validate_dataset

    spec, _ = validate_dataset(directory)
    typer.echo(summary_text(spec))
    typer.echo(f"{directory}: ok")

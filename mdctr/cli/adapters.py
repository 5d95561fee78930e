"""``mdctr adapters``: MLoRA per-domain adapters (finetune, list, merge, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import OverwriteOpt

app = typer.Typer(no_args_is_help=True, help="MLoRA per-domain adapters: finetune, list, merge, export.")


@app.command("finetune")
def adapters_finetune(
    base: Path = typer.Option(..., "--base", help="Run directory of the backbone (plain or MLoRA)."),
    domain: str = typer.Option(..., "--domain", help="Domain to train an adapter for."),
    data: str = typer.Option(..., "--data", help="Dataset directory or NAME:SPLIT holding the domain."),
    out: Path = typer.Option(..., "--out", help="Adapter directory (adapter.safetensors + adapter.json)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: the base run's train.epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adapter learning rate (default: 5x the base's dense lr)."),
    alpha: Optional[int] = typer.Option(None, "--alpha", help="rank = max(d_out // alpha, 1)."),
    lora_rank: Optional[int] = typer.Option(None, "--rank", help="Explicit LoRA rank for every layer."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Adapter init and data order (default: the base run's)."),
    patience: Optional[int] = typer.Option(None, "--patience",
                                           help="Epochs without a better validation AUC before stopping (default 2)."),
    rows: str = typer.Option("all", "--rows",
                             help="Embedding rows the adapter also learns for this domain: all (a residual for every "
                                  "row the domain uses), cold (only ids the backbone never trained), none."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train one domain's adapter on a frozen backbone."""
    from mdctr.adapters.onboard import finetune

    meta = finetune(base, domain, data, out, epochs=epochs, lr=lr, alpha=alpha, lora_rank=lora_rank, seed=seed, rows=rows,
                    overwrite=overwrite, **({} if patience is None else {"patience": patience}))
    auc = meta["metrics"]["domains"].get(domain, {}).get("auc")
    counts = ", ".join(f"{f} {n:,}" for f, n in meta.get("row_counts", {}).items()) or "none"
    typer.echo(f"adapter '{domain}': {meta['parameters']:,} parameters "
               f"({100 * meta['parameter_share']:.2f}% of the backbone; {meta['rows']} rows: {counts}), test AUC {auc}, "
               f"{meta['train_seconds']} s -> {out}")


@app.command("list")
def adapters_list(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    adapter: list[Path] = typer.Option([], "--adapter", help="Also list these adapter directories."),
) -> None:
    """List a run's adapters (and external adapter directories)."""
    from mdctr.adapters.serve import list_adapters
    from mdctr.core.io import format_table

    rows = list_adapters(run, adapter)
    typer.echo(format_table(rows) if rows else f"{run}: no adapters")


@app.command("merge")
def adapters_merge(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    domain: str = typer.Option(..., "--domain", help="Domain whose adapter to fold into the weights."),
    out: Path = typer.Option(..., "--out", help="Merged single-domain run directory."),
    adapter: list[Path] = typer.Option([], "--adapter", help="External adapter directories (from finetune)."),
    data: Optional[str] = typer.Option(None, "--data", help="Rows used to check the merge (default: the domain's)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Fold one domain's adapter into the backbone weights (a plain run for serving)."""
    from mdctr.adapters.serve import merge

    info = merge(run, domain, out, adapters=adapter, data=data, overwrite=overwrite)
    typer.echo(f"merged '{domain}' -> {out} (max |logit gap| {info['max_abs_logit_gap']:.2e} "
               f"over {info['rows_checked']} rows)")


@app.command("export")
def adapters_export(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    out: Path = typer.Option(..., "--out", help="Artifact directory (model.pt + model.json)."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Merge this domain's adapter (default: all domains, routed)."),
    adapter: list[Path] = typer.Option([], "--adapter", help="External adapter directories (from finetune)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write a TorchScript inference artifact that loads with torch.jit.load alone."""
    from mdctr.adapters.export import export

    meta = export(run, out, domain=domain, adapters=adapter, overwrite=overwrite)
    what = f"domain '{domain}' (merged)" if domain else f"all domains {meta['domains']}"
    typer.echo(f"exported {what} -> {out}/model.pt (inputs: {meta['inputs']}; keys {meta['keys']})")

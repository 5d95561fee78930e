"""``mdctr``: the command line. Thin: parses arguments and calls into the packages.

Bad input exits with status 2 and one line on stderr: ``mdctr: error: <file>: <problem>``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mdctr.domains.errors import DataContractError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Multi-domain CTR on TorchRec: data, training, adapters, transfer, distillation.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare, generate and validate datasets.")
app.add_typer(data_app, name="data")

OutOpt = typer.Option(..., "--out", help="Output directory (written atomically).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace --out if it exists.")


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Argument(..., help="Built-in dataset: movielens-100k."),
    split: str = typer.Option("gender", "--split", help="Domains: gender, age, occupation or ads."),
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


@data_app.command("synth")
def data_synth(
    config: Path = typer.Option(..., "--config", help="Synthetic data config (YAML)."),
    out: Path = OutOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the config's seed."),
    rows: Optional[int] = typer.Option(None, "--rows", help="Override the config's row count."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Generate seeded synthetic multi-domain data with a known ground truth."""
    from mdctr.domains.config_io import parse_model
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


@data_app.command("validate")
def data_validate(directory: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check a dataset against the data contract and print its summary."""
    from mdctr.domains.summary import summary_text
    from mdctr.domains.validate import validate_dataset

    spec, _ = validate_dataset(directory)
    typer.echo(summary_text(spec))
    typer.echo(f"{directory}: ok")


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="Training config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Processes (gloo on CPU, NCCL on GPU)."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the random train/valid/test split."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Initialisation and data-order seed."),
) -> None:
    """Train a model; writes RUN_DIR/metrics.json (test split)."""
    from mdctr.adapters.run import train

    train(config, out, resume=resume, world_size=world_size, split_seed=split_seed, seed=seed)


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset directory or NAME:SPLIT (default: the run's)."),
    split: str = typer.Option("test", "--split", help="train, valid, test or all."),
    out: Optional[Path] = typer.Option(None, "--out", help="Metrics file (default RUN_DIR/eval-SPLIT.json)."),
) -> None:
    """Evaluate a run's best model and write its metrics."""
    from mdctr.adapters.run import evaluate

    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"--split must be train, valid, test or all, got '{split}'")
    evaluate(run, data, split=None if split == "all" else split, out=out)


adapters_app = typer.Typer(no_args_is_help=True, help="MLoRA per-domain adapters: finetune, list, merge, export.")
app.add_typer(adapters_app, name="adapters")


@adapters_app.command("finetune")
def adapters_finetune(
    base: Path = typer.Option(..., "--base", help="Run directory of the backbone (plain or MLoRA)."),
    domain: str = typer.Option(..., "--domain", help="Domain to train an adapter for."),
    data: str = typer.Option(..., "--data", help="Dataset directory or NAME:SPLIT holding the domain."),
    out: Path = typer.Option(..., "--out", help="Adapter directory (adapter.safetensors + adapter.json)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: the base run's train.epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adapter learning rate (default: 5x the base's dense lr)."),
    alpha: Optional[int] = typer.Option(None, "--alpha", help="rank = max(d_out // alpha, 1)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Explicit rank for every layer."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Adapter init and data order (default: the base run's)."),
    rows: str = typer.Option("all", "--rows",
                             help="Embedding rows the adapter also learns for this domain: all (a residual for every "
                                  "row the domain uses), cold (only ids the backbone never trained), none."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train one domain's adapter on a frozen backbone."""
    from mdctr.adapters.onboard import finetune

    meta = finetune(base, domain, data, out, epochs=epochs, lr=lr, alpha=alpha, rank=rank, seed=seed, rows=rows,
                    overwrite=overwrite)
    auc = meta["metrics"]["domains"].get(domain, {}).get("auc")
    counts = ", ".join(f"{f} {n:,}" for f, n in meta.get("row_counts", {}).items()) or "none"
    typer.echo(f"adapter '{domain}': {meta['parameters']:,} parameters "
               f"({100 * meta['parameter_share']:.2f}% of the backbone; {meta['rows']} rows: {counts}), test AUC {auc}, "
               f"{meta['train_seconds']} s -> {out}")


@adapters_app.command("list")
def adapters_list(
    run: Path = typer.Option(..., "--run", help="Run directory."),
    adapter: list[Path] = typer.Option([], "--adapter", help="Also list these adapter directories."),
) -> None:
    """List a run's adapters (and external adapter directories)."""
    from mdctr.adapters.serve import list_adapters
    from mdctr.domains.summary import format_table

    rows = list_adapters(run, adapter)
    typer.echo(format_table(rows) if rows else f"{run}: no adapters")


@adapters_app.command("merge")
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


@adapters_app.command("export")
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


labels_app = typer.Typer(no_args_is_help=True, help="Teacher-label store: write, list, show, gc.")
app.add_typer(labels_app, name="labels")
StoreOpt = typer.Option("runs/labels", "--store", envvar="MDCTR_LABEL_STORE", help="Teacher-label store directory.")


@labels_app.command("write")
def labels_write(
    teacher: Path = typer.Option(..., "--teacher", help="The teacher's run directory."),
    data: str = typer.Option(..., "--data", help="Dataset directory or built-in NAME:SPLIT."),
    split: str = typer.Option("train", "--split", help="train, valid, test or all."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Random split seed (default: the teacher run's)."),
    store: str = StoreOpt,
    world_size: int = typer.Option(1, "--world-size", help="Processes predicting in parallel."),
) -> None:
    """Label a dataset split with a teacher run once; the labels become one store version."""
    from mdctr.platform.labelling import write_labels

    v = write_labels(teacher, data, store=store, split=None if split == "all" else split, split_seed=split_seed,
                     world_size=world_size)
    typer.echo(f"wrote {v.name}: {v.meta['rows']:,} labels of {v.meta['domains']} by teacher "
               f"{v.meta['teacher_run_id']} -> {v.path}")


def _ts(t: Optional[int]) -> str:
    import datetime as dt

    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).date().isoformat()


@labels_app.command("list")
def labels_list(store: str = StoreOpt) -> None:
    """Committed label versions, oldest first."""
    from mdctr.platform.stores.labels import TeacherLabelStore

    versions = TeacherLabelStore(store).list()
    if not versions:
        typer.echo(f"no label versions in {store}")
    for v in versions:
        m = v.meta
        typer.echo(f"{v.name}  {m['rows']:>10,} labels  {_ts(m.get('ts_min'))}..{_ts(m.get('ts_max'))}  "
                   f"split {m.get('split')}  teacher {m.get('teacher_run_id')}")


@labels_app.command("show")
def labels_show(version: str = typer.Argument(..., help="Version name or 'latest'."), store: str = StoreOpt) -> None:
    """Row count, domains, date range and teacher of one version."""
    import json

    from mdctr.platform.stores.labels import TeacherLabelStore

    v = TeacherLabelStore(store).resolve(version)
    m = dict(v.meta, date_range=[_ts(v.meta.get("ts_min")), _ts(v.meta.get("ts_max"))])
    typer.echo(json.dumps({"version": v.name, "path": str(v.path), **m}, indent=1))


@labels_app.command("gc")
def labels_gc(keep: int = typer.Option(..., "--keep", help="Versions to keep (newest)."), store: str = StoreOpt) -> None:
    """Delete all but the newest KEEP versions (and files of crashed writers)."""
    from mdctr.platform.stores.labels import TeacherLabelStore

    removed = TeacherLabelStore(store).gc(keep)
    typer.echo(f"removed {len(removed)} version(s)" + (f": {', '.join(removed)}" if removed else ""))


pipeline_app = typer.Typer(no_args_is_help=True,
                           help="E-CDCTR tri-level transfer: run a stage for a date, replay the calendar, lineage.")
app.add_typer(pipeline_app, name="pipeline")
ConfigOpt = typer.Option(..., "--config", help="Pipeline config (configs/*_cadence.yaml).")


@pipeline_app.command("run")
def pipeline_run(
    stage: str = typer.Argument(..., help="tpm (monthly tiny pretrain), cpm (weekly complete pretrain) or actr (daily ad model)."),
    day: str = typer.Option(..., "--date", help="Run date YYYY-MM-DD: the stage trains only on data before it."),
    config: Path = ConfigOpt,
    evaluate: bool = typer.Option(False, "--evaluate-next-day", help="actr: also score the ad rows of --date."),
) -> None:
    """Run one stage for one date (idempotent: an existing version is reported, not re-run)."""
    import json

    from mdctr.orchestration.config import load_pipeline_config, parse_date
    from mdctr.orchestration.stages import Pipeline

    rec, created = Pipeline(load_pipeline_config(config)).run(stage, parse_date(day), evaluate_next_day=evaluate)
    typer.echo(("created " if created else "exists  ") + rec.version_id)
    typer.echo(json.dumps({"inputs": rec.inputs, "window": [rec.window_start, rec.window_end], "rows": rec.rows,
                           "metrics": rec.metrics, "path": rec.path}, indent=1))


@pipeline_app.command("replay")
def pipeline_replay(
    start: str = typer.Option(..., "--from", help="First day YYYY-MM-DD."),
    end: str = typer.Option(..., "--to", help="Last day YYYY-MM-DD (inclusive)."),
    config: Path = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Per-day CSV (default: STORE/replay-FROM-TO-HASH.csv)."),
) -> None:
    """Run the cadence (monthly TPM, weekly CPM, daily A-CTR) over historical days and write
    the per-day table of the A-CTR's next-day AUC."""
    from mdctr.orchestration.config import load_pipeline_config, parse_date
    from mdctr.orchestration.replay import format_table, replay
    from mdctr.orchestration.stages import Pipeline

    result = replay(Pipeline(load_pipeline_config(config)), parse_date(start, "--from"), parse_date(end, "--to"), out=out)
    typer.echo(format_table(result))


@pipeline_app.command("list")
def pipeline_list(
    config: Path = ConfigOpt,
    stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
) -> None:
    """Versions recorded in the config's lineage database."""
    from mdctr.orchestration.config import load_pipeline_config
    from mdctr.orchestration.stages import Pipeline

    for rec in Pipeline(load_pipeline_config(config)).lineage.list(stage):
        typer.echo(f"{rec.version_id:<32} window {rec.window_start}..{rec.window_end}  rows {rec.rows}  "
                   f"inputs {rec.inputs}")


@pipeline_app.command("show")
def pipeline_show(version: str = typer.Argument(..., help="Version id."), config: Path = ConfigOpt) -> None:
    """One version's lineage: data window, rows, inputs (CPM version, TPM months), metrics."""
    import json

    from mdctr.orchestration.config import load_pipeline_config
    from mdctr.orchestration.stages import Pipeline

    pipe = Pipeline(load_pipeline_config(config))
    rec = pipe.lineage.get(version)
    if rec is None:
        raise ValueError(f"no version '{version}' in {pipe.lineage.engine.url}")
    typer.echo(json.dumps({**rec.to_dict(), "evaluations": pipe.lineage.evaluations(version)}, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app, turning bad input into one line and exit 2."""
    from mdctr.platform.quiet import quiet_library_warnings

    quiet_library_warnings()
    try:
        app(args=argv, prog_name="mdctr", standalone_mode=False)
    except (DataContractError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"mdctr: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("mdctr: interrupted", err=True)
        return 130
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("mdctr: aborted", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

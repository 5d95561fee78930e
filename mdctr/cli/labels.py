"""``mdctr labels``: the teacher-label store (write, list, show, gc)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mdctr.cli._options import SPLITS, StoreOpt

app = typer.Typer(no_args_is_help=True, help="Teacher-label store: write, list, show, gc.")


def _store(store: str) -> str:
    """``--store`` may be missing (an empty store) but not something other than a directory."""
    from mdctr.core.errors import ConfigError

    if Path(store).exists() and not Path(store).is_dir():
        raise ConfigError("--store is not a directory", file=store)
    return store


@app.command("write")
def labels_write(
    teacher: Path = typer.Option(..., "--teacher", help="The teacher's run directory."),
    data: str = typer.Option(..., "--data", help="Dataset directory or built-in NAME:SPLIT."),
    split: str = typer.Option("train", "--split", help="train, valid, test or all."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Random split seed (default: the teacher run's)."),
    store: str = StoreOpt,
    world_size: int = typer.Option(1, "--world-size", help="Processes predicting in parallel."),
    start: Optional[str] = typer.Option(None, "--start", help="Label only rows on or after this UTC day (YYYY-MM-DD)."),
    end: Optional[str] = typer.Option(None, "--end", help="Label only rows before this UTC day (YYYY-MM-DD)."),
) -> None:
    """Label a dataset split with a teacher run once; the labels become one store version.

    ``--start``/``--end`` label a time window, e.g. the recent weeks students train on
    (``train.window``) with a teacher trained on the history before them."""
    from mdctr.core.errors import ConfigError
    from mdctr.core.timeutil import day_ts, parse_date
    from mdctr.platform.labelling import write_labels

    if split not in SPLITS:
        raise ConfigError(f"--split must be train, valid, test or all, got '{split}'")
    for flag, value, least in (("--world-size", world_size, 1), ("--split-seed", split_seed, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    lo, hi = (None if d is None else parse_date(d, flag) for d, flag in ((start, "--start"), (end, "--end")))
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"--start {lo} must precede --end {hi}")
    window = None if lo is None and hi is None else tuple(None if d is None else day_ts(d) for d in (lo, hi))
    v = write_labels(teacher, data, store=_store(store), split=None if split == "all" else split,
                     split_seed=split_seed, world_size=world_size, window=window)
    typer.echo(f"wrote {v.name}: {v.meta['rows']:,} labels of {v.meta['domains']} by teacher "
               f"{v.meta['teacher_run_id']} -> {v.path}")


def _ts(t: Optional[int]) -> str:
    import datetime as dt

    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).date().isoformat()


@app.command("list")
def labels_list(store: str = StoreOpt) -> None:
    """Committed label versions, oldest first."""
    from mdctr.platform.stores.labels import TeacherLabelStore

    versions = TeacherLabelStore(_store(store)).list()
    if not versions:
        typer.echo(f"no label versions in {store}")
    for v in versions:
        m = v.meta
        typer.echo(f"{v.name}  {m['rows']:>10,} labels  {_ts(m.get('ts_min'))}..{_ts(m.get('ts_max'))}  "
                   f"split {m.get('split')}  teacher {m.get('teacher_run_id')}")


@app.command("show")
def labels_show(version: str = typer.Argument(..., help="Version name or 'latest'."), store: str = StoreOpt) -> None:
    """Row count, domains, date range and teacher of one version."""
    import json

    from mdctr.platform.stores.labels import TeacherLabelStore

    v = TeacherLabelStore(_store(store)).resolve(version)
    m = dict(v.meta, date_range=[_ts(v.meta.get("ts_min")), _ts(v.meta.get("ts_max"))])
    typer.echo(json.dumps({"version": v.name, "path": str(v.path), **m}, indent=1))


@app.command("gc")
def labels_gc(keep: int = typer.Option(..., "--keep", help="Versions to keep (newest)."), store: str = StoreOpt) -> None:
    """Delete all but the newest KEEP versions (and files of crashed writers)."""
    from mdctr.core.errors import ConfigError
    from mdctr.platform.stores.labels import TeacherLabelStore

    if keep < 0:
        raise ConfigError(f"--keep must be >= 0, got {keep}")
    removed = TeacherLabelStore(_store(store)).gc(keep)
    typer.echo(f"removed {len(removed)} version(s)" + (f": {', '.join(removed)}" if removed else ""))

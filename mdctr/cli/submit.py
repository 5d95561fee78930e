"""``mdctr submit [--address URL] [--no-wait] [--list] -- ARGS``: an mdctr command as a Ray job."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer


def submit_cmd(
    args: Optional[List[str]] = typer.Argument(None, help="mdctr arguments (after '--'), e.g. data validate DIR."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Job server URL (default: the local cluster's, started if needed)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once submitted; do not follow the logs."),
    list_: bool = typer.Option(False, "--list", help="List mdctr's jobs on the cluster."),
) -> int:
    """Run an mdctr command as a Ray job; follows its logs, exits 0 if it succeeded.

    The submission id is derived from the arguments, the --config file's content and --date,
    so submitting the same command again is recognised instead of duplicated.
    """
    from mdctr.orchestration.ray import submit

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    if list_:
        rows = submit.list_jobs(address, log=log)
        if not rows:
            typer.echo("no mdctr jobs")
            return 0
        for r in rows:
            typer.echo(f"{r['id']}  {r['status']:<9}  {r['start']}  {r['entrypoint']}")
        return 0

    def write(chunk: str) -> None:
        sys.stdout.write(chunk if chunk.endswith("\n") else chunk + "\n")
        sys.stdout.flush()

    return submit.submit(list(args or []), address=address, wait=not no_wait, write=write, log=log)


def register(app: typer.Typer) -> None:
    """Add ``submit`` to the root ``app``."""
    app.command("submit")(submit_cmd)

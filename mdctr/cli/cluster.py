"""``mdctr cluster up|status|down``: the local Ray head node (:mod:`mdctr.orchestration.ray.cluster`)."""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, help="A local Ray head node (bound to 127.0.0.1 by default).")


@app.command("up")
def up_cmd(
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs the node offers (default: all)."),
    dashboard_port: Optional[int] = typer.Option(None, "--dashboard-port",
                                                 help="Dashboard / job server port (default 8265, else a free one)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Interface to bind; anything but loopback turns Ray token auth on."),
) -> None:
    """Start the head node unless one is running (idempotent)."""
    from mdctr.orchestration.ray import cluster

    if host not in cluster.LOOPBACK and not host.startswith("127."):
        typer.echo(f"mdctr: warning: Ray will listen on {host}: anyone who can reach its ports can run code "
                   f"on this machine; Ray token auth is on (keep the token secret)", err=True)
    info, started = cluster.up(num_cpus=num_cpus, dashboard_port=dashboard_port, host=host,
                               log=lambda m: typer.echo(m, err=True))
    typer.echo(("started" if started else "already running") + f": address {info.address}, "
               f"dashboard {info.dashboard}, {len(info.pids)} processes")
    if info.token_path:
        typer.echo(f"token: {info.token_path} (clients: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<a copy of it>)")


@app.command("status")
def status_cmd() -> int:
    """Address, dashboard, nodes, CPUs and jobs of the running cluster."""
    from mdctr.orchestration.ray import cluster

    info = cluster.running()
    if info is None:
        typer.echo("no cluster is running")
        return 0
    st = cluster.status(info)
    typer.echo(f"address:   {st['address']}")
    typer.echo(f"dashboard: {st['dashboard']}")
    typer.echo(f"auth:      {st['auth']}")
    typer.echo(f"nodes:     {st['nodes']}")
    typer.echo(f"cpus:      {st['cpus']:g}")
    running = [j for j in st["jobs"] if j["status"] in ("PENDING", "RUNNING")]
    typer.echo(f"jobs:      {len(st['jobs'])} ({len(running)} running)")
    for j in running:
        typer.echo(f"  {j['id']}  {j['status']}  {j['entrypoint']}")
    return 0


@app.command("down")
def down_cmd(timeout: float = typer.Option(5.0, "--timeout", help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop the cluster started by ``up`` (only its processes)."""
    from mdctr.orchestration.ray import cluster

    info, stopped = cluster.down(timeout=timeout)
    if info is None:
        typer.echo("no cluster is running")
        return
    typer.echo(f"stopped: {info.address} ({len(stopped)} processes)")

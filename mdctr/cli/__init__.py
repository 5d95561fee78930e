"""``mdctr``: the command line. Thin: parses arguments and calls into the packages.

One module per sub-app (:mod:`.data`, :mod:`.train`, :mod:`.adapters`, :mod:`.labels`,
:mod:`.pipeline`, :mod:`.cadence`, :mod:`.cluster`, :mod:`.submit`); library modules are imported inside the
commands so ``mdctr --help`` stays fast.

Exit status (:func:`main`):

* 0: done.
* 2: bad input, one line on stderr: ``mdctr: error: <file>: <problem>`` (an
  :class:`~mdctr.core.errors.InputError`), or a usage error (``mdctr: error: No such
  option: --bogus (see 'mdctr train --help')``).
* 130: interrupted (``mdctr: interrupted``).
* 1: anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import os

import typer

from mdctr.cli import adapters, cadence, cluster, data, labels, pipeline, submit, train, tune
from mdctr.core.errors import InputError

try:  # typer >= 0.2x bundles its own click; its exceptions are not the `click` package's
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException as _ClickException

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Multi-domain CTR on TorchRec: data, training, adapters, transfer, distillation.")
app.add_typer(data.app, name="data")
train.register(app)
app.add_typer(adapters.app, name="adapters")
app.add_typer(labels.app, name="labels")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(cadence.app, name="cadence")
app.add_typer(tune.app, name="tune")
app.add_typer(cluster.app, name="cluster")
submit.register(app)

#: what typer returns (instead of raising) when a command is interrupted with Ctrl-C
_INTERRUPTED = 130

#: part of the working directory of a Ray job submitted with ``--working-dir``: a copy of the
#: submitter's directory that Ray deletes with the cluster's session
_RAY_WORKING_DIR = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"


def _warn_if_in_ray_working_dir() -> None:
    cwd = os.getcwd()
    if _RAY_WORKING_DIR in cwd + os.sep:
        typer.echo(f"mdctr: warning: running in a Ray job's uploaded working directory ({cwd}): relative output "
                   "paths (--out, --store, a config's store:) are written into it and deleted with the cluster's "
                   "session; give absolute paths on storage that lasts (and that every node sees)", err=True)


def _show_usage_error(exc: _ClickException) -> None:
    """A usage error as one line naming the option or argument and where to get help; a
    command group called without a subcommand prints its help instead."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        return
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo("mdctr: error: " + " ".join(exc.format_message().split()) + hint, err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and returns the exit status (see the module doc).

    Bad input (:class:`~mdctr.core.errors.InputError`) is one line and status 2; usage
    errors are printed by typer, status 2; any other exception propagates (a bug).
    """
    from mdctr.platform.quiet import quiet_library_warnings

    quiet_library_warnings()
    _warn_if_in_ray_working_dir()
    try:
        rv = app(args=argv, prog_name="mdctr", standalone_mode=False)
    except InputError as exc:
        typer.echo("mdctr: error: " + " ".join(str(exc).splitlines()), err=True)
        return 2
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit 130)
        rv = _INTERRUPTED
    except _ClickException as exc:  # usage errors: unknown option, missing argument, bad value
        _show_usage_error(exc)
        return exc.exit_code
    except typer.Abort:  # EOF at a prompt
        typer.echo("mdctr: aborted", err=True)
        return 1
    if rv == _INTERRUPTED:
        typer.echo("mdctr: interrupted", err=True)
        return _INTERRUPTED
    return rv if isinstance(rv, int) else 0

"""Shared output helpers: the one atomic directory commit, JSON, tables, cache and state dirs.

The commit protocol, used by the dataset writer (:func:`atomic_dir`), the versioned stores
and the pipeline's stage versions: everything is written into a hidden temporary directory
next to the target (:func:`temp_sibling`), which is renamed into place only when complete
(:func:`commit_dir`); small JSON records (manifests, ``run.json``) are replaced whole
(:func:`write_json`: temp file + ``os.replace``, flushed to disk with ``durable``). A crash
leaves at most a hidden temporary entry, never a partial target; readers ignore hidden
entries. Every temporary entry carries its writer's PID (``.NAME.TAG-PID-XXXX``), so the
next writer of the same target removes what a killed one left (:func:`remove_stale`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mdctr.core.errors import InputError


def check_output(out: Path, *, overwrite: bool = False) -> None:
    """Refuse to write into an existing non-empty ``out`` unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError("output exists and is not empty (pass --overwrite to replace it)", file=out)


def temp_sibling(out: Path, tag: str = "tmp") -> Path:
    """A new hidden directory ``.NAME.TAG-PID-XXXX`` next to ``out`` (same file system:
    renames are atomic). Those of earlier writers that are gone are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return pid_scratch(out.parent, f".{out.name}.{tag}-")


def pid_scratch(parent: Path, prefix: str) -> Path:
    """A new private directory ``PREFIX + PID-XXXX`` in ``parent`` (mode 0700), after
    removing the ``PREFIX + PID-*`` entries of processes that are gone."""
    parent = Path(parent)
    remove_stale(parent, prefix)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def writer_pid(name: str, prefix: str) -> int | None:
    """The PID in an entry named ``PREFIX + PID-...`` (None if it is not such a name)."""
    if not name.startswith(prefix):
        return None
    pid, _, rest = name[len(prefix):].partition("-")
    return int(pid) if pid.isdigit() and int(pid) > 0 and rest else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove the entries ``PREFIX + PID-*`` in ``parent`` whose process is gone; returns them."""
    gone = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return gone
    for entry in entries:
        pid = writer_pid(entry.name, prefix)
        if pid is None or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        gone.append(entry)
    return gone


def scratch_dir(tag: str) -> Path:
    """A private scratch directory for work that has no output of its own (e.g. predictions
    returned in memory), under :func:`state_dir`; a killed writer's is removed by the next."""
    return pid_scratch(state_dir() / "scratch", f"{tag}-")


def commit_dir(tmp: Path, out: Path, *, overwrite: bool = False) -> bool:
    """Rename the complete directory ``tmp`` to ``out``. With ``overwrite`` an existing
    ``out`` is swapped out by rename and then deleted. Without it, if ``out`` appeared in the
    meantime (another writer committed first), ``tmp`` is removed and False returned."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists() and overwrite:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        if out.exists() and not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


@contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False, check: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it is renamed to ``out``.

    On any exception the temporary directory is removed and ``out`` is untouched.
    With ``overwrite``, an existing ``out`` is replaced (swap by rename, then delete).
    """
    out = Path(out)
    if check:
        check_output(out, overwrite=overwrite)
    tmp = temp_sibling(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty target (e.g. made by the user) is no content to keep
    commit_dir(tmp, out, overwrite=True)


def write_json(obj: dict, path: str | Path, *, durable: bool = False) -> None:
    """Write JSON atomically (temp file + rename); ``durable``: flushed to disk first."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def sync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk (before a commit makes them visible)."""
    for f in Path(root).rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def format_table(rows: list[dict]) -> str:
    """Plain fixed-width table of dict rows (same keys in each).

    >>> print(format_table([{"a": 1, "bb": "x"}, {"a": 22, "bb": "yy"}]))
    a   bb
    1   x
    22  yy
    """
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _fmt(v: object) -> str:
    """Floats to 4 decimals; small ones (learning rates, L2 weights) to 3 significant digits,
    so 1e-06 does not print as 0.0000.

    >>> [_fmt(v) for v in (0.79518, 1e-06, 0.00107, 0.0, 3)]
    ['0.7952', '1e-06', '0.00107', '0.0000', '3']
    """
    if isinstance(v, float):
        return f"{v:.3g}" if v and abs(v) < 0.01 else f"{v:.4f}"
    return str(v)


def cache_dir() -> Path:
    """``$MDCTR_CACHE``, else ``$XDG_CACHE_HOME/mdctr``, else ``~/.cache/mdctr``."""
    if os.environ.get("MDCTR_CACHE"):
        return Path(os.environ["MDCTR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mdctr"


def state_dir() -> Path:
    """Where mdctr keeps state between commands (clusters, cadence, studies):
    ``$MDCTR_STATE``, else ``$XDG_STATE_HOME/mdctr``, else ``~/.local/state/mdctr``."""
    if os.environ.get("MDCTR_STATE"):
        return Path(os.environ["MDCTR_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "mdctr"

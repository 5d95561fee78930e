"""A directory of immutable, atomically committed versions: the mechanism under every store.

Layout of a store root::

    manifest.json           the committed versions, in commit order (the only source of truth)
    data/NAME-TOKEN/        one version's files (Parquet), never modified after commit
    .tmp-PID-TOKEN/         a version being written: invisible, removed by gc once PID is gone
    .lock                   writers serialise on it (fcntl)

Rules:

- A version becomes visible all at once (the commit protocol of :mod:`mdctr.core.io`): its
  files are written into a ``.tmp-*`` directory, flushed, renamed into ``data/`` and only
  then named in ``manifest.json``, which is replaced atomically (temp file + ``os.replace``)
  under the lock.
- A writer that crashes at any point leaves the committed versions untouched and nothing
  of its own visible; :meth:`VersionedStore.gc` later removes what it left behind.
- Committing a name that exists replaces that version (the old files are removed after
  the new manifest is in place). Readers that resolved the old directory keep their open
  files (POSIX); new readers see the new version.
- Versions are read-only: there is no in-place update.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mdctr.core.errors import ArtifactError, ConfigError
from mdctr.core.io import commit_dir, sync_tree, write_json

MANIFEST = "manifest.json"
FORMAT = "mdctr-store/1"


@dataclass(frozen=True)
class Version:
    """A committed version: its name, directory (absolute) and metadata."""

    name: str
    path: Path
    created: float
    meta: dict = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name


class VersionedStore:
    """Versions under ``root`` (created on first write). ``kind`` names the store in its
    manifest, so a label store is never opened as an embedding store by mistake."""

    def __init__(self, root: str | Path, kind: str):
        self.root = Path(root).absolute()
        self.kind = kind

    # -- reading ---------------------------------------------------------------------------
    def _read_manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.exists():
            return {"format": FORMAT, "kind": self.kind, "versions": []}
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"unreadable store manifest ({exc.__class__.__name__})", file=path) from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") != self.kind:
            got = raw if isinstance(raw, dict) else {}
            raise ArtifactError(f"not a {self.kind} store (format {got.get('format')}, kind {got.get('kind')})",
                                file=path)
        return raw

    def versions(self) -> list[Version]:
        """Committed versions in commit order."""
        return [Version(v["name"], self.root / v["dir"], v["created"], v.get("meta", {}))
                for v in self._read_manifest()["versions"]]

    def get(self, name: str) -> Version:
        versions = self.versions()
        for v in versions:
            if v.name == name:
                return v
        names = [v.name for v in versions]
        has = ("the store has none" if not names else f"has {names}" if len(names) <= 5
               else f"has {len(names)}, the newest {names[-3:]}")
        raise ArtifactError(f"no version '{name}' ({has})", file=self.root)

    def names(self) -> list[str]:
        return [v.name for v in self.versions()]

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_manifest(self, manifest: dict) -> None:
        write_json(manifest, self.root / MANIFEST, durable=True)

    @contextmanager
    def write(self, name: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield an empty directory to write version ``name``'s files into; commit on exit.

        ``meta`` (JSON-serialisable) may be extended inside the block: it is stored with the
        version at commit. On an exception nothing is committed and the files are removed.
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid version name {name!r}")
        meta = {} if meta is None else meta
        self.root.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        tmp = self.root / f".tmp-{os.getpid()}-{token}"
        tmp.mkdir()
        try:
            yield tmp
            sync_tree(tmp)
            with self._locked():
                manifest = self._read_manifest()
                (self.root / "data").mkdir(exist_ok=True)
                rel = f"data/{name}-{token}"
                if not commit_dir(tmp, self.root / rel):
                    raise RuntimeError(f"{self.root / rel}: version directory exists")
                old = [v["dir"] for v in manifest["versions"] if v["name"] == name]
                manifest["versions"] = [v for v in manifest["versions"] if v["name"] != name]
                manifest["versions"].append({"name": name, "dir": rel, "created": time.time(), "meta": meta})
                self._write_manifest(manifest)
            for d in old:
                shutil.rmtree(self.root / d, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def delete(self, names: list[str]) -> None:
        """Remove versions (manifest first, then files)."""
        with self._locked():
            manifest = self._read_manifest()
            gone = [v["dir"] for v in manifest["versions"] if v["name"] in names]
            manifest["versions"] = [v for v in manifest["versions"] if v["name"] not in names]
            self._write_manifest(manifest)
        for d in gone:
            shutil.rmtree(self.root / d, ignore_errors=True)

    def gc(self, keep: int | None = None) -> list[str]:
        """Keep the newest ``keep`` versions (by name order; None keeps all) and remove files
        no committed version owns (crashed writers, replaced versions). Returns the removed
        version names."""
        removed: list[str] = []
        if keep is not None:
            if keep < 0:
                raise ConfigError(f"keep must be >= 0, got {keep}")
            names = sorted(self.names())
            removed = names[: max(len(names) - keep, 0)]
            if removed:
                self.delete(removed)
        if not self.root.exists():
            return removed
        with self._locked():
            owned = {v["dir"] for v in self._read_manifest()["versions"]}
            for d in (self.root / "data").glob("*") if (self.root / "data").exists() else []:
                if f"data/{d.name}" not in owned:
                    shutil.rmtree(d, ignore_errors=True)
            for d in self.root.glob(".tmp-*"):
                if not _alive(int(d.name.split("-")[1])):
                    shutil.rmtree(d, ignore_errors=True)
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

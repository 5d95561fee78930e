"""A directory of immutable, atomically committed versions: the mechanism under every store.

Layout of a store root::

    manifest.json           the committed versions, in commit order (the only source of truth),
                            each with its directory and every file's size and SHA-256
    data/NAME-TOKEN/        one version's files (Parquet), never modified after commit
    .tmp-PID-TOKEN/         a version being written (or a writer's scratch): invisible,
                            removed by gc or the next write once PID is gone
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
- Paths stay inside the root: a manifest entry's directory must be ``data/NAME`` and resolve
  (symlinks followed) inside the root, or the manifest is refused before anything is read
  or deleted.
- Integrity: the size and SHA-256 of every file of a version are recorded in its manifest
  entry at commit (hashed in the same pass that flushes the files to disk);
  :meth:`Version.verify` checks them (streaming, before a reader parses a file). A
  mismatch, a missing or an unrecorded file is one :class:`ArtifactError` naming the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mdctr.core.errors import ArtifactError, ConfigError
from mdctr.core.io import commit_dir, remove_stale, write_json

MANIFEST = "manifest.json"
FORMAT = "mdctr-store/1"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def seal(directory: Path) -> dict[str, dict]:
    """Flush every file under ``directory`` to disk and return ``{relative name: {"bytes",
    "sha256"}}`` (one read of each file: hashed while it is synced)."""
    files: dict[str, dict] = {}
    for f in sorted(Path(directory).rglob("*")):
        if f.is_file() and not f.is_symlink():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
                os.fsync(fh.fileno())
            files[f.relative_to(directory).as_posix()] = {"bytes": f.stat().st_size, "sha256": h.hexdigest()}
    return files


@dataclass(frozen=True)
class Version:
    """A committed version: its name, directory (absolute), metadata and the size and
    SHA-256 of each of its files (``files``, recorded at commit)."""

    name: str
    path: Path
    created: float
    meta: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict, compare=False, repr=False)

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self, names: list[str] | None = None) -> None:
        """Check the version's files (or only ``names``) against the sizes and SHA-256
        recorded at commit; with ``names`` None also refuse files that were not recorded.
        Raises one :class:`ArtifactError` line naming the file."""
        if not self.path.is_dir():
            raise ArtifactError(f"version '{self.name}' is missing its directory", file=self.path)
        if not self.files:
            raise ArtifactError(f"version '{self.name}' has no file checksums in {MANIFEST} "
                                f"(written by an older mdctr: write it again)", file=self.path)
        if names is None:
            present = {f.relative_to(self.path).as_posix() for f in self.path.rglob("*") if not f.is_dir()}
            extra = sorted(present - set(self.files))
            if extra:
                raise ArtifactError(f"file not recorded in {MANIFEST} (version '{self.name}')",
                                    file=self.path / extra[0])
        for name in (sorted(self.files) if names is None else names):
            want = self.files.get(name)
            path = self.path / name
            if want is None:
                raise ArtifactError(f"file not recorded in {MANIFEST} (version '{self.name}')", file=path)
            if not path.is_file():
                raise ArtifactError(f"store file is missing (version '{self.name}')", file=path)
            if path.stat().st_size != want.get("bytes") or file_digest(path) != want.get("sha256"):
                raise ArtifactError(f"store file is corrupt: its size or SHA-256 differs from {MANIFEST} "
                                    f"(version '{self.name}')", file=path)


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
        versions = raw.get("versions")
        if not isinstance(versions, list):
            raise ArtifactError("store manifest has no list of versions", file=path)
        for i, v in enumerate(versions):
            self._check_entry(v, i, path)
        return raw

    def _check_entry(self, v: object, i: int, path: Path) -> None:
        """A manifest entry must name its version and a directory ``data/NAME`` that resolves
        inside the root (nothing is read or deleted through an entry that fails this)."""
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not isinstance(v.get("dir"), str):
            raise ArtifactError(f"version entry {i} has no name or dir", file=path)
        rel = v["dir"]
        parts = PurePosixPath(rel).parts
        inside = (len(parts) == 2 and parts[0] == "data" and parts[1] not in (".", "..")
                  and not parts[1].startswith(".") and "\\" not in rel and rel == "/".join(parts))
        if inside:
            root = self.root.resolve()
            inside = (self.root / rel).resolve().is_relative_to(root / "data")
        if not inside:
            raise ArtifactError(f"version '{v['name']}': dir {rel!r} is outside the store's data/ directory",
                                file=path)
        files = v.get("files", {})
        if not isinstance(files, dict):
            raise ArtifactError(f"version '{v['name']}': files is not a mapping", file=path)
        for name in files:
            p = PurePosixPath(name)
            if p.is_absolute() or not p.parts or ".." in p.parts or "\\" in name:
                raise ArtifactError(f"version '{v['name']}': file {name!r} is outside its directory", file=path)

    def versions(self) -> list[Version]:
        """Committed versions in commit order."""
        return [Version(v["name"], self.root / v["dir"], v.get("created", 0.0), v.get("meta", {}), v.get("files", {}))
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
        self.remove_stale()
        tmp = self.scratch()
        token = tmp.name.split("-")[2]
        try:
            yield tmp
            files = seal(tmp)
            with self._locked():
                manifest = self._read_manifest()
                (self.root / "data").mkdir(exist_ok=True)
                rel = f"data/{name}-{token}"
                if not commit_dir(tmp, self.root / rel):
                    raise RuntimeError(f"{self.root / rel}: version directory exists")
                old = [v["dir"] for v in manifest["versions"] if v["name"] == name]
                manifest["versions"] = [v for v in manifest["versions"] if v["name"] != name]
                manifest["versions"].append({"name": name, "dir": rel, "created": time.time(), "meta": meta,
                                             "files": files})
                self._write_manifest(manifest)
            for d in old:
                shutil.rmtree(self.root / d, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def scratch(self, *, create: bool = True) -> Path:
        """A new hidden ``.tmp-PID-TOKEN`` directory in the root (made unless ``create`` is
        False): a writer's private space (a version being written, or scratch files),
        removed by :meth:`gc` or the next write once this process is gone."""
        tmp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if create:
            tmp.mkdir(parents=True)
        return tmp

    def remove_stale(self) -> list[Path]:
        """Remove the ``.tmp-PID-*`` entries of processes that are gone; returns them."""
        return remove_stale(self.root, ".tmp-")

    def delete(self, names: list[str]) -> None:
        """Remove versions (manifest first, then files)."""
        with self._locked():
            manifest = self._read_manifest()
            gone = [v["dir"] for v in manifest["versions"] if v["name"] in names]
            manifest["versions"] = [v for v in manifest["versions"] if v["name"] not in names]
            self._write_manifest(manifest)
        for d in gone:
            shutil.rmtree(self.root / d, ignore_errors=True)

    def gc(self, keep: int | None = None, protect: set[str] = frozenset()) -> list[str]:
        """Keep the newest ``keep`` versions (by name order; None keeps all) and those named in
        ``protect`` (still in use), and remove files no committed version owns (crashed
        writers, replaced versions). Returns the removed version names."""
        removed: list[str] = []
        if keep is not None:
            if keep < 0:
                raise ConfigError(f"keep must be >= 0, got {keep}")
            names = sorted(self.names())
            removed = [n for n in names[: max(len(names) - keep, 0)] if n not in protect]
            if removed:
                self.delete(removed)
        if not self.root.exists():
            return removed
        with self._locked():
            owned = {v["dir"] for v in self._read_manifest()["versions"]}
            for d in (self.root / "data").glob("*") if (self.root / "data").exists() else []:
                if f"data/{d.name}" not in owned:
                    if d.is_dir() and not d.is_symlink():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink(missing_ok=True)
            self.remove_stale()
        return removed

"""Reading torch distributed checkpoints without running code from them, and checking
their bytes first.

torch's ``FileSystemReader.read_metadata`` unpickles a checkpoint's ``.metadata`` with a
plain ``pickle.load``, and ``DefaultLoadPlanner.load_bytes`` reads non-tensor entries with
``torch.load(weights_only=False)``: a planted checkpoint runs any code it likes. Here:

- :class:`SafeReader` unpickles ``.metadata`` with an allow-list of the checkpoint metadata
  types (and refuses anything else, with one line naming the file);
- :class:`SafeLoadPlanner` reads non-tensor entries with ``torch.load(weights_only=True)``;
- :func:`write_checksums` / :func:`verify_checksums`: every file of a checkpoint directory
  has its size and SHA-256 in ``checksums.json`` (written by rank 0 after the save),
  checked before anything in the directory is parsed.

>>> import io, pickle, os
>>> class Boom:
...     def __reduce__(self):
...         return (os.system, ("echo pwned",))
>>> try:
...     MetadataUnpickler(io.BytesIO(pickle.dumps(Boom()))).load()
... except pickle.UnpicklingError as e:
...     print(e)
posix.system is not allowed in checkpoint metadata
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from mdctr.core.errors import ArtifactError
from mdctr.core.io import write_json

CHECKSUMS = "checksums.json"
CHECKSUM_FORMAT = "mdctr-checksums/1"

#: the only globals a checkpoint's ``.metadata`` pickle may name (plus torch dtypes)
ALLOWED_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "ChunkStorageMetadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict"),
})


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds checkpoint metadata types and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def read_metadata(path: Path) -> Metadata:
    """A checkpoint's ``.metadata`` file, unpickled with the allow-list."""
    try:
        with open(path, "rb") as fh:
            metadata = MetadataUnpickler(fh).load()
    except FileNotFoundError:
        raise ArtifactError("checkpoint has no .metadata", file=Path(path).parent) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise ArtifactError(f"refusing checkpoint metadata ({exc})", file=path) from None
    if not isinstance(metadata, Metadata):
        raise ArtifactError(f"checkpoint metadata is a {type(metadata).__name__}, not Metadata", file=path)
    return metadata


class SafeReader(FileSystemReader):
    """:class:`FileSystemReader` whose metadata is read by :func:`read_metadata`."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        metadata = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """:class:`DefaultLoadPlanner` that reads non-tensor entries with ``weights_only=True``
    (the parent's own reader then only sees bytes this planner wrote from a vetted object)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ArtifactError(f"refusing a checkpoint entry ({str(exc).splitlines()[0]})") from None
        vetted = io.BytesIO()
        torch.save(obj, vetted)
        vetted.seek(0)
        super().load_bytes(read_item, vetted)


# -- checksums ------------------------------------------------------------------------------------


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the size and SHA-256 of every file in ``directory`` (rank 0, after a save)."""
    directory = Path(directory)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    write_json({"format": CHECKSUM_FORMAT, "files": files}, directory / CHECKSUMS, durable=True)


def verify_checksums(directory: Path) -> None:
    """Check every file of ``directory`` against ``checksums.json``: none missing, none
    extra, sizes and SHA-256 equal. One :class:`ArtifactError` line naming the file if not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError("checkpoint not found", file=directory)
    record_path = directory / CHECKSUMS
    try:
        record = json.loads(record_path.read_text())
        files = record["files"]
        if record.get("format") != CHECKSUM_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
    except FileNotFoundError:
        raise ArtifactError(f"checkpoint has no {CHECKSUMS} (incomplete or not written by mdctr)",
                            file=directory) from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"unreadable {CHECKSUMS} ({exc.__class__.__name__})", file=record_path) from None
    present = {p.name for p in directory.iterdir() if p.name != CHECKSUMS}
    extra = sorted(present - set(files))
    if extra:
        raise ArtifactError("file not recorded in checksums.json", file=directory / extra[0])
    for name, want in files.items():
        path = directory / name
        if "/" in name or name.startswith("..") or not path.is_file():
            raise ArtifactError("checkpoint file is missing", file=path)
        if path.stat().st_size != want.get("bytes") or file_digest(path) != want.get("sha256"):
            raise ArtifactError("checkpoint file is corrupt (its SHA-256 differs from checksums.json)", file=path)

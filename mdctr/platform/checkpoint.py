"""Epoch checkpoints with ``torch.distributed.checkpoint`` (sharded tables, fused optimizer
state, dense weights) plus a small ``state.json`` that names the last and best epochs.

Layout of a checkpoint directory::

    state.json        {"last_epoch": 3, "best_epoch": 2, "best_wauc": 0.78, "bad_epochs": 1,
                       "stopped": false, "history": [...]}
    epoch-0002/       DCP files of the best epoch (the run's model) + checksums.json
    epoch-0003/       DCP files of the last epoch (where --resume continues) + checksums.json

``state.json`` is replaced atomically after the epoch's DCP files are complete, so a crash
mid-save leaves the previous state pointing at complete checkpoints. Epoch directories that
are neither last nor best are removed. Every epoch directory carries the size and SHA-256 of
its files (``checksums.json``), checked before it is loaded; its metadata is read without
unpickling anything but checkpoint metadata types (:mod:`mdctr.platform.safe_dcp`).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from mdctr.core.errors import ArtifactError
from mdctr.core.io import write_json
from mdctr.platform.safe_dcp import (  # noqa: F401  (verify_checksums is part of this module's API)
    SafeLoadPlanner, SafeReader, read_metadata, verify_checksums, write_checksums,
)

STATE_FILE = "state.json"


@dataclass
class TrainState:
    last_epoch: int = -1
    best_epoch: int = -1
    best_wauc: float = float("-inf")
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict] = field(default_factory=list)

    @property
    def next_epoch(self) -> int:
        return self.last_epoch + 1


def epoch_dir(ckpt_dir: Path, epoch: int) -> Path:
    return Path(ckpt_dir) / f"epoch-{epoch:04d}"


def read_state(ckpt_dir: Path) -> TrainState | None:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("best_wauc") is None:
            raw["best_wauc"] = float("-inf")
        state = TrainState(**raw)
        if not all(isinstance(v, int) for v in (state.last_epoch, state.best_epoch, state.bad_epochs)) \
                or not isinstance(state.history, list):
            raise TypeError("wrong field types")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"unreadable training state ({exc.__class__.__name__})", file=path) from None
    return state


def write_state(ckpt_dir: Path, state: TrainState) -> None:
    raw = asdict(state)
    if raw["best_wauc"] == float("-inf"):
        raw["best_wauc"] = None
    write_json(raw, Path(ckpt_dir) / STATE_FILE)


def save(model: nn.Module, optimizer, directory: Path) -> None:
    """Collective: every rank writes its shards of model and optimizer state; rank 0 then
    records every file's checksum (:func:`~mdctr.platform.safe_dcp.write_checksums`)."""
    state = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    save_state(state, directory)


def save_state(state: dict, directory: Path) -> None:
    """Collective: ``dcp.save`` of ``state`` (``{"model": ..., "optim": ...}``) plus its
    checksums. ``dcp.save`` returns on rank 0 once every rank's files and the metadata are
    written, so rank 0 hashes complete files."""
    dcp.save(state, checkpoint_id=str(directory))
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_checksums(Path(directory))


def load(model: nn.Module, optimizer, directory: Path, *, partial: bool = False,
         exclude: Callable[[str], bool] | None = None) -> None:
    """Collective: load ``directory`` into ``model`` (and ``optimizer``), resharding if needed.

    The directory's files are checked against their checksums first, and nothing in it is
    unpickled (:mod:`mdctr.platform.safe_dcp`). ``partial``: entries of the model the
    checkpoint lacks (e.g. adapters added after a backbone was trained) keep their current
    values. ``exclude``: model entries (by name) that are not loaded and keep their current
    values (e.g. a head re-initialised when a model starts from another's checkpoint).
    """
    verify_checksums(Path(directory))
    read_metadata(Path(directory) / ".metadata")  # refused here, with one line, not inside dcp's collectives
    model_state = model.state_dict()
    if exclude is not None:
        model_state = {k: v for k, v in model_state.items() if not exclude(k)}
    state = {"model": model_state}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.load(state, storage_reader=SafeReader(str(directory)), planner=SafeLoadPlanner(allow_partial_load=partial))
    model.load_state_dict(state["model"], strict=exclude is None)
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])


def read_entries(directory: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of the model entries ``keys`` (default: every model tensor)
    of a checkpoint directory, read in this process without a process group; checked
    against the checksums first, nothing unpickled."""
    directory = Path(directory)
    verify_checksums(directory)
    metadata = read_metadata(directory / ".metadata")
    tensors = {k for k, v in metadata.state_dict_metadata.items()
               if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    wanted = tensors if keys is None else {f"model.{k}" for k in keys}
    missing = sorted(wanted - tensors)
    if missing:
        raise ArtifactError(f"checkpoint has no tensor '{missing[0][len('model.'):]}'", file=directory)
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the point
        warnings.filterwarnings("ignore", message=".*torch.distributed is unavailable.*")
        return _load_state_dict_from_keys(keys=wanted, storage_reader=SafeReader(str(directory)))["model"]


def intact(directory: Path) -> bool:
    """Whether ``directory`` is a complete checkpoint whose files match their checksums."""
    try:
        verify_checksums(Path(directory))
        return True
    except ArtifactError:
        return False


def prune(ckpt_dir: Path, state: TrainState, also: Iterable[int] = ()) -> None:
    """Remove epoch directories other than the last, the best and ``also`` (rank 0 only)."""
    keep = {epoch_dir(ckpt_dir, e).name for e in (state.last_epoch, state.best_epoch, *also)}
    for d in Path(ckpt_dir).glob("epoch-*"):
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

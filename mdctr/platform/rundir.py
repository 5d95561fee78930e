"""One run-directory type for train runs, merged runs and pipeline stage versions.

Layout::

    run.json         run id, kind (train | merged | stage), config fingerprint, data directory
                     and fingerprint, timings; "model" when the model needs more than the
                     config (E-CDCTR snapshot history: its spec, store and months)
    config.yaml      the resolved training config
    dataset.yaml     the training data's spec (table sizes, domains)
    checkpoints/     state.json + epoch checkpoints (per domain for ``separate`` runs)
    metrics.json     test metrics (train runs; stage versions: their training summary)
    history.json     per-epoch history (train runs)
    train.log

Fine-tuned adapters (``adapter.json`` + safetensors) name the run they were trained on by
its run id and :meth:`RunDir.identity`. The best-checkpoint rule lives here: a unit's model
is the epoch ``state.json`` names as best.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from mdctr.core.errors import RunDirError
from mdctr.core.io import write_json
from mdctr.domains.spec import DatasetSpec, load_spec, save_spec
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import Baseline, TrainConfig, load_train_config, save_train_config
from mdctr.platform.model import FeatureLayout, table_entry

RUN_FILE, CONFIG_FILE = "run.json", "config.yaml"
KINDS = ("train", "merged", "stage")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


class RunDir:
    """A finished or running run directory, checked on open.

    Args:
        path: the directory.
        loader: reads ``config.yaml`` (packages that extend the config pass their own).
    """

    def __init__(self, path: str | Path, *, loader: Callable[[Path], TrainConfig] = load_train_config):
        self.path = Path(path)
        if not self.path.is_dir():
            what = "it is a file" if self.path.exists() else "does not exist"
            raise RunDirError(f"not a run directory ({what})", file=self.path)
        for name in (CONFIG_FILE, RUN_FILE, "dataset.yaml"):
            if not (self.path / name).is_file():
                raise RunDirError(f"not a run directory (no {name})", file=self.path)
        try:
            self.info: dict = json.loads((self.path / RUN_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"unreadable run.json ({exc.__class__.__name__})", file=self.path / RUN_FILE) from None
        if not isinstance(self.info, dict) or not isinstance(self.info.get("run_id"), str):
            raise RunDirError("run.json has no run_id", file=self.path / RUN_FILE)
        self.config: TrainConfig = loader(self.path / CONFIG_FILE)
        self.spec: DatasetSpec = load_spec(self.path)

    # -- what it is ------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.info["run_id"]

    @property
    def kind(self) -> str:
        return self.info.get("kind", "train")

    @property
    def data_dir(self) -> Path:
        """The data the run trained on."""
        return Path(self.info["data_dir"])

    @property
    def units(self) -> list[str | None]:
        return units_of(self.config, self.spec)

    def layout(self) -> FeatureLayout:
        from mdctr.platform.model import feature_layout

        return feature_layout(self.spec, self.config.model, self.config.baseline)

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoints(self, unit: str | None = None) -> Path:
        base = self.path / "checkpoints"
        return base / unit if unit is not None else base

    def state(self, unit: str | None = None) -> ckpt.TrainState:
        state = ckpt.read_state(self.checkpoints(unit))
        if state is None or state.best_epoch < 0:
            raise RunDirError("run has no finished checkpoint", file=self.checkpoints(unit))
        return state

    def best_checkpoint(self, unit: str | None = None) -> Path:
        """The epoch directory of the unit's model (the best epoch)."""
        path = ckpt.epoch_dir(self.checkpoints(unit), self.state(unit).best_epoch)
        if not path.is_dir():
            raise RunDirError("best checkpoint is missing", file=path)
        return path

    def identity(self) -> dict[str, str]:
        """The run's id and fingerprint (config + data + best epoch): what artifacts
        derived from it (adapters, teacher labels) record to name their source."""
        state = self.state(self.units[0])
        fp = f"{self.info['config_fingerprint']}:{self.info.get('data_fingerprint', '')[:16]}:{state.best_epoch}"
        return {"run_id": self.run_id, "fingerprint": fp}

    def tables(self, fields: list[str], unit: str | None = None) -> dict[str, torch.Tensor]:
        """The full embedding tables of ``fields`` in the unit's best checkpoint (nothing else
        is read)."""
        entries = ckpt.read_entries(self.best_checkpoint(unit), [table_entry(f) for f in fields])
        return {f: entries[table_entry(f)] for f in fields}

    # -- the model -------------------------------------------------------------------------
    @property
    def model_info(self) -> dict:
        return self.info.get("model") or {}

    def model_builder(self):
        """Builds the run's unsharded model (plain, distilled student or snapshot history)."""
        from mdctr.platform.distill import StudentBuilder
        from mdctr.platform.history import HistoryModelBuilder, HistorySpec

        if "history" in self.model_info:
            return HistoryModelBuilder(HistorySpec.from_dict(self.model_info["history"]))
        return StudentBuilder(self.config.distill)

    def transform(self):
        """The batch transform the model needs to predict (snapshot lookups), or None."""
        from mdctr.platform.history import HistorySpec, SnapshotInput

        snap = self.model_info.get("snapshots")
        if snap is None:
            return None
        store = self.snapshot_root() / snap["store"]
        return SnapshotInput(store, tuple(snap["months"]), HistorySpec.from_dict(self.model_info["history"]))

    def snapshot_root(self) -> Path:
        """Stage versions live in ``STORE/versions/``; their snapshots in ``STORE/embeddings/``."""
        return self.path.resolve().parent.parent / "embeddings"


def units_of(cfg: TrainConfig, spec: DatasetSpec) -> list[str | None]:
    """One model for every domain, or (``separate``) one per domain."""
    if cfg.baseline is Baseline.separate:
        return list(cfg.train.domains or spec.domain_names)
    return [None]


def create_run_dir(path: Path, cfg: TrainConfig, data_dir: Path, spec: DatasetSpec, *, kind: str = "train",
                   run_id: str | None = None, model: dict | None = None, **info) -> None:
    """Write a new run directory's ``config.yaml``, ``dataset.yaml`` and ``run.json``."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    path.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, path / CONFIG_FILE)
    save_spec(spec, path)
    record = {"run_id": run_id or new_run_id(), "kind": kind, "config_fingerprint": cfg.fingerprint(),
              "data_dir": str(Path(data_dir).resolve()), "data_fingerprint": spec.fingerprint,
              "started": time.time(), "torch": torch.__version__}
    if model:
        record["model"] = model
    record.update(info)
    write_json(record, path / RUN_FILE)


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, data_dir: Path, spec: DatasetSpec, *, resume: bool,
                    loader: Callable[[Path], TrainConfig] = load_train_config) -> None:
    """Create (or, for resume, check) a train run's directory before any training starts."""
    if resume:
        saved = run_dir / CONFIG_FILE
        if not saved.exists():
            raise RunDirError("nothing to resume (no config.yaml)", file=run_dir)
        prev = loader(saved)
        if prev.fingerprint() != cfg.fingerprint():
            raise RunDirError("--resume with a config that differs from the run's config.yaml", file=run_dir)
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError("run directory exists and is not empty (use --resume or a new --out)", file=run_dir)
    create_run_dir(run_dir, cfg, data_dir, spec)

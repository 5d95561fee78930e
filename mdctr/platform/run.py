"""A training run end to end: ``mdctr train`` and ``mdctr evaluate``.

A run directory holds::

    config.yaml      the resolved config (overrides applied)
    dataset.yaml     the training data's spec (table sizes, domains) for evaluate/adapters
    run.json         run id, config fingerprint, data directory and fingerprint, timings
    checkpoints/     epoch checkpoints (DCP) + state.json; per domain for `separate`
    metrics.json     test metrics (DESIGN §6), written last
    train.log        the epoch log
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from mdctr.domains.datasets import resolve_data
from mdctr.domains.errors import DataContractError
from mdctr.domains.spec import DatasetSpec, load_spec, save_spec
from mdctr.domains.validate import validate_dataset
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import Baseline, TrainConfig, load_train_config, save_train_config
from mdctr.platform.distributed import launch, select_device
from mdctr.platform.metrics import compute_metrics, metrics_table, write_json
from mdctr.platform.distill import TeacherJoin, build_student, distill_loss
from mdctr.platform.model import FeatureLayout, feature_layout
from mdctr.platform.stores.labels import LabelReader, TeacherLabelStore
from mdctr.platform.trainer import Predictions, Trainer

log = logging.getLogger("mdctr.train")


def setup_logging(run_dir: Path | None, rank: int) -> None:
    root = logging.getLogger("mdctr")
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    close_log_files()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    root.addHandler(h)
    if run_dir is not None and rank == 0:
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False


def close_log_files() -> None:
    """Detach mdctr's handlers, closing its log files (before a run directory moves)."""
    root = logging.getLogger("mdctr")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()


def _ckpt_dir(run_dir: Path, cfg: TrainConfig, domain: str | None) -> Path:
    base = Path(run_dir) / "checkpoints"
    return base / domain if domain is not None else base


def _units(cfg: TrainConfig, spec: DatasetSpec) -> list[str | None]:
    """One model for every domain, or (``separate``) one per domain."""
    return list(cfg.train.domains or spec.domain_names) if cfg.baseline is Baseline.separate else [None]


def _train_worker(rank: int, world_size: int, cfg: TrainConfig, data_dir: Path, run_dir: Path,
                  resume: bool) -> None:
    setup_logging(run_dir, rank)
    device, _ = select_device(rank)
    spec = load_spec(data_dir)
    layout = feature_layout(spec, cfg.model, cfg.baseline)
    reader = layout.reader(data_dir)
    preds = []
    history: dict[str, list] = {}
    info: dict = {}
    student: dict = {}
    if cfg.distill is not None:
        labels = teacher_labels(cfg, spec, data_dir)
        info["teacher_labels"] = labels.version.name
        log.info("distilling (%s, weight %g, T %g) from teacher labels %s (%d labels)", cfg.distill.mode,
                 cfg.distill.weight, cfg.distill.temperature, labels.version.name, len(labels))
        student = dict(transform=TeacherJoin(labels), loss_fn=distill_loss(cfg.distill))
    for unit in _units(cfg, spec):
        if unit is not None:
            log.info("-- separate model for domain %s", unit)
        if student:
            torch.manual_seed(cfg.train.seed)
            student["model"] = build_student(layout, cfg.model, cfg.distill, cfg.train.seed)
        trainer = Trainer(cfg, reader, layout, _ckpt_dir(run_dir, cfg, unit), rank=rank, world_size=world_size,
                          device=device, domains=None if unit is None else [unit], **student)
        state = trainer.fit(resume=resume)
        history[unit or "all"] = state.history
        preds.append(trainer.predict("test"))
    finish_run(run_dir, rank, preds, layout, history, **info)


def teacher_labels(cfg: TrainConfig, spec: DatasetSpec, data_dir: Path) -> LabelReader:
    """The label version a distilling config names, checked to label this dataset."""
    version = TeacherLabelStore(cfg.distill.store).resolve(cfg.distill.teacher_labels,
                                                           at_or_before=cfg.distill.labels_before)
    if version.meta.get("data_fingerprint") != spec.fingerprint:
        raise DataContractError(f"teacher labels {version.name} label another dataset "
                                f"({version.meta.get('data_dir')}), not this one", file=data_dir / "dataset.yaml")
    return LabelReader(version)


def finish_run(run_dir: Path, rank: int, preds: list[tuple[torch.Tensor, ...]], layout: FeatureLayout,
               history: dict[str, list], **info) -> None:
    """Rank 0 writes history.json, run.json (timings, ``info``) and, last, metrics.json."""
    if rank != 0:
        return
    logits, labels, domain = (torch.cat([p[i] for p in preds]) for i in range(3))
    metrics = compute_metrics(logits, labels, domain, layout.domain_names, split="test")
    write_json({"history": history}, run_dir / "history.json")
    run = json.loads((run_dir / "run.json").read_text())
    run.update(info)
    run.update({"finished": time.time(), "wall_seconds": round(time.time() - run["started"], 2)})
    write_json(run, run_dir / "run.json")
    write_json(metrics, run_dir / "metrics.json")
    log.info("test metrics\n%s", metrics_table(metrics))


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, data_dir: Path, spec: DatasetSpec, *, resume: bool,
                    loader: Callable[[Path], TrainConfig] = load_train_config) -> None:
    """Create (or, for resume, check) the run directory before any training starts."""
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise DataContractError("nothing to resume (no config.yaml)", file=run_dir)
        prev = loader(saved)
        if prev.fingerprint() != cfg.fingerprint():
            raise DataContractError("--resume with a config that differs from the run's config.yaml", file=run_dir)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DataContractError("run directory exists and is not empty (use --resume or a new --out)", file=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_train_config(cfg, run_dir / "config.yaml")
    save_spec(spec, run_dir)
    write_json({"run_id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
                "config_fingerprint": cfg.fingerprint(), "data_dir": str(data_dir.resolve()),
                "data_fingerprint": spec.fingerprint, "started": time.time(),
                "torch": torch.__version__}, run_dir / "run.json")


def run_identity(run_dir: str | Path) -> dict[str, str]:
    """A finished run's id and fingerprint (config + data + best epoch): what artifacts
    derived from the run (adapters, teacher labels) record to name their source."""
    run_dir = Path(run_dir)
    state = ckpt.read_state(run_dir / "checkpoints")
    if not (run_dir / "run.json").exists() or state is None or state.best_epoch < 0:
        raise DataContractError("not a finished run (no run.json or no finished checkpoint)", file=run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    fp = f"{run['config_fingerprint']}:{run.get('data_fingerprint', '')[:16]}:{state.best_epoch}"
    return {"run_id": run["run_id"], "fingerprint": fp}


def resolve_config(config: str | Path | TrainConfig, *, world_size: int | None = None,
                   split_seed: int | None = None, seed: int | None = None,
                   loader: Callable[[Path], TrainConfig] = load_train_config) -> TrainConfig:
    """The config (a file, read by ``loader``, or an object) with command-line overrides."""
    cfg = config if isinstance(config, TrainConfig) else loader(Path(config))
    data = cfg.model_dump()
    if world_size is not None:
        data["world_size"] = world_size
    if split_seed is not None:
        data["train"]["split_seed"] = split_seed
    if seed is not None:
        data["train"]["seed"] = seed
    return type(cfg).model_validate(data)


def train(config: str | Path | TrainConfig, out: str | Path, *, resume: bool = False,
          world_size: int | None = None, split_seed: int | None = None, seed: int | None = None,
          loader: Callable[[Path], TrainConfig] = load_train_config, worker: Callable = _train_worker) -> dict:
    """Train per ``config`` into ``out``; returns the test metrics (also in ``out/metrics.json``).

    ``loader``/``worker`` let packages that extend the backbone (adapters) reuse the run
    machinery: config checks, the run directory, process launch and clean-up on failure.
    """
    cfg = resolve_config(config, world_size=world_size, split_seed=split_seed, seed=seed, loader=loader)
    data_dir = resolve_data(cfg.data)
    spec, _ = validate_dataset(data_dir)
    feature_layout(spec, cfg.model, cfg.baseline)  # config/data mismatches fail before any output
    if cfg.distill is not None:
        teacher_labels(cfg, spec, data_dir)
    unknown = [d for d in cfg.train.domains or [] if d not in spec.domain_names]
    if unknown:
        raise DataContractError(f"train.domains names '{unknown[0]}', which the data lacks "
                                f"(has {spec.domain_names})", file=data_dir / "dataset.yaml")
    run_dir = Path(out)
    created = not run_dir.exists()
    prepare_run_dir(run_dir, cfg, data_dir, spec, resume=resume, loader=loader)
    try:
        launch(worker, cfg.world_size, cfg, data_dir, run_dir, resume)
    except BaseException:
        if created and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before the first checkpoint
        raise
    return json.loads((run_dir / "metrics.json").read_text())


# -- evaluate ---------------------------------------------------------------------------------


def default_builder(cfg: TrainConfig, layout: FeatureLayout) -> torch.nn.Module:
    """The unsharded model of a run (``CTRModel``, with its auxiliary head when it was a
    distilled student); other packages pass their own builder."""
    return build_student(layout, cfg.model, cfg.distill, cfg.train.seed)


def load_run(run_dir: str | Path, loader: Callable[[Path], TrainConfig] = load_train_config,
             ) -> tuple[TrainConfig, DatasetSpec, FeatureLayout]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise DataContractError("not a run directory (no config.yaml)", file=run_dir)
    cfg = loader(run_dir / "config.yaml")
    spec = load_spec(run_dir)
    return cfg, spec, feature_layout(spec, cfg.model, cfg.baseline)


def check_compatible(train_spec: DatasetSpec, data_spec: DatasetSpec, where: Path) -> tuple[torch.Tensor, list[str]]:
    """Fields must match. Returns the map from the data's domain index to the model's (-1 for
    domains the run never saw) and the names of those unseen domains."""
    want = [(f.name, f.kind) for f in train_spec.fields]
    got = [(f.name, f.kind) for f in data_spec.fields]
    if want != got:
        raise DataContractError(f"fields {[n for n, _ in got]} differ from the run's {[n for n, _ in want]}",
                                file=where / "dataset.yaml")
    names = train_spec.domain_names
    unknown = [d for d in data_spec.domain_names if d not in names]
    return torch.tensor([names.index(d) if d in names else -1 for d in data_spec.domain_names]), unknown


def run_predictions(rank: int, world_size: int, run_dir: Path, data_dir: Path, split: str | None,
                    loader: Callable = load_train_config, builder: Callable = default_builder,
                    split_seed: int | None = None) -> tuple[Predictions, DatasetSpec]:
    """Collective: the best model of ``run_dir`` (every unit of a ``separate`` run) over
    ``split`` of ``data_dir``; the data's spec. ``split_seed`` overrides the run's."""
    cfg, train_spec, layout = load_run(run_dir, loader)
    if split_seed is not None:
        cfg = resolve_config(cfg, split_seed=split_seed)
    data_spec = load_spec(data_dir)
    domain_map, unknown = check_compatible(train_spec, data_spec, data_dir)
    if unknown and cfg.baseline is not Baseline.shared:
        raise DataContractError(f"domain '{unknown[0]}' was not trained by this {cfg.baseline.value} run",
                                file=data_dir / "dataset.yaml")
    device, _ = select_device(rank)
    reader = layout.reader(data_dir)
    preds = []
    for unit in _units(cfg, train_spec):
        if unit is not None and unit not in data_spec.domain_names:
            continue
        ck = _ckpt_dir(run_dir, cfg, unit)
        state = ckpt.read_state(ck)
        if state is None or state.best_epoch < 0:
            raise DataContractError("run has no finished checkpoint", file=ck)
        trainer = Trainer(cfg, reader, layout, ck, rank=rank, world_size=world_size, device=device,
                          domains=None if unit is None else [unit], progress=False, model=builder(cfg, layout))
        ckpt.load(trainer.model, None, ckpt.epoch_dir(ck, state.best_epoch))
        preds.append(trainer.predict(split, domain_map=domain_map.clamp(min=0)))
    return Predictions(*(torch.cat([p[i] for p in preds]) for i in range(4))), data_spec


def _evaluate_worker(rank: int, world_size: int, run_dir: Path, data_dir: Path, split: str | None,
                     out_file: Path, loader: Callable, builder: Callable) -> None:
    setup_logging(None, rank)
    p, data_spec = run_predictions(rank, world_size, run_dir, data_dir, split, loader, builder)
    if rank == 0:
        metrics = compute_metrics(p.logits, p.labels, p.domain, data_spec.domain_names, split=split or "all")
        write_json(metrics, out_file)
        print(metrics_table(metrics))


def evaluate(run_dir: str | Path, data: str | Path | None = None, *, split: str | None = "test",
             out: str | Path | None = None, loader: Callable[[Path], TrainConfig] = load_train_config,
             builder: Callable = default_builder) -> dict:
    """Evaluate a run's best model on ``data`` (default: its training data).

    ``loader`` reads the run's config and ``builder`` makes its unsharded model (for runs of
    models that extend the backbone, such as adapters).
    """
    run_dir = Path(run_dir)
    load_run(run_dir, loader)
    data_dir = resolve_data(data) if data is not None else Path(json.loads((run_dir / "run.json").read_text())["data_dir"])
    validate_dataset(data_dir)
    out_file = Path(out) if out is not None else run_dir / f"eval-{split or 'all'}.json"
    launch(_evaluate_worker, 1, run_dir, data_dir, split, out_file, loader, builder)
    return json.loads(out_file.read_text())

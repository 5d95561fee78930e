"""``mdctr train`` and ``mdctr evaluate``: build the jobs of a run and launch them.

A run directory (:mod:`mdctr.platform.rundir`) is created before any training starts; a
run that fails before its first checkpoint leaves nothing behind. Training writes::

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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mdctr.core.config import with_overrides
from mdctr.core.errors import ArtifactError, ConfigError, DataContractError
from mdctr.domains.batching import DatasetReader
from mdctr.domains.datasets import resolve_data
from mdctr.domains.selection import Selection
from mdctr.domains.spec import DatasetSpec
from mdctr.domains.validate import validate_dataset
from mdctr.platform.config import TrainConfig, load_train_config
from mdctr.platform.distill import DistillLoss, StudentBuilder, TeacherLabels
from mdctr.platform.job import Job, Output, Predict, TrainerHooks, close_log_files, setup_logging
from mdctr.platform.launcher import Launcher, resolve_launcher
from mdctr.platform.model import feature_layout
from mdctr.platform.outputs import MetricsOutput, RunOutput
from mdctr.platform.rundir import RunDir, prepare_run_dir, units_of
from mdctr.platform.stores.labels import LabelReader, TeacherLabelStore

log = logging.getLogger("mdctr.train")

#: the jobs of a run, launched in order: ``planner(cfg, data_dir, run_dir, resume) -> [Job]``
JobPlanner = Callable[[TrainConfig, Path, Path, bool], list[Job]]


def train_jobs(cfg: TrainConfig, data_dir: Path, run_dir: Path, resume: bool) -> list[Job]:
    """A plain run: one job (one unit per domain for ``separate``), distilling from the
    teacher-label store when the config says so."""
    kw: dict = {}
    info: dict = {}
    if cfg.distill is not None:
        labels = teacher_labels(cfg, data_dir)
        info["teacher_labels"] = labels.version.name
        log.info("distilling (%s, weight %g, T %g) from teacher labels %s (%d labels)", cfg.distill.mode,
                 cfg.distill.weight, cfg.distill.temperature, labels.version.name, len(labels))
        kw = dict(transform=TeacherLabels(cfg.distill.store, labels.version.name), loss=DistillLoss(cfg.distill))
    units = tuple(units_of(cfg, validate_dataset(data_dir)[0]))
    return [Job(cfg, data_dir, run_dir / "checkpoints", model=StudentBuilder(cfg.distill), units=units,
                resume=resume, predict=(Predict("test"),), output=RunOutput(run_dir, info), log_dir=run_dir, **kw)]


def teacher_labels(cfg: TrainConfig, data_dir: Path) -> LabelReader:
    """The label version a distilling config names, checked to label this dataset."""
    spec = validate_dataset(data_dir)[0]
    version = TeacherLabelStore(cfg.distill.store).resolve(cfg.distill.teacher_labels,
                                                           at_or_before=cfg.distill.labels_before)
    if version.meta.get("data_fingerprint") != spec.fingerprint:
        raise DataContractError(f"teacher labels {version.name} label another dataset "
                                f"({version.meta.get('data_dir')}), not this one", file=data_dir / "dataset.yaml")
    return LabelReader(version)


def run_identity(run_dir: str | Path) -> dict[str, str]:
    """A finished run's id and fingerprint (:meth:`RunDir.identity`)."""
    return RunDir(run_dir, loader=_any_config).identity()


def _any_config(path: Path) -> TrainConfig:
    """Reads a run's config whatever package extended it (only the base fields are used)."""
    from mdctr.core.config import parse_model, read_yaml

    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k in TrainConfig.model_fields}
    return parse_model(raw, TrainConfig, source=path)


def resolve_config(config: str | Path | TrainConfig, *, world_size: int | None = None,
                   split_seed: int | None = None, seed: int | None = None, workers: int | None = None,
                   loader: Callable[[Path], TrainConfig] = load_train_config) -> TrainConfig:
    """The config (a file, read by ``loader``, or an object) with command-line overrides.

    ``workers`` sets ``resources.workers``; with more than one worker the world size is the
    number of workers (an explicit, different ``world_size`` is an error)."""
    for flag, value, least in (("--world-size", world_size, 1), ("--split-seed", split_seed, 0), ("--seed", seed, 0),
                               ("--workers", workers, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    cfg = config if isinstance(config, TrainConfig) else loader(Path(config))
    n_workers = workers if workers is not None else cfg.resources.workers
    if n_workers > 1:
        if world_size is not None and world_size != n_workers:
            raise ConfigError(f"--world-size {world_size} differs from the {n_workers} workers "
                              "(on Ray, every worker is one rank)")
        if world_size is None and cfg.world_size != n_workers:
            world_size = n_workers
    overrides = {k: v for k, v in (("world_size", world_size), ("train.split_seed", split_seed),
                                   ("train.seed", seed), ("resources.workers", workers)) if v is not None}
    flags = " ".join(f"--{k.split('.')[-1].replace('_', '-')}" for k in overrides)
    return with_overrides(cfg, overrides, source=f"{config if not isinstance(config, TrainConfig) else 'config'} "
                                                 f"with {flags}") if overrides else cfg


def check_training_data(cfg: TrainConfig, data_dir: Path) -> DatasetSpec:
    """Config/data mismatches (and, for ranks on this machine, settings its fbgemm kernels
    cannot run) fail before any output."""
    if cfg.resources.workers <= 1:
        import torch

        from mdctr.platform.distributed import check_embedding_optim

        check_embedding_optim(cfg.optim.embedding, "cuda" if torch.cuda.is_available() else "cpu")
    spec, _ = validate_dataset(data_dir)
    try:
        feature_layout(spec, cfg.model, cfg.baseline)
    except ValueError as exc:
        raise DataContractError(str(exc), file=data_dir / "dataset.yaml") from None
    if cfg.distill is not None:
        teacher_labels(cfg, data_dir)
    unknown = [d for d in cfg.train.domains or [] if d not in spec.domain_names]
    if unknown:
        raise DataContractError(f"train.domains names '{unknown[0]}', which the data lacks "
                                f"(has {spec.domain_names})", file=data_dir / "dataset.yaml")
    if cfg.train.window is not None:
        check_window_rows(cfg, data_dir)
    return spec


def check_window_rows(cfg: TrainConfig, data_dir: Path) -> None:
    """A ``train.window`` must leave rows to train on (and to validate on, when validating)."""
    t = cfg.train
    reader = DatasetReader(data_dir, background=False)
    for part in ("train", "valid") if t.validation else (None,):
        if reader.num_rows(part, t.selection()) == 0:
            w = t.window
            raise DataContractError(f"train.window [{w.start or '...'}, {w.end or '...'}) holds no "
                                    f"{part or 'training'} rows ({t.split_kind} split)", file=data_dir / "dataset.yaml")


def train(config: str | Path | TrainConfig, out: str | Path, *, resume: bool = False,
          world_size: int | None = None, split_seed: int | None = None, seed: int | None = None,
          loader: Callable[[Path], TrainConfig] = load_train_config, planner: JobPlanner = train_jobs,
          launcher: Launcher | None = None, hooks: TrainerHooks | None = None, test: bool = True) -> dict:
    """Train per ``config`` into ``out``; returns the test metrics (also in ``out/metrics.json``).

    ``loader``/``planner`` let packages that extend the backbone (adapters) reuse the run
    machinery: config checks, the run directory, launch and clean-up on failure. ``hooks``
    replace the jobs' trainer hooks (e.g. a study's pruning); without ``test`` no test row is
    read and the metrics are the best epoch's validation ones (``valid_*``).
    """
    cfg = resolve_config(config, world_size=world_size, split_seed=split_seed, seed=seed, loader=loader)
    data_dir = resolve_data(cfg.data)
    spec = check_training_data(cfg, data_dir)
    run_dir = Path(out)
    created = not run_dir.exists()
    prepare_run_dir(run_dir, cfg, data_dir, spec, resume=resume, loader=loader)
    try:
        setup_logging(run_dir, 0)  # the planner's notes go to the run's log too
        jobs = planner(cfg, data_dir, run_dir, resume)
        if hooks is not None:
            jobs = [replace(job, hooks=hooks) for job in jobs]
        if not test:
            jobs = [replace(job, predict=tuple(p for p in job.predict if p.split != "test")) for job in jobs]
        launch = resolve_launcher(launcher)
        for job in jobs:
            launch.launch(job)
    except BaseException:
        close_log_files()
        if created and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before the first checkpoint
        raise
    close_log_files()
    return json.loads((run_dir / "metrics.json").read_text())


# -- evaluate and predict ---------------------------------------------------------------------


def check_compatible(train_spec: DatasetSpec, data_spec: DatasetSpec, where: Path) -> list[str]:
    """Fields must match. Returns the data's domains the run never saw."""
    want = [(f.name, f.kind) for f in train_spec.fields]
    got = [(f.name, f.kind) for f in data_spec.fields]
    if want != got:
        raise DataContractError(f"fields {[n for n, _ in got]} differ from the run's {[n for n, _ in want]}",
                                file=where / "dataset.yaml")
    return [d for d in data_spec.domain_names if d not in train_spec.domain_names]


def prediction_job(run: RunDir, data_dir: Path, split: str | None, output: Output, *,
                   split_seed: int | None = None, world_size: int = 1,
                   selection: Selection | None = None) -> Job:
    """The job that predicts ``split`` of ``data_dir`` with the run's best model (every unit of
    a ``separate`` run whose domain the data has); ``split_seed`` overrides the run's, and
    ``selection`` the run's selection of rows."""
    cfg = run.config if split_seed is None else resolve_config(run.config, split_seed=split_seed)
    data_spec = validate_dataset(data_dir)[0]
    unknown = check_compatible(run.spec, data_spec, data_dir)
    if unknown and cfg.baseline.value != "shared":
        raise DataContractError(f"domain '{unknown[0]}' was not trained by this {cfg.baseline.value} run",
                                file=data_dir / "dataset.yaml")
    units = tuple(u for u in run.units if u is None or u in data_spec.domain_names)
    return Job(cfg, data_dir, run.checkpoints(), model=run.model_builder(), selection=selection, spec_dir=run.path,
               units=units, fit=False, transform=run.transform(), model_domains=tuple(run.spec.domain_names),
               predict=(Predict("eval", split),), output=output, progress=False, world_size=world_size)


def open_run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def evaluate(run_dir: str | Path | RunDir, data: str | Path | None = None, *, split: str | None = "test",
             out: str | Path | None = None, launcher: Launcher | None = None) -> dict:
    """Evaluate a run's (or stage version's) best model on ``data`` (default: its training
    data); writes and returns the metrics."""
    run = open_run(run_dir)
    data_dir = resolve_data(data) if data is not None else run.data_dir
    if not data_dir.is_dir():
        raise ArtifactError(f"the run's data directory {data_dir} is gone (pass --data)", file=run.path)
    out_file = Path(out) if out is not None else run.path / f"eval-{split or 'all'}.json"
    if out_file.is_dir():
        raise ConfigError("is a directory, not a metrics file (--out)", file=out_file)
    output = MetricsOutput(out_file, "eval", split or "all")
    resolve_launcher(launcher).launch(prediction_job(run, data_dir, split, output))
    return json.loads(out_file.read_text())

"""One training job type and the one function that runs any job on a rank.

A :class:`Job` is data: which config and data, which model to build, which rows
(:class:`~mdctr.domains.selection.Selection`), where to start from (:class:`Init`), what
trains and what must stay bit-identical, what to predict afterwards and what rank 0
writes (an :class:`Output`). Every use of the library (train, MLoRA phases, fine-tune,
labelling, evaluate/predict, merge, the pipeline stages) builds a job and hands it to a
:class:`~mdctr.platform.launcher.Launcher`, which calls :func:`run_job` on every rank.

Everything a job holds crosses process boundaries (spawned ranks, Ray Train workers), so
its callables are module-level functions, ``functools.partial`` s of them or small
dataclasses, never lambdas.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from mdctr.domains.batching import Batch, DatasetReader
from mdctr.domains.selection import Selection
from mdctr.domains.spec import DatasetSpec, load_spec
from mdctr.platform.config import TrainConfig
from mdctr.platform.model import CTRModel, FeatureLayout, feature_layout

log = logging.getLogger("mdctr.train")

#: builds the unsharded model of a job (called after ``torch.manual_seed(cfg.train.seed)``)
ModelBuilder = Callable[[TrainConfig, FeatureLayout], nn.Module]
#: ``loss(model_output, batch) -> scalar``
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


class TransformBuilder(Protocol):
    """Builds, on the rank, a batch transform applied on the data thread (e.g. joining
    teacher logits or snapshot vectors by id), and names the raw-id fields it needs."""

    raw_fields: tuple[str, ...]

    def __call__(self, layout: FeatureLayout) -> Callable[[Batch], Batch]: ...


class TrainerHooks:
    """Called by the trainer; subclass and override. The default does nothing.

    ``on_epoch_end`` runs on every rank after each epoch's validation and checkpoint
    (``epoch`` 0 is the untrained start when it is validated). ``metrics`` has
    ``train_loss`` (None for the start), ``valid_auc``, ``valid_wauc``, ``valid_logloss``,
    ``seconds``; ``checkpoint`` is the epoch's checkpoint directory (None when the job keeps
    no checkpoint files). Return True to stop training after this epoch (e.g. an Optuna
    pruner); the best epoch so far stays the model. Every rank must return the same value.
    """

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        return False


def default_model(cfg: TrainConfig, layout: FeatureLayout) -> nn.Module:
    return CTRModel(layout, cfg.model, seed=cfg.train.seed)


@dataclass(frozen=True)
class Init:
    """Start from a checkpoint: ``checkpoint`` is an epoch directory, or a checkpoints
    directory whose ``state.json`` names its best epoch (read when the job runs, so it may
    be an earlier job's). Model entries whose names contain one of ``exclude`` keep their
    fresh values; ``partial``: entries the checkpoint lacks (adapters added after the
    backbone trained) keep theirs too."""

    checkpoint: Path
    partial: bool = False
    exclude: tuple[str, ...] = ()

    def excluded(self, name: str) -> bool:
        return any(p in name for p in self.exclude)

    def epoch_dir(self) -> Path:
        from mdctr.platform import checkpoint as ckpt

        state = ckpt.read_state(self.checkpoint)
        if state is None:
            return Path(self.checkpoint)
        if state.best_epoch < 0:
            raise RuntimeError(f"{self.checkpoint}: no finished epoch to start from")
        return ckpt.epoch_dir(self.checkpoint, state.best_epoch)


@dataclass(frozen=True)
class Predict:
    """After training, predict ``split`` (``None``: every row) of the job's selection, or
    of ``selection`` when given (e.g. the day after a stage's window)."""

    name: str
    split: str | None = "test"
    selection: Selection | None = None


@dataclass
class UnitResult:
    """What one unit (model) of a job produced on this rank."""

    unit: str | None
    state: object  # checkpoint.TrainState
    predictions: dict[str, "object"] = field(default_factory=dict)  # name -> trainer.Predictions
    unchanged: bool | None = None  # the frozen entries' check, when the job has one


@dataclass
class JobContext:
    """Given to an :class:`Output` on every rank after the job's units ran."""

    rank: int
    world_size: int
    job: "Job"
    spec: DatasetSpec  # the data's spec
    layout: FeatureLayout
    results: list[UnitResult]
    trainer: object  # the last unit's trainer (its model stays loaded with the best weights)
    started: float = 0.0  # time.perf_counter() when the job started on this rank


class Output(Protocol):
    """What a job leaves behind: called on every rank (collective work is allowed); only
    rank 0 writes files."""

    def __call__(self, ctx: JobContext) -> None: ...


@dataclass
class Job:
    """Everything one training, evaluation or prediction run needs, as data.

    Args:
        cfg: the training config (model, optimizers, loop, selection defaults).
        data_dir: the dataset the job reads.
        ckpt_dir: epoch checkpoints and ``state.json`` (per unit: ``ckpt_dir/UNIT``).
        model: builds the unsharded model (default: :class:`CTRModel`).
        selection: the rows (default: from ``cfg.train``).
        spec_dir: directory whose ``dataset.yaml`` sizes the tables (default ``data_dir``;
            a run's directory when reading other data with a trained model).
        units: one model per entry (``None``: every domain of the selection; a domain name:
            that domain alone, the ``separate`` baseline).
        train_split: the part trained on (``None``: every selected row).
        fit: train; False loads the best checkpoint of ``ckpt_dir`` instead.
        resume: continue from the last checkpoint of ``ckpt_dir``.
        validate_start: the untrained start competes as epoch 0.
        init: start from another checkpoint (loaded after sharding).
        edits: applied to the sharded model after ``init`` (e.g. loading external adapters).
        trainable: which dense parameter names the optimizer updates (default: all that
            require grad).
        frozen: model entries (by state-dict key) that must be bit-identical after training;
            a change raises.
        keep_only: keep the best epoch's copy of just these entries in memory instead of
            checkpointing every epoch (no files; cannot resume).
        per_domain: per-domain model selection. ``per_domain(key, domain)`` names the
            entries only ``domain``'s rows use (its adapter); each domain ends with them from
            the epoch with its own best validation AUC (epoch 0, the start, with
            ``validate_start``), and training stops once no domain improved for
            ``patience`` epochs. Needs ``frozen`` (everything else must not change). The
            assembled model is validated and checkpointed as one more epoch.
        per_domain_margin: per-domain selection keeps a later epoch of a domain only if
            its validation AUC beats the domain's first epoch by more than this many
            standard errors (:func:`~mdctr.platform.trainer.domain_bests`).
        transform: builds the batch transform on the rank.
        loss: the training loss (default BCE on the logits).
        model_domains: the model's domain names, when they differ from the data's (reading
            another dataset); the data's other domains map to index 0.
        group_domains: order training batches' rows by domain (per-domain modules).
        predict: what to predict after training.
        output: what rank 0 writes at the end.
        log_dir: ``train.log`` goes here (rank 0).
        verbose: epoch logs on stdout (always in ``train.log``).
        progress: a progress bar on terminals.
        hooks: :class:`TrainerHooks`.
        world_size: ranks.
    """

    cfg: TrainConfig
    data_dir: Path
    ckpt_dir: Path
    model: ModelBuilder = default_model
    selection: Selection | None = None
    spec_dir: Path | None = None
    units: tuple[str | None, ...] = (None,)
    train_split: str | None = "train"
    fit: bool = True
    resume: bool = False
    validate_start: bool = False
    init: Init | None = None
    edits: tuple[Callable[[nn.Module], None], ...] = ()
    trainable: Callable[[str], bool] | None = None
    frozen: Callable[[str], bool] | None = None
    keep_only: Callable[[str], bool] | None = None
    per_domain: Callable[[str, str], bool] | None = None
    per_domain_margin: float = 0.0
    transform: TransformBuilder | None = None
    loss: LossFn | None = None
    model_domains: tuple[str, ...] | None = None
    group_domains: bool = False
    predict: tuple[Predict, ...] = ()
    output: Output | None = None
    log_dir: Path | None = None
    verbose: bool = True
    progress: bool = True
    hooks: TrainerHooks | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        self.data_dir, self.ckpt_dir = Path(self.data_dir), Path(self.ckpt_dir)
        if self.selection is None:
            self.selection = self.cfg.train.selection()
        if self.world_size is None:
            self.world_size = self.cfg.world_size
        if self.per_domain is not None and (self.frozen is None or self.keep_only is not None):
            raise ValueError("per-domain selection needs frozen shared entries and epoch checkpoints")

    def for_unit(self, unit: str | None) -> "Job":
        """The job of one unit: its domain alone and its own checkpoint directory."""
        if unit is None:
            return self
        return replace(self, selection=self.selection.with_domains([unit]), ckpt_dir=self.ckpt_dir / unit,
                       units=(None,))

    def layout(self, spec: DatasetSpec) -> FeatureLayout:
        return feature_layout(spec, self.cfg.model, self.cfg.baseline)


def setup_logging(run_dir: Path | None, rank: int, *, verbose: bool = True) -> None:
    """mdctr's log lines on stdout (rank 0; warnings only when not ``verbose``) and, with
    ``run_dir``, in ``run_dir/train.log``."""
    root = logging.getLogger("mdctr")
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    close_log_files()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    if not verbose:
        h.setLevel(logging.WARNING)
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


def run_job(rank: int, world_size: int, job: Job) -> None:
    """The rank worker: runs any :class:`Job` on this rank of the process group."""
    from mdctr.platform.distributed import select_device
    from mdctr.platform.trainer import Trainer

    started = time.perf_counter()
    setup_logging(job.log_dir, rank, verbose=job.verbose)
    try:
        # the device of this rank on its own machine (Ray Train and torchrun set LOCAL_RANK)
        device, _ = select_device(int(os.environ.get("LOCAL_RANK", rank)))
        spec = load_spec(job.data_dir)
        layout = job.layout(load_spec(job.spec_dir) if job.spec_dir is not None else spec)
        raw = tuple(job.transform.raw_fields) if job.transform is not None else ()
        reader: DatasetReader = layout.reader(job.data_dir, raw_fields=list(raw) or None)
        results, trainer = [], None
        for unit in job.units:
            if unit is not None:
                log.info("-- separate model for domain %s", unit)
            trainer = Trainer(job.for_unit(unit), reader, layout, rank=rank, world_size=world_size, device=device)
            state, unchanged = trainer.run()
            preds = {p.name: trainer.predict(p.split, selection=p.selection) for p in job.predict}
            results.append(UnitResult(unit, state, preds, unchanged))
        if job.output is not None:
            job.output(JobContext(rank, world_size, job, spec, layout, results, trainer, started))
    finally:
        close_log_files()

"""New-domain onboarding and adapter-aware models of existing runs.

``mdctr adapters finetune --base RUN --domain NAME --data DIR --out OUT`` trains one
domain's adapter on the frozen backbone of RUN (any run or stage version: plain, MLoRA,
distilled, E-CDCTR) and writes ``OUT/adapter.safetensors`` + ``OUT/adapter.json``. The
backbone (tables and dense weights) and every other domain's adapter are left bit-identical,
so predictions for other domains do not change.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from mdctr.adapters.files import backbone_identity, check_backbone, read_adapter, save_adapter
from mdctr.adapters.layer import DEFAULT_ALPHA
from mdctr.adapters.model import (
    adapter_layers, adapter_parameter_count, adapter_tensors, add_domain, add_domain_rows, attach_adapters,
    backbone_parameter_count, clean_name, domain_parameter_names, domain_rows_of, freeze_backbone, is_adapter_param,
    is_domain_entry, layer_shapes, load_adapter_tensors,
)
from mdctr.adapters.rows import find_cold_rows, seen_rows
from mdctr.adapters.run import AdapterRunDir, MLoRATrainConfig
from mdctr.core.config import with_overrides
from mdctr.core.errors import ArtifactError, ConfigError, DataContractError
from mdctr.core.io import check_output, scratch_dir, temp_sibling
from mdctr.domains.datasets import resolve_data
from mdctr.domains.selection import Selection
from mdctr.domains.validate import validate_dataset
from mdctr.platform import run as platform_run
from mdctr.platform.config import TrainConfig
from mdctr.platform.job import Init, Job, JobContext, ModelBuilder, Predict
from mdctr.platform.launcher import Launcher, resolve_launcher
from mdctr.platform.metrics import compute_metrics
from mdctr.platform.model import FeatureLayout
from mdctr.platform.outputs import PredictionsOutput, gathered, read_predictions

log = logging.getLogger("mdctr.train")

ROW_MODES = ("all", "cold", "none")
#: fine-tuning's default learning rate is the backbone's dense lr times this (``--lr``
#: overrides it); benchmarks/adapter_onboarding.py has the measurements behind it
FINETUNE_LR_SCALE = 5.0
#: fine-tuning's default early-stopping patience (``--patience``), whatever the backbone's: at
#: the 5x lr a new adapter peaks on validation within ~3 epochs
FINETUNE_PATIENCE = 2


@dataclass(frozen=True)
class AdaptedModel:
    """Model builder: a run's model with its own adapters, the banks and own rows of external
    adapters (their weights are loaded by :class:`LoadAdapters` after the run's checkpoint)
    and, for fine-tuning, a fresh adapter for ``new_domain`` (drawn from ``seed``) with its
    own rows ``new_rows`` (field -> table rows), the only thing left trainable."""

    base: ModelBuilder
    own: tuple[str, ...]
    alpha: int
    lora_rank: int | None = None
    extra: tuple[Path, ...] = ()
    new_domain: str | None = None
    seed: int = 0
    new_rows: dict = field(default_factory=dict)

    def __call__(self, cfg: TrainConfig, layout: FeatureLayout) -> nn.Module:
        model = self.base(cfg, layout)
        attach_adapters(model, list(layout.domain_names), domains=list(self.own), alpha=self.alpha,
                        lora_rank=self.lora_rank)
        for adapter_dir in self.extra:
            tensors, meta = read_adapter(adapter_dir)
            if meta["domain"] not in self.own:
                add_domain(model, meta["domain"], lora_ranks=meta["rank"])
            add_domain_rows(model, meta["domain"], domain_rows_of(tensors))
        if self.new_domain is None:
            return model
        torch.manual_seed(self.seed)
        add_domain(model, self.new_domain, alpha=self.alpha, lora_rank=self.lora_rank)
        if self.new_rows:
            add_domain_rows(model, self.new_domain, self.new_rows)
        freeze_backbone(model)
        own = domain_parameter_names(model, self.new_domain)  # its own banks and rows
        for name, p in model.named_parameters():
            if is_adapter_param(name) and clean_name(name) not in own:
                p.requires_grad_(False)
        return model


@dataclass(frozen=True)
class LoadAdapters:
    """Job edit: the weights of external adapters (checked against the backbone by the
    driver) into the sharded model."""

    extra: tuple[Path, ...]

    def __call__(self, model: nn.Module) -> None:
        for adapter_dir in self.extra:
            tensors, meta = read_adapter(adapter_dir)
            load_adapter_tensors(model, meta["domain"], tensors)


def _not_domain_entry(key: str, domain: str) -> bool:
    return not is_domain_entry(key, domain)


def adapted_model(run: AdapterRunDir, extra: list[Path] = (), *, new_domain: str | None = None,
                  alpha: int | None = None, lora_rank: int | None = None, seed: int | None = None,
                  new_rows: dict | None = None) -> AdaptedModel:
    """The builder of ``run``'s model with its adapters, ``extra`` adapter directories
    (checked to belong to this backbone) and a fresh adapter for ``new_domain``."""
    cfg = run.config
    mlora = isinstance(cfg, MLoRATrainConfig)
    own = tuple(cfg.train.domains or run.spec.domain_names) if mlora else ()
    if new_domain is not None and new_domain in own:
        raise ConfigError(f"domain '{new_domain}' already has an adapter in {run.path}")
    seen: dict[str, Path] = {}
    for adapter_dir in extra:
        _, meta = read_adapter(adapter_dir)
        check_backbone(meta, run.path, adapter_dir)
        d = meta["domain"]
        if d in seen:
            raise ConfigError(f"adapter for domain '{d}' is passed twice (also {seen[d]})", file=adapter_dir)
        seen[d] = Path(adapter_dir)
    if alpha is None:
        alpha = cfg.adapters.alpha if mlora else DEFAULT_ALPHA
    if lora_rank is None:
        lora_rank = cfg.adapters.rank if mlora else None
    return AdaptedModel(run.base_model_builder(), own, alpha, lora_rank, tuple(Path(a) for a in extra),
                        new_domain, cfg.train.seed if seed is None else seed, dict(new_rows or {}))


def model_domains(run: AdapterRunDir, extra: list[Path] = (), new_domain: str | None = None) -> tuple[str, ...]:
    """The adapted model's domains in index order: the run's, then new ones of adapters."""
    names = list(run.spec.domain_names)
    for adapter_dir in extra:
        d = read_adapter(adapter_dir)[1]["domain"]
        if d not in names:
            names.append(d)
    if new_domain is not None and new_domain not in names:
        names.append(new_domain)
    return tuple(names)


@dataclass(frozen=True)
class AdapterOutput:
    """Fine-tuning's output: rank 0 writes ``domain``'s adapter and its metadata."""

    out: Path
    domain: str
    meta: dict
    overwrite: bool = False

    def __call__(self, ctx: JobContext) -> None:
        model = ctx.trainer.model
        state = ctx.results[-1].state
        p = gathered(ctx, "test")
        metrics = compute_metrics(p.logits, p.labels, p.domain, ctx.spec.domain_names, split="test")
        tensors = adapter_tensors(model, self.domain)
        n_params = adapter_parameter_count(tensors)
        backbone = backbone_parameter_count(model)
        meta = {
            "domain": self.domain,
            "rank": {n: m.ranks[self.domain] for n, m in adapter_layers(model).items()},
            **self.meta,
            "layer_shapes": layer_shapes(model),
            "parameters": n_params,
            "parameter_share": round(n_params / backbone, 6),
            "train_seconds": round(time.perf_counter() - ctx.started, 2),
            "epochs": len(state.history) - 1,
            "best_epoch": state.best_epoch,
            "metrics": metrics,
        }
        if ctx.rank == 0:
            save_adapter(self.out, tensors, meta, overwrite=self.overwrite)
            log.info("adapter for '%s': %s parameters (%.2f%% of the backbone's %s), test AUC %s, %.1f s",
                     self.domain, f"{n_params:,}", 100 * n_params / backbone, f"{backbone:,}",
                     metrics["domains"].get(self.domain, {}).get("auc"), meta["train_seconds"])


def _own_rows(run: AdapterRunDir, domain: str, data_dir: Path, selection: Selection, rows: str) -> dict:
    """The table rows the new domain's adapter learns (``all``: every row its training data
    uses; ``cold``: those whose backbone weights are still the seeded initialisation)."""
    if rows == "none":
        return {}
    layout = run.layout()
    reader = layout.reader(data_dir)
    seen = seen_rows(reader, domain, [k for k in layout.keys if k in reader.keys], selection)
    if rows == "cold":
        return find_cold_rows(run.tables(list(seen)), layout, run.config.train.seed, seen)
    return {k: torch.from_numpy(v.astype("int64")) for k, v in seen.items() if v.size}


def finetune(base: str | Path, domain: str, data: str | Path, out: str | Path, *, epochs: int | None = None,
             lr: float | None = None, alpha: int | None = None, lora_rank: int | None = None, seed: int | None = None,
             rows: str = "all", overwrite: bool = False, window: tuple[int | None, int | None] | None = None,
             launcher: Launcher | None = None, patience: int = FINETUNE_PATIENCE) -> dict:
    """Train ``domain``'s adapter on ``base``'s frozen backbone; returns ``adapter.json``.

    ``rows``: which embedding rows the adapter also learns, for this domain's examples only
    (:mod:`mdctr.adapters.rows`): ``all`` (default) a residual for every row the domain's
    training data uses (closest to training the domain in from the start), ``cold`` only
    the rows of the domain's ids the backbone never trained (a smaller adapter), ``none``
    none (the tower adapter alone). ``lr`` defaults to the backbone's dense lr times
    :data:`FINETUNE_LR_SCALE`; ``patience`` is the early stopping's. ``lora_rank`` is the adapter's rank (default ``max(d_out // alpha, 1)``). ``window``: only rows with
    ``lo <= ts < hi`` (a scheduled fine-tune reads nothing on or after its date).
    """
    if rows not in ROW_MODES:
        raise ConfigError(f"--rows must be one of {', '.join(ROW_MODES)}, got {rows!r}")
    for flag, value in (("--epochs", epochs), ("--alpha", alpha), ("--rank", lora_rank), ("--patience", patience)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if lr is not None and not lr > 0:
        raise ConfigError(f"--lr must be > 0, got {lr}")
    out = Path(out)
    run = AdapterRunDir(base)
    run.best_checkpoint()
    data_dir = resolve_data(data)
    data_spec, _ = validate_dataset(data_dir)
    if domain not in data_spec.domain_names:
        raise DataContractError(f"domain '{domain}' is not in the data (has {data_spec.domain_names})",
                                file=data_dir / "dataset.yaml")
    platform_run.check_compatible(run.spec, data_spec, data_dir)
    check_output(out, overwrite=overwrite)
    overrides = {"train.epochs": epochs, "train.seed": seed, "train.patience": patience,
                 "optim.dense.lr": lr if lr is not None else run.config.optim.dense.lr * FINETUNE_LR_SCALE}
    # the new domain's adapter keeps its best epoch (in memory): the base run's epoch averaging does not apply
    cfg = with_overrides(run.config, {**{k: v for k, v in overrides.items() if v is not None}, "train.average": None},
                         source="--epochs/--seed/--lr/--patience")
    selection = cfg.train.selection().with_domains((domain,))  # the base run's split and train.window
    if window is not None:
        selection = selection.with_window(*window)
    learned = _own_rows(run, domain, data_dir, selection, rows)
    builder = adapted_model(run, new_domain=domain, alpha=alpha, lora_rank=lora_rank, seed=seed, new_rows=learned)
    meta = {"alpha": builder.alpha, **backbone_identity(base), "lr": cfg.optim.dense.lr, "seed": cfg.train.seed,
            "patience": cfg.train.patience,
            "rows": rows, "row_counts": {f: int(r.numel()) for f, r in learned.items()}, "data_dir": str(data_dir)}
    scratch = temp_sibling(out, "ckpt")
    try:
        job = Job(cfg, data_dir, scratch, model=builder, selection=selection, spec_dir=run.path,
                  init=Init(run.best_checkpoint(), partial=True), transform=run.transform(),
                  frozen=partial(_not_domain_entry, domain=domain), keep_only=partial(is_domain_entry, domain=domain),
                  validate_start=True, model_domains=model_domains(run, new_domain=domain),
                  predict=(Predict("test"),), output=AdapterOutput(out, domain, meta, overwrite), world_size=1)
        resolve_launcher(launcher).launch(job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return json.loads((out / "adapter.json").read_text())


def predict(run_dir: str | Path, data: str | Path, *, adapters: list[str | Path] = (), split: str | None = "test",
            domains: list[str] | None = None, launcher: Launcher | None = None) -> dict[str, torch.Tensor]:
    """Logits of a run (plus external adapters) on ``data``: ``{"logits", "labels", "domain"}``."""
    run, data_dir = AdapterRunDir(run_dir), resolve_data(data)
    extra = [Path(a) for a in adapters]
    tmp = scratch_dir("predict")
    try:
        out_file = tmp / "pred.parquet"
        job = platform_run.prediction_job(run, data_dir, split, PredictionsOutput(out_file, "eval"))
        if domains is not None:
            job.selection = job.selection.with_domains(domains)
        job.model = adapted_model(run, extra)
        job.edits = (LoadAdapters(tuple(extra)),)
        job.model_domains = model_domains(run, extra)
        resolve_launcher(launcher).launch(job)
        p = read_predictions(out_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"logits": p.logits, "labels": p.labels, "domain": p.domain}

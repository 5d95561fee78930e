"""Training runs with MLoRA adapters: ``joint`` and ``two_phase`` modes.

- ``joint``: backbone and every domain's adapter train together.
- ``two_phase``: phase 1 trains the shared backbone on all domains
  (``checkpoints/pretrain/``); phase 2 loads its best epoch, freezes tables and dense
  weights and trains only the adapters (``checkpoints/``). The run checks that every
  backbone tensor is bit-identical before and after phase 2 and records it in ``run.json``.
  With ``adapters.select: per_domain`` (default) each domain keeps its adapter from the
  epoch of its own best validation AUC, epoch 0 being the untrained (no-op) adapter, so no
  domain ends worse than the shared model on its validation rows (``run.json``:
  ``selected_epochs``).

A config with an ``adapters:`` section is an :class:`MLoRATrainConfig`; ``mdctr train``
dispatches on it (:func:`load_config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import model_validator
from torch import nn

from mdctr.adapters.model import (
    AdapterConfig, attach_adapters, backbone_parameter_count, freeze_backbone, is_adapter_param, is_domain_entry,
    parameter_share,
)
from mdctr.core.config import load_model, read_yaml, with_overrides
from mdctr.core.errors import ConfigError
from mdctr.domains.spec import load_spec
from mdctr.platform import checkpoint as ckpt
from mdctr.platform import run as platform_run
from mdctr.platform.config import Baseline, TrainConfig, load_train_config
from mdctr.platform.job import Init, Job, Predict
from mdctr.platform.model import CTRModel, FeatureLayout, feature_layout
from mdctr.platform.outputs import RunOutput
from mdctr.platform.rundir import RunDir

log = logging.getLogger("mdctr.train")


class MLoRATrainConfig(TrainConfig):
    adapters: AdapterConfig = AdapterConfig()

    @model_validator(mode="after")
    def _no_distill(self) -> "MLoRATrainConfig":
        if self.distill is not None:
            raise ValueError("distill: is not supported together with adapters: yet (train a distilled "
                             "backbone, then fine-tune adapters on it)")
        return self


def load_config(path: str | Path) -> TrainConfig:
    """A training config: with an ``adapters:`` section an :class:`MLoRATrainConfig`."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and "adapters" in raw:
        cfg = load_model(path, MLoRATrainConfig)
        if cfg.baseline is not Baseline.shared:
            raise ConfigError(f"adapters need baseline: shared (got {cfg.baseline.value})", file=path)
        return cfg
    return load_train_config(path)


def build_model(cfg: MLoRATrainConfig, layout: FeatureLayout) -> nn.Module:
    """The backbone with an adapter for every domain of the training data."""
    model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
    attach_adapters(model, layout.domain_names, domains=cfg.train.domains, alpha=cfg.adapters.alpha,
                    lora_rank=cfg.adapters.rank)
    return model


@dataclass(frozen=True)
class MLoRABuilder:
    """Model builder of a job: :func:`build_model`, with the backbone frozen for ``two_phase``'s
    adapter phase."""

    freeze: bool = False

    def __call__(self, cfg: MLoRATrainConfig, layout: FeatureLayout) -> nn.Module:
        model = build_model(cfg, layout)
        if self.freeze:
            freeze_backbone(model)
        return model


def is_backbone_entry(name: str) -> bool:
    return not is_adapter_param(name)


def _pretrain_config(cfg: MLoRATrainConfig) -> TrainConfig:
    data = cfg.model_dump()
    data.pop("adapters")
    if cfg.adapters.pretrain_epochs is not None:
        data["train"]["epochs"] = cfg.adapters.pretrain_epochs
    return TrainConfig.model_validate(data)


def _adapter_phase_config(cfg: MLoRATrainConfig) -> MLoRATrainConfig:
    """two_phase's adapter phase: the config with the ``adapters:`` optimizer and epochs. It
    selects epochs per domain, so ``train.average`` (the backbone's) does not apply to it."""
    a = cfg.adapters
    over = {k: v for k, v in (("optim.dense.lr", a.lr), ("optim.dense.weight_decay", a.weight_decay),
                              ("train.epochs", a.epochs)) if v is not None}
    if cfg.train.average is not None:
        over["train.average"] = None
    return with_overrides(cfg, over, source="adapters:") if over else cfg


def parameter_info(cfg: MLoRATrainConfig, layout: FeatureLayout) -> dict:
    """The backbone's parameters and each domain's adapter share (counted on the meta device)."""
    model = build_model(cfg, layout)
    backbone = backbone_parameter_count(model)
    shares = {d: parameter_share(model, d, backbone) for d in (cfg.train.domains or layout.domain_names)}
    first = next(iter(shares.values()))
    log.info("parameters: backbone %s; adapter per domain %s (%.2f%% of the backbone)", f"{backbone:,}",
             f"{first[0]:,}", 100 * first[1])
    return {"backbone": backbone, "adapter_per_domain": {d: n for d, (n, _) in shares.items()},
            "adapter_share_per_domain": {d: round(s, 5) for d, (_, s) in shares.items()}}


def mlora_jobs(cfg: MLoRATrainConfig, data_dir: Path, run_dir: Path, resume: bool) -> list[Job]:
    """``joint``: one job. ``two_phase``: the shared backbone's job, then the adapters' job,
    which starts from the backbone's best epoch and must leave it bit-identical."""
    layout = feature_layout(load_spec(data_dir), cfg.model, cfg.baseline)
    info = {"adapters": cfg.adapters.model_dump(), "parameters": parameter_info(cfg, layout)}
    ck = run_dir / "checkpoints"
    common = dict(group_domains=True, predict=(Predict("test"),), log_dir=run_dir)
    if cfg.adapters.mode == "joint":
        return [Job(cfg, data_dir, ck, model=MLoRABuilder(), resume=resume,
                    output=RunOutput(run_dir, info, phase="joint"), **common)]
    pretrain = Job(_pretrain_config(cfg), data_dir, ck / "pretrain", resume=resume, log_dir=run_dir)
    adapters = Job(_adapter_phase_config(cfg), data_dir, ck, model=MLoRABuilder(freeze=True), init=Init(ck / "pretrain", partial=True),
                   trainable=is_adapter_param, frozen=is_backbone_entry, validate_start=True,
                   per_domain=is_domain_entry if cfg.adapters.select == "per_domain" else None,
                   per_domain_margin=cfg.adapters.min_gain_se,
                   resume=resume and ckpt.read_state(ck) is not None,
                   output=RunOutput(run_dir, info, history=(("pretrain", ck / "pretrain"),), phase="adapters"),
                   **common)
    return [pretrain, adapters]


def train(config: str | Path | TrainConfig, out: str | Path, **kw) -> dict:
    """Train any config: MLoRA runs here, plain ones in :func:`mdctr.platform.run.train`."""
    cfg = platform_run.resolve_config(config, loader=load_config, **{k: kw.pop(k) for k in
                                      ("world_size", "split_seed", "seed", "workers") if k in kw})
    if isinstance(cfg, MLoRATrainConfig):
        metrics = platform_run.train(cfg, out, loader=load_config, planner=mlora_jobs, **kw)
        _hint_if_no_adapter_kept(Path(out))
        return metrics
    return platform_run.train(cfg, out, **kw)


def _hint_if_no_adapter_kept(run_dir: Path) -> None:
    """two_phase with per-domain selection: say so when every domain kept the shared model.
    Its adapters learn from the rows the backbone was trained on, so they find nothing the
    backbone has not fitted; on MovieLens-100K with the domain hidden from the inputs, joint
    training recovered the domain's signal where two_phase kept no adapter
    (benchmarks/mlora_quality.py, --hide-domain)."""
    selected = AdapterRunDir(run_dir).info.get("selected_epochs")
    if isinstance(selected, dict) and selected and not any(selected.values()):
        log.warning("no domain's adapter beat the shared model on its validation rows, so every domain "
                    "serves the shared backbone; if the model's inputs do not tell the domains apart, "
                    "adapters.mode: joint learns what separates them (two_phase suits new domains)")


class AdapterRunDir(RunDir):
    """A run directory whose config may have an ``adapters:`` section (then its model has
    the run's adapters)."""

    def __init__(self, path: str | Path):
        super().__init__(path, loader=load_config)

    def model_builder(self):
        if isinstance(self.config, MLoRATrainConfig):
            return MLoRABuilder()
        return super().model_builder()

    def base_model_builder(self):
        """The run's model without its adapters."""
        return super().model_builder()


def evaluate(run_dir: str | Path, data: str | Path | None = None, **kw) -> dict:
    """Evaluate any run or stage version, with its adapters if it has them."""
    return platform_run.evaluate(AdapterRunDir(run_dir), data, **kw)

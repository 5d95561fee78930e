"""Training runs with MLoRA adapters: ``joint`` and ``two_phase`` modes.

- ``joint``: backbone and every domain's adapter train together.
- ``two_phase``: phase 1 trains the shared backbone on all domains
  (``checkpoints/pretrain/``); phase 2 loads its best epoch, freezes tables and dense
  weights and trains only the adapters (``checkpoints/``). The run checks that every
  backbone tensor is bit-identical before and after phase 2 and records it in ``run.json``.

A config with an ``adapters:`` section is an :class:`MLoRATrainConfig`; ``mdctr train``
dispatches on it (:func:`load_config`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pydantic import model_validator
from torch import nn

from mdctr.adapters.model import (
    AdapterConfig, attach_adapters, backbone_parameter_count, freeze_backbone, is_adapter_param,
    parameter_share,
)
from mdctr.domains.config_io import load_model, read_yaml
from mdctr.domains.spec import load_spec
from mdctr.platform import checkpoint as ckpt
from mdctr.platform import run as platform_run
from mdctr.platform.config import Baseline, TrainConfig, load_train_config
from mdctr.platform.distributed import select_device
from mdctr.platform.model import CTRModel, FeatureLayout, feature_layout
from mdctr.platform.trainer import Trainer

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
            raise ValueError(f"{path}: adapters need baseline: shared (got {cfg.baseline.value})")
        return cfg
    return load_train_config(path)


def build_model(cfg: MLoRATrainConfig, layout: FeatureLayout) -> nn.Module:
    """The backbone with an adapter for every domain of the training data."""
    model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
    attach_adapters(model, layout.domain_names, domains=cfg.train.domains, alpha=cfg.adapters.alpha,
                    rank=cfg.adapters.rank)
    return model


def _pretrain_config(cfg: MLoRATrainConfig) -> TrainConfig:
    data = cfg.model_dump()
    data.pop("adapters")
    if cfg.adapters.pretrain_epochs is not None:
        data["train"]["epochs"] = cfg.adapters.pretrain_epochs
    return TrainConfig.model_validate(data)


def backbone_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every non-adapter tensor this rank holds (local shards of the tables)."""
    out = {}
    for name, value in model.state_dict().items():
        if is_adapter_param(name):
            continue
        if hasattr(value, "local_shards"):
            for i, shard in enumerate(value.local_shards()):
                out[f"{name}#{i}"] = shard.tensor.detach().clone()
        elif torch.is_tensor(value):
            out[name] = value.detach().clone()
    return out


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _mlora_worker(rank: int, world_size: int, cfg: MLoRATrainConfig, data_dir: Path, run_dir: Path,
                  resume: bool) -> None:
    platform_run.setup_logging(run_dir, rank)
    device, _ = select_device(rank)
    spec = load_spec(data_dir)
    layout = feature_layout(spec, cfg.model, cfg.baseline)
    reader = layout.reader(data_dir)
    history: dict[str, list] = {}
    info: dict = {"adapters": cfg.adapters.model_dump()}

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, layout)
    backbone = backbone_parameter_count(model)
    shares = {d: parameter_share(model, d, backbone) for d in (cfg.train.domains or layout.domain_names)}
    info["parameters"] = {"backbone": backbone, "adapter_per_domain": {d: n for d, (n, _) in shares.items()},
                          "adapter_share_per_domain": {d: round(s, 5) for d, (_, s) in shares.items()}}
    log.info("parameters: backbone %s; adapter per domain %s (%.2f%% of the backbone)", f"{backbone:,}",
             f"{next(iter(shares.values()))[0]:,}", 100 * next(iter(shares.values()))[1])

    ck = run_dir / "checkpoints"
    if cfg.adapters.mode == "joint":
        trainer = Trainer(cfg, reader, layout, ck, rank=rank, world_size=world_size, device=device, model=model,
                          group_domains=True)
        history["joint"] = trainer.fit(resume=resume).history
    else:
        pre_cfg = _pretrain_config(cfg)
        pre = Trainer(pre_cfg, reader, layout, ck / "pretrain", rank=rank, world_size=world_size, device=device)
        pre_state = pre.fit(resume=resume)
        history["pretrain"] = pre_state.history
        del pre
        freeze_backbone(model)
        trainer = Trainer(cfg, reader, layout, ck, rank=rank, world_size=world_size, device=device, model=model,
                          trainable=is_adapter_param, group_domains=True)
        ckpt.load(trainer.model, None, ckpt.epoch_dir(ck / "pretrain", pre_state.best_epoch), partial=True)
        before = backbone_snapshot(trainer.model)
        history["adapters"] = trainer.fit(resume=resume and ckpt.read_state(ck) is not None,
                                          validate_start=True).history
        unchanged = same_tensors(before, backbone_snapshot(trainer.model))
        info["backbone_unchanged"] = unchanged
        if not unchanged:
            raise RuntimeError("phase 2 changed backbone weights; adapters must train alone")
        log.info("phase 2 left every table and dense backbone weight bit-identical")
    platform_run.finish_run(run_dir, rank, [trainer.predict("test")], layout, history, **info)


def train(config: str | Path | TrainConfig, out: str | Path, **kw) -> dict:
    """Train any config: MLoRA runs here, plain ones in :func:`mdctr.platform.run.train`."""
    cfg = platform_run.resolve_config(config, loader=load_config, **{k: kw.pop(k) for k in
                                      ("world_size", "split_seed", "seed") if k in kw})
    if isinstance(cfg, MLoRATrainConfig):
        return platform_run.train(cfg, out, loader=load_config, worker=_mlora_worker, **kw)
    return platform_run.train(cfg, out, **kw)


def evaluate(run_dir: str | Path, data: str | Path | None = None, **kw) -> dict:
    """Evaluate any run, with its adapters if it has them."""
    cfg = load_config(Path(run_dir) / "config.yaml") if (Path(run_dir) / "config.yaml").exists() else None
    if isinstance(cfg, MLoRATrainConfig):
        return platform_run.evaluate(run_dir, data, loader=load_config, builder=build_model, **kw)
    return platform_run.evaluate(run_dir, data, **kw)

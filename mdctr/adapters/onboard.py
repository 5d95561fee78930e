"""New-domain onboarding and adapter-aware models of existing runs.

``mdctr adapters finetune --base RUN --domain NAME --data DIR --out OUT`` trains one
domain's adapter on the frozen backbone of RUN (any run: plain or MLoRA) and writes
``OUT/adapter.safetensors`` + ``OUT/adapter.json``. The backbone (tables and dense weights)
and every other domain's adapter are left bit-identical, so predictions for other domains
do not change.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from mdctr.adapters.files import backbone_identity, check_backbone, read_adapter, save_adapter
from mdctr.adapters.rows import find_cold_rows, seen_rows
from mdctr.adapters.model import (
    adapter_layers, adapter_parameter_count, adapter_tensors, add_domain_rows, add_domain, attach_adapters,
    backbone_parameter_count, clean_name, domain_parameter_names, domain_rows_of, freeze_backbone, is_adapter_param,
    is_domain_entry, layer_shapes, load_adapter_tensors,
)
from mdctr.adapters.run import MLoRATrainConfig, backbone_snapshot, load_config, same_tensors
from mdctr.domains.datasets import resolve_data
from mdctr.domains.errors import DataContractError
from mdctr.domains.writer import check_output
from mdctr.domains.spec import load_spec
from mdctr.domains.validate import validate_dataset
from mdctr.platform import checkpoint as ckpt
from mdctr.platform import run as platform_run
from mdctr.platform.distributed import launch, select_device
from mdctr.platform.model import CTRModel
from mdctr.platform.trainer import Trainer

log = logging.getLogger("mdctr.train")


def run_model(run_dir: Path, extra: list[Path] = (), *, new_domain: str | None = None,
              alpha: int | None = None, rank: int | None = None, seed: int | None = None):
    """The unsharded model of a run with its own adapters, the adapters in ``extra``
    (checked against the run's backbone) and a fresh adapter for ``new_domain``.

    Returns ``(cfg, layout, model, domain_names)``; load the run's best checkpoint into the
    sharded model with ``partial=True`` afterwards, then :func:`apply_extra`. The new
    adapter's initialisation is drawn from ``seed`` (default: the run's), so a fine-tune is
    reproducible.
    """
    cfg, _, layout = platform_run.load_run(run_dir, load_config)
    names = list(layout.domain_names)
    model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
    own = (cfg.train.domains or names) if isinstance(cfg, MLoRATrainConfig) else []
    a = alpha or (cfg.adapters.alpha if isinstance(cfg, MLoRATrainConfig) else 8)
    r = rank or (cfg.adapters.rank if isinstance(cfg, MLoRATrainConfig) else None)
    attach_adapters(model, names, domains=own, alpha=a, rank=r)
    for adapter_dir in extra:
        tensors, meta = read_adapter(adapter_dir)
        check_backbone(meta, run_dir, adapter_dir)
        if meta["domain"] not in own:
            add_domain(model, meta["domain"], ranks=meta["rank"])
        add_domain_rows(model, meta["domain"], domain_rows_of(tensors))
    if new_domain is not None:
        if new_domain in own:
            raise ValueError(f"domain '{new_domain}' already has an adapter in {run_dir}")
        torch.manual_seed(cfg.train.seed if seed is None else seed)
        add_domain(model, new_domain, alpha=a, rank=r)
    return cfg, layout, model, model.adapter_context.domain_names


def apply_extra(model: nn.Module, run_dir: Path, extra: list[Path]) -> None:
    for adapter_dir in extra:
        tensors, meta = read_adapter(adapter_dir)
        check_backbone(meta, run_dir, adapter_dir)
        load_adapter_tensors(model, meta["domain"], tensors)


def backbone_tables(run_dir: Path, fields: list[str]) -> dict[str, torch.Tensor]:
    """The full embedding tables of ``fields`` in a run's best checkpoint (nothing else is read)."""
    state = ckpt.read_state(run_dir / "checkpoints")
    keys = {f: f"ebc.embedding_bags.t_{f}.weight" for f in fields}
    model = _load_state_dict_from_keys(keys={f"model.{k}" for k in keys.values()},
                                       checkpoint_id=str(ckpt.epoch_dir(run_dir / "checkpoints", state.best_epoch)))["model"]
    return {f: model[k] for f, k in keys.items()}


def domain_map_for(data_names: list[str], model_names: list[str]) -> torch.Tensor:
    """Model domain index for each data domain (0 for domains the model lacks; such rows
    must be filtered out by the caller)."""
    return torch.tensor([model_names.index(d) if d in model_names else 0 for d in data_names])


def _finetune_worker(rank: int, world: int, base: Path, domain: str, data_dir: Path, out: Path, scratch: Path,
                     overrides: dict) -> None:
    platform_run.setup_logging(None, rank)
    device, _ = select_device(rank)
    cfg, layout, model, names = run_model(base, new_domain=domain, alpha=overrides.get("alpha"),
                                          rank=overrides.get("rank"), seed=overrides.get("seed"))
    table_seed = cfg.train.seed  # the backbone's tables were initialised from it
    raw = cfg.model_dump()
    raw["train"].update({k: v for k, v in overrides.items() if k in ("epochs", "seed") and v is not None})
    lr = overrides["lr"] if overrides.get("lr") is not None else raw["optim"]["dense"]["lr"] * FINETUNE_LR_SCALE
    raw["optim"]["dense"]["lr"] = lr
    cfg = type(cfg).model_validate(raw)
    backbone = backbone_parameter_count(model)
    data_spec = load_spec(data_dir)
    reader = layout.reader(data_dir)
    learned = {}
    rows = overrides["rows"]
    if rows != "none":  # the domain's own rows: those the backbone never trained, or all it uses
        seen = seen_rows(reader, domain, [k for k in layout.keys if k in reader.keys],
                         split_kind=cfg.train.split_kind, split_seed=cfg.train.split_seed)
        learned = find_cold_rows(backbone_tables(base, list(seen)), layout, table_seed, seen) if rows == "cold" else \
            {k: torch.from_numpy(v.astype("int64")) for k, v in seen.items() if v.size}
        add_domain_rows(model, domain, learned)
    freeze_backbone(model)
    own = domain_parameter_names(model, domain)  # the new domain's banks (add_domain gives it its own) and rows
    for n, p in model.named_parameters():
        if is_adapter_param(n) and n not in own:
            p.requires_grad_(False)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, reader, layout, scratch, rank=rank, world_size=world, device=device, model=model,
                      domains=[domain], domain_map=domain_map_for(data_spec.domain_names, names),
                      trainable=lambda n: clean_name(n) in own,
                      keep_only=lambda key: is_domain_entry(key, domain))
    state = ckpt.read_state(base / "checkpoints")
    ckpt.load(trainer.model, None, ckpt.epoch_dir(base / "checkpoints", state.best_epoch), partial=True)
    before = backbone_snapshot(trainer.model)
    others = {d: adapter_tensors(trainer.model, d) for d in names if d != domain and _has(trainer.model, d)}
    fit = trainer.fit(validate_start=True)
    if not same_tensors(before, backbone_snapshot(trainer.model)) or any(
            not same_tensors(t, adapter_tensors(trainer.model, d)) for d, t in others.items()):
        raise RuntimeError("fine-tuning changed the backbone or another domain's adapter")
    metrics = trainer.evaluate("test")
    tensors = adapter_tensors(trainer.model, domain)
    layers = adapter_layers(trainer.model)
    n_params = adapter_parameter_count(tensors)
    meta = {
        "domain": domain,
        "rank": {n: m.ranks[domain] for n, m in layers.items()},
        "alpha": overrides.get("alpha") or (cfg.adapters.alpha if isinstance(cfg, MLoRATrainConfig) else 8),
        "layer_shapes": layer_shapes(trainer.model),
        **backbone_identity(base),
        "parameters": n_params,
        "lr": lr,
        "seed": cfg.train.seed,
        "rows": rows,
        "row_counts": {f: int(r.numel()) for f, r in learned.items()},
        "parameter_share": round(n_params / backbone, 6),
        "train_seconds": round(time.perf_counter() - t0, 2),
        "epochs": len(fit.history) - 1,
        "best_epoch": fit.best_epoch,
        "data_dir": str(data_dir),
        "metrics": metrics,
    }
    if rank == 0:
        save_adapter(out, tensors, meta, overwrite=overrides.get("overwrite", False))
        log.info("adapter for '%s': %s parameters (%.2f%% of the backbone's %s), test AUC %s, %.1f s",
                 domain, f"{n_params:,}", 100 * n_params / backbone, f"{backbone:,}",
                 metrics["domains"].get(domain, {}).get("auc"), meta["train_seconds"])


def _has(model: nn.Module, domain: str) -> bool:
    return all(domain in m.lora_A for m in adapter_layers(model).values())


ROW_MODES = ("all", "cold", "none")
#: fine-tuning's default learning rate is the backbone's dense lr times this. The adapter
#: starts at zero on a frozen backbone: at 1x it was still improving after as many epochs
#: as the pretraining ran, at 5x its validation AUC peaks after ~3 epochs (early stopping
#: keeps that epoch), as LoRA fine-tuning usually runs at a higher lr than full training.
#: 10x was faster still but unstable on MovieLens' female domain (test AUC 0.752-0.759
#: over reruns, against 0.762 at 5x). ``--lr`` overrides it. benchmarks/adapter_onboarding.py
FINETUNE_LR_SCALE = 5.0


def finetune(base: str | Path, domain: str, data: str | Path, out: str | Path, *, epochs: int | None = None,
             lr: float | None = None, alpha: int | None = None, rank: int | None = None, seed: int | None = None,
             rows: str = "all", overwrite: bool = False) -> dict:
    """Train ``domain``'s adapter on ``base``'s frozen backbone; returns ``adapter.json``.

    ``rows``: which embedding rows the adapter also learns, for this domain's examples only
    (:mod:`mdctr.adapters.rows`): ``all`` (default) a residual for every row the domain's
    training data uses (closest to training the domain in from the start), ``cold`` only
    the rows of the domain's ids the backbone never trained (a smaller adapter), ``none``
    none (the tower adapter alone). ``lr`` defaults to the backbone's dense lr times
    :data:`FINETUNE_LR_SCALE`.
    """
    if rows not in ROW_MODES:
        raise ValueError(f"rows must be one of {ROW_MODES}, got {rows!r}")
    base, out = Path(base), Path(out)
    _, train_spec, _ = platform_run.load_run(base, load_config)
    data_dir = resolve_data(data)
    data_spec, _ = validate_dataset(data_dir)
    if domain not in data_spec.domain_names:
        raise DataContractError(f"domain '{domain}' is not in the data (has {data_spec.domain_names})",
                                file=data_dir / "dataset.yaml")
    platform_run.check_compatible(train_spec, data_spec, data_dir)
    if ckpt.read_state(base / "checkpoints") is None:
        raise DataContractError("run has no finished checkpoint", file=base)
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.ckpt-", dir=out.parent))
    try:
        launch(_finetune_worker, 1, base, domain, data_dir, out, scratch,
               {"epochs": epochs, "lr": lr, "alpha": alpha, "rank": rank, "seed": seed, "overwrite": overwrite,
                "rows": rows})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return json.loads((out / "adapter.json").read_text())


def _predict_worker(rank: int, world: int, run_dir: Path, extra: list[Path], data_dir: Path, split: str | None,
                    domains: list[str] | None, out_file: Path) -> None:
    platform_run.setup_logging(None, rank)
    device, _ = select_device(rank)
    cfg, layout, model, names = run_model(run_dir, extra)
    data_spec = load_spec(data_dir)
    reader = layout.reader(data_dir)
    trainer = Trainer(cfg, reader, layout, run_dir / "checkpoints", rank=rank, world_size=world, device=device,
                      model=model, domains=domains, domain_map=domain_map_for(data_spec.domain_names, names),
                      progress=False)
    state = ckpt.read_state(run_dir / "checkpoints")
    ckpt.load(trainer.model, None, ckpt.epoch_dir(run_dir / "checkpoints", state.best_epoch), partial=True)
    apply_extra(trainer.model, run_dir, extra)
    logits, labels, domain, _ = trainer.predict(split)
    if rank == 0:
        torch.save({"logits": logits, "labels": labels, "domain": domain}, out_file)


def predict(run_dir: str | Path, data: str | Path, *, adapters: list[str | Path] = (), split: str | None = "test",
            domains: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Logits of a run (plus external adapters) on ``data``: ``{"logits", "labels", "domain"}``."""
    run_dir, data_dir = Path(run_dir), resolve_data(data)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "pred.pt"
        launch(_predict_worker, 1, run_dir, [Path(a) for a in adapters], data_dir, split, domains, out_file)
        return torch.load(out_file, weights_only=True)

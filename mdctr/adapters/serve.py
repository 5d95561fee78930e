"""Serving forms of adapters: list them, and merge one domain's adapter into the weights.

``merge`` writes a plain run directory (no adapters; ``mdctr evaluate`` reads it like any
run) whose tower weights are ``W + (A_d B_d)^T`` and biases ``b + b_d``, and whose tables
hold the domain's own embedding rows (:mod:`mdctr.adapters.rows`) added in. Before writing it
checks that the merged model's logits equal the adapted model's within 1e-5 on that
domain's test rows, and it refuses non-finite merged weights.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import torch.distributed.checkpoint as dcp

from mdctr.adapters.rows import ROWS, fold_into_tables
from mdctr.adapters.model import adapter_layers, inner_model, is_adapter_param
from mdctr.adapters.onboard import apply_extra, domain_map_for, run_model
from mdctr.adapters.files import read_adapter
from mdctr.adapters.run import MLoRATrainConfig, load_config
from mdctr.domains.errors import DataContractError
from mdctr.domains.writer import atomic_dir
from mdctr.domains.spec import load_spec, save_spec
from mdctr.platform import checkpoint as ckpt
from mdctr.platform import run as platform_run
from mdctr.platform.config import TrainConfig, save_train_config
from mdctr.platform.distributed import launch, select_device
from mdctr.platform.metrics import write_json
from mdctr.platform.trainer import Trainer

MERGE_TOLERANCE = 1e-5


def list_adapters(run_dir: str | Path, extra: list[str | Path] = ()) -> list[dict]:
    """One row per adapter of the run (and of ``extra`` adapter directories)."""
    run_dir = Path(run_dir)
    cfg, spec, layout = platform_run.load_run(run_dir, load_config)
    rows = []
    if isinstance(cfg, MLoRATrainConfig):
        run = json.loads((run_dir / "run.json").read_text())
        params = run.get("parameters", {})
        for d in cfg.train.domains or layout.domain_names:
            rows.append({"domain": d, "source": "run", "mode": cfg.adapters.mode, "alpha": cfg.adapters.alpha,
                         "parameters": params.get("adapter_per_domain", {}).get(d),
                         "share": params.get("adapter_share_per_domain", {}).get(d), "rows": "-"})
    for adapter_dir in extra:
        _, meta = read_adapter(adapter_dir)
        counts = meta.get("row_counts", {})
        rows.append({"domain": meta["domain"], "source": str(adapter_dir), "mode": "finetune",
                     "alpha": meta.get("alpha"), "parameters": meta["parameters"], "share": meta["parameter_share"],
                     "rows": f"{meta.get('rows', 'none')} ({sum(counts.values()):,})" if counts else "none"})
    return rows


def _merge_worker(rank: int, world: int, run_dir: Path, domain: str, extra: list[Path], data_dir: Path,
                  out_tmp: Path) -> None:
    platform_run.setup_logging(None, rank)
    device, _ = select_device(rank)
    cfg, layout, model, names = run_model(run_dir, extra)
    layers = adapter_layers(model)
    if not layers or any(domain not in m.lora_A for m in layers.values()):
        raise DataContractError(f"no adapter for domain '{domain}' (pass its directory with --adapter)", file=run_dir)
    data_spec = load_spec(data_dir)
    reader = layout.reader(data_dir)
    trainer = Trainer(cfg, reader, layout, run_dir / "checkpoints", rank=rank, world_size=world, device=device,
                      model=model, domains=[domain], domain_map=domain_map_for(data_spec.domain_names, names),
                      progress=False)
    state = ckpt.read_state(run_dir / "checkpoints")
    ckpt.load(trainer.model, None, ckpt.epoch_dir(run_dir / "checkpoints", state.best_epoch), partial=True)
    apply_extra(trainer.model, run_dir, extra)
    before = trainer.predict("test")[0]
    layers = adapter_layers(trainer.model)
    merged = []
    try:
        for layer in layers.values():
            layer.merge(domain)
            merged.append(layer)
    except ValueError:
        for layer in merged:
            layer.unmerge()
        raise
    learned = getattr(inner_model(trainer.model), ROWS, {})
    if domain in learned:  # its own rows go into the tables: this run serves only that domain
        fold_into_tables(trainer.model, learned[domain])
    after = trainer.predict("test")[0]
    gap = float((before - after).abs().max()) if before.numel() else 0.0
    if gap > MERGE_TOLERANCE:
        raise RuntimeError(f"merged logits differ from the adapted model's by {gap:.2e} (> {MERGE_TOLERANCE})")
    plain = {k: v for k, v in trainer.model.state_dict().items() if not is_adapter_param(k)}
    dcp.save({"model": plain}, checkpoint_id=str(out_tmp / "checkpoints" / "epoch-0000"))
    if rank == 0:
        write_json({"max_abs_logit_gap": gap, "rows_checked": int(before.numel())}, out_tmp / "merge.json")


def merge(run_dir: str | Path, domain: str, out: str | Path, *, adapters: list[str | Path] = (),
          data: str | Path | None = None, overwrite: bool = False) -> dict:
    """Fold ``domain``'s adapter into the backbone and write a plain single-domain run to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    cfg, spec, _ = platform_run.load_run(run_dir, load_config)
    extra = [Path(a) for a in adapters]
    if data is None:  # the domain's rows live in the run's data, or in the adapter's
        data_dir = Path(json.loads((run_dir / "run.json").read_text())["data_dir"])
        for a in extra:
            _, meta = read_adapter(a)
            if meta["domain"] == domain and domain not in spec.domain_names:
                data_dir = Path(meta["data_dir"])
    else:
        from mdctr.domains.datasets import resolve_data

        data_dir = resolve_data(data)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        launch(_merge_worker, 1, run_dir, domain, extra, data_dir, tmp)
        raw = cfg.model_dump(mode="json")
        raw.pop("adapters", None)
        raw["train"]["domains"] = None
        plain = TrainConfig.model_validate(raw)
        save_train_config(plain, tmp / "config.yaml")
        save_spec(spec, tmp)
        base = json.loads((run_dir / "run.json").read_text())
        check = json.loads((tmp / "merge.json").read_text())
        write_json({"run_id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
                    "config_fingerprint": plain.fingerprint(), "data_dir": base["data_dir"],
                    "data_fingerprint": base.get("data_fingerprint"), "started": time.time(),
                    "merged_from": {"run_id": base["run_id"], "domain": domain,
                                    "adapters": [str(a) for a in extra], **check}},
                   tmp / "run.json")
        ckpt.write_state(tmp / "checkpoints", ckpt.TrainState(last_epoch=0, best_epoch=0, stopped=True))
    return json.loads((out / "run.json").read_text())["merged_from"]

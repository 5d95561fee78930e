"""Serving forms of adapters: list them, and merge one domain's adapter into the weights.

``merge`` writes a plain run directory (no adapters; ``mdctr evaluate`` reads it like any
run) whose tower weights are ``W + (A_d B_d)^T`` and biases ``b + b_d``, and whose tables
hold the domain's own embedding rows (:mod:`mdctr.adapters.rows`) added in. Before writing it
checks that the merged model's logits equal the adapted model's within 1e-5 on that
domain's test rows, and it refuses non-finite merged weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from mdctr.adapters.files import read_adapter
from mdctr.adapters.model import adapter_layers, inner_model, is_adapter_param
from mdctr.adapters.onboard import LoadAdapters, adapted_model, model_domains
from mdctr.adapters.rows import ROWS, fold_into_tables
from mdctr.adapters.run import AdapterRunDir, MLoRATrainConfig
from mdctr.core.errors import ArtifactError
from mdctr.core.io import atomic_dir, write_json
from mdctr.domains.datasets import resolve_data
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import TrainConfig
from mdctr.platform.job import JobContext
from mdctr.platform.launcher import Launcher, resolve_launcher
from mdctr.platform.run import prediction_job
from mdctr.platform.rundir import create_run_dir

MERGE_TOLERANCE = 1e-5


def list_adapters(run_dir: str | Path, extra: list[str | Path] = ()) -> list[dict]:
    """One row per adapter of the run (and of ``extra`` adapter directories)."""
    run = AdapterRunDir(run_dir)
    cfg = run.config
    rows = []
    if isinstance(cfg, MLoRATrainConfig):
        params = run.info.get("parameters", {})
        selected = run.info.get("selected_epochs")
        selected = selected if isinstance(selected, dict) else {}
        for d in cfg.train.domains or run.spec.domain_names:
            kept = "-" if d not in selected else (f"epoch {selected[d]}" if selected[d] else "no (shared)")
            rows.append({"domain": d, "source": "run", "mode": cfg.adapters.mode, "alpha": cfg.adapters.alpha,
                         "parameters": params.get("adapter_per_domain", {}).get(d),
                         "share": params.get("adapter_share_per_domain", {}).get(d), "rows": "-", "kept": kept})
    for adapter_dir in extra:
        _, meta = read_adapter(adapter_dir)
        counts = meta.get("row_counts", {})
        rows.append({"domain": meta["domain"], "source": str(adapter_dir), "mode": "finetune",
                     "alpha": meta.get("alpha"), "parameters": meta["parameters"], "share": meta["parameter_share"],
                     "rows": f"{meta.get('rows', 'none')} ({sum(counts.values()):,})" if counts else "none",
                     "kept": "-"})
    return rows


@dataclass(frozen=True)
class MergeOutput:
    """Merge's output (collective): predicts the domain's test rows, folds the adapter into
    the weights and its own rows into the tables, predicts again, checks the logits agree,
    and saves the plain model into ``out/checkpoints/epoch-0000``."""

    domain: str
    out: Path

    def __call__(self, ctx: JobContext) -> None:
        trainer = ctx.trainer
        layers = adapter_layers(trainer.model)
        if not layers or any(self.domain not in m.lora_A for m in layers.values()):
            raise ArtifactError(f"no adapter for domain '{self.domain}' (pass its directory with --adapter)",
                                file=ctx.job.spec_dir)
        before = trainer.predict("test").logits
        merged = []
        try:
            for layer in layers.values():
                layer.merge(self.domain)
                merged.append(layer)
        except ValueError:
            for layer in merged:
                layer.unmerge()
            raise
        learned = getattr(inner_model(trainer.model), ROWS, {})
        if self.domain in learned:  # its own rows go into the tables: this run serves only that domain
            fold_into_tables(trainer.model, learned[self.domain])
        after = trainer.predict("test").logits
        gap = float((before - after).abs().max()) if before.numel() else 0.0
        if gap > MERGE_TOLERANCE:
            raise RuntimeError(f"merged logits differ from the adapted model's by {gap:.2e} (> {MERGE_TOLERANCE})")
        plain = {k: v for k, v in trainer.model.state_dict().items() if not is_adapter_param(k)}
        ckpt.save_state({"model": plain}, self.out / "checkpoints" / "epoch-0000")
        if ctx.rank == 0:
            write_json({"max_abs_logit_gap": gap, "rows_checked": int(before.numel())}, self.out / "merge.json")


def merge(run_dir: str | Path, domain: str, out: str | Path, *, adapters: list[str | Path] = (),
          data: str | Path | None = None, overwrite: bool = False, launcher: Launcher | None = None) -> dict:
    """Fold ``domain``'s adapter into the backbone and write a plain single-domain run to ``out``."""
    run, out = AdapterRunDir(run_dir), Path(out)
    extra = [Path(a) for a in adapters]
    if data is None:  # the domain's rows live in the run's data, or in the adapter's
        data_dir = run.data_dir
        for a in extra:
            _, meta = read_adapter(a)
            if meta["domain"] == domain and domain not in run.spec.domain_names:
                data_dir = Path(meta["data_dir"])
    else:
        data_dir = resolve_data(data)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        job = prediction_job(run, data_dir, "test", MergeOutput(domain, tmp))
        job.selection = job.selection.with_domains([domain])
        job.model = adapted_model(run, extra)
        job.edits = (LoadAdapters(tuple(extra)),)
        job.model_domains = model_domains(run, extra)
        resolve_launcher(launcher).launch(job)
        raw = run.config.model_dump(mode="json")
        raw.pop("adapters", None)
        raw["train"]["domains"] = None
        plain = TrainConfig.model_validate(raw)
        check = json.loads((tmp / "merge.json").read_text())
        create_run_dir(tmp, plain, run.data_dir, run.spec, kind="merged", model=run.info.get("model"),
                       merged_from={"run_id": run.run_id, "domain": domain, "adapters": [str(a) for a in extra],
                                    **check})
        ckpt.write_state(tmp / "checkpoints", ckpt.TrainState(last_epoch=0, best_epoch=0, stopped=True))
    return json.loads((out / "run.json").read_text())["merged_from"]

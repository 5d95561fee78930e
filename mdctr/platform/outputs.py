"""What jobs leave behind: the :class:`~mdctr.platform.job.Output` s of the platform's jobs.

Each is called on every rank after the job's units ran; only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mdctr.core.io import write_json
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.job import JobContext
from mdctr.platform.metrics import compute_metrics, metrics_table
from mdctr.platform.trainer import Predictions

log = logging.getLogger("mdctr.train")


def gathered(ctx: JobContext, name: str) -> Predictions:
    """The predictions ``name`` of every unit of the job, concatenated."""
    preds = [r.predictions[name] for r in ctx.results]
    return Predictions(*(torch.cat([p[i] for p in preds]) for i in range(4)))


def best_validation(ctx: JobContext) -> dict:
    """``{"split": "valid", "valid_auc", "valid_wauc", "valid_logloss", "best_epoch"}`` of the
    job's (last) unit's best epoch."""
    state = ctx.results[-1].state
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    return {"split": "valid", "best_epoch": state.best_epoch,
            **{k: best.get(k) for k in ("valid_auc", "valid_wauc", "valid_logloss")}}


@dataclass(frozen=True)
class RunOutput:
    """A train run's ``history.json``, ``run.json`` (timings, ``info``) and, last,
    ``metrics.json`` (the ``test`` predictions, every unit together).

    ``history``: names of earlier phases and their checkpoint directories, whose epoch
    history goes into ``history.json`` first (MLoRA's pretraining)."""

    run_dir: Path
    info: dict = field(default_factory=dict)
    history: tuple[tuple[str, Path], ...] = ()
    phase: str | None = None  # the history name of this job's unit (default: unit or "all")

    def __call__(self, ctx: JobContext) -> None:
        if ctx.rank != 0:
            return
        if all("test" in r.predictions for r in ctx.results):
            p = gathered(ctx, "test")
            metrics = compute_metrics(p.logits, p.labels, p.domain, ctx.layout.domain_names, split="test")
        else:  # not evaluated on test rows (a tuning trial): the best epoch's validation scores
            metrics = best_validation(ctx)
        history = {name: ckpt.read_state(d).history for name, d in self.history}
        for r in ctx.results:
            history[self.phase or r.unit or "all"] = r.state.history
        write_json({"history": history}, self.run_dir / "history.json")
        run = json.loads((self.run_dir / "run.json").read_text())
        run.update(self.info)
        for r in ctx.results:  # per-domain selection: each domain's epoch (0: the untrained start)
            if r.state.history and "selected" in r.state.history[-1]:
                run["selected_epochs"] = r.state.history[-1]["selected"]
        if any(r.unchanged is not None for r in ctx.results):
            run["backbone_unchanged"] = all(r.unchanged for r in ctx.results)
        run.update({"finished": time.time(), "wall_seconds": round(time.time() - run["started"], 2)})
        write_json(run, self.run_dir / "run.json")
        write_json(metrics, self.run_dir / "metrics.json")
        if metrics.get("split") == "test":
            log.info("test metrics\n%s", metrics_table(metrics))
        else:
            log.info("not evaluated on test rows; best validation: %s", metrics)


@dataclass(frozen=True)
class MetricsOutput:
    """Metrics of the predictions ``name`` (domains named by the data) into ``out``,
    printed as a table."""

    out: Path
    name: str = "test"
    split: str = "test"
    show: bool = True

    def __call__(self, ctx: JobContext) -> None:
        if ctx.rank != 0:
            return
        p = gathered(ctx, self.name)
        metrics = compute_metrics(p.logits, p.labels, p.domain, ctx.spec.domain_names, split=self.split)
        write_json(metrics, self.out)
        if self.show:
            print(metrics_table(metrics))


@dataclass(frozen=True)
class PredictionsOutput:
    """The predictions ``name`` as Parquet: ``example_id``, ``logit``, ``label``, ``domain``
    (the data's domain index)."""

    out: Path
    name: str = "test"

    def __call__(self, ctx: JobContext) -> None:
        if ctx.rank != 0:
            return
        p = gathered(ctx, self.name)
        pq.write_table(pa.table({"example_id": p.example_id.numpy(), "logit": p.logits.numpy().astype(np.float32),
                                 "label": p.labels.numpy().astype(np.float32), "domain": p.domain.numpy()}), self.out)


def read_predictions(path: Path) -> Predictions:
    t = pq.read_table(path)
    col = {c: torch.from_numpy(t.column(c).to_numpy()) for c in ("logit", "label", "domain", "example_id")}
    return Predictions(col["logit"], col["label"], col["domain"], col["example_id"])

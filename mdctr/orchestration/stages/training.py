"""The three E-CDCTR training stages: TPM (monthly), CPM (weekly), A-CTR (daily).

- **TPM** (tiny pretrain): ``tpm.fields`` only, organic rows of the last
  ``tpm.window_days``; writes the snapshot of its user and item embeddings (ids seen in the
  window) for D's month and garbage-collects all but the newest ``tpm.keep`` months.
- **CPM** (complete pretrain): the ad model's network on ``cpm.window_days`` of organic
  rows, with the TPM history input when ``actr.use_tpm``.
- **A-CTR** (ad model): starts from the latest CPM at or before D (minus
  ``actr.init_exclude``), takes the last K TPM snapshots at or before D, fine-tunes on the
  ad rows of the last ``actr.window_days``.

A stage whose ``train`` section has ``validation: true`` (TPM, CPM by default) trains on
its window's train part and early-stops on the window's valid part; with ``validation:
false`` (A-CTR by default: a day of ad rows leaves no room for a hold-out) it trains on
every row of the window and keeps the last epoch. Each version is a run directory
(``kind: stage``) that ``mdctr evaluate``, ``adapters finetune`` and ``adapters export``
accept like a train run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mdctr.core.errors import ArtifactError
from mdctr.core.io import write_json
from mdctr.core.timeutil import DAY, day_ts, iso_day, month_of
from mdctr.domains.ids import table_rows
from mdctr.domains.selection import Selection
from mdctr.domains.spec import load_spec
from mdctr.orchestration.config import PipelineConfig
from mdctr.orchestration.stages.registry import DueRule, Stage, StageRun, register
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import Baseline, ModelConfig, OptimConfig, TrainConfig, TrainLoopConfig
from mdctr.platform.history import HistoryModelBuilder, HistorySpec, SnapshotInput
from mdctr.platform.job import Init, Job, JobContext, Predict, default_model
from mdctr.platform.launcher import resolve_launcher
from mdctr.platform.metrics import compute_metrics
from mdctr.platform.rundir import RUN_FILE, RunDir, create_run_dir


@dataclass(frozen=True)
class StageOutput:
    """A training stage's ``metrics.json`` (training summary, next-day metrics) and
    ``next_day.parquet`` (logits and labels of the day after), written by rank 0."""

    out: Path
    min_eval_rows: int = 20

    def __call__(self, ctx: JobContext) -> None:
        if ctx.rank != 0:
            return
        result = ctx.results[-1]
        state = result.state
        best = next(h for h in state.history if h["epoch"] == state.best_epoch)
        metrics = {"train_rows": ctx.trainer.num_rows(ctx.trainer.train_split), "best_epoch": state.best_epoch,
                   "valid_auc": best["valid_auc"], "valid_wauc": best["valid_wauc"], "train_loss": best["train_loss"]}
        if "next_day" in result.predictions:
            p = result.predictions["next_day"]
            pq.write_table(pa.table({"logit": p.logits.numpy(), "label": p.labels.numpy()}), self.out / "next_day.parquet")
            metrics["next_day"] = next_day_metrics(p.logits, p.labels, p.domain, ctx.spec.domain_names,
                                                   self.min_eval_rows)
        write_json(metrics, self.out / "metrics.json")


def next_day_metrics(logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor, names: list[str],
                     min_rows: int) -> dict:
    """AUC and log loss of one evaluation day (AUC None when it has fewer than ``min_rows``
    rows or a single class)."""
    n = int(labels.numel())
    if n < min_rows or labels.min() == labels.max():
        return {"n": n, "auc": None, "logloss": None}
    m = compute_metrics(logits, labels, domain, names, split="next_day")
    return {"n": n, "auc": m["auc"], "logloss": m["logloss"]}


def history_spec(cfg: PipelineConfig) -> HistorySpec:
    t = cfg.tpm
    return HistorySpec({"user": t.user_field, "item": t.item_field}, t.keep, t.embedding_dim, t.attention_heads)


def stage_train_config(pipe, model: ModelConfig, loop: TrainLoopConfig, domains: list[str],
                       optim: OptimConfig | None = None) -> TrainConfig:
    train = loop.model_copy(update={"seed": pipe.cfg.seed, "domains": domains})
    return TrainConfig(data=str(pipe.data_dir), baseline=Baseline.shared, model=model,
                       optim=optim or pipe.cfg.optim, train=train, world_size=pipe.cfg.world_size)


def train_stage(pipe, vid: str, out: Path, cfg: TrainConfig, window: tuple[int, int], inputs: dict, *,
                history: bool, init: Init | None = None, evaluate_next_day: bool = False,
                verbose: bool = True) -> StageRun:
    """Train one stage's model into the version directory ``out`` (a run directory) and keep
    only its best epoch's checkpoint."""
    model, transform, model_info = default_model, None, None
    if history:
        months = inputs.get("tpm_months", [])
        spec = history_spec(pipe.cfg)
        model, transform = HistoryModelBuilder(spec), SnapshotInput(pipe.embeddings.root, tuple(months), spec)
        model_info = {"history": spec.to_dict(), "snapshots": {"store": pipe.embeddings.root.name, "months": months}}
    create_run_dir(out, cfg, pipe.data_dir, pipe.spec, kind="stage", run_id=vid, model=model_info)
    selection = Selection(cfg.train.split_kind, cfg.train.split_seed, tuple(cfg.train.domains), window)
    end = window[1]
    predict = (Predict("next_day", None, selection.with_window(end, end + DAY)),) if evaluate_next_day else ()
    job = Job(cfg, pipe.data_dir, out / "checkpoints", model=model, selection=selection, transform=transform,
              train_split="train" if cfg.train.validation else None, init=init, predict=predict,
              output=StageOutput(out, pipe.cfg.actr.min_eval_rows), log_dir=out, verbose=verbose, progress=False)
    resolve_launcher(pipe.launcher).launch(job)
    best = ckpt.read_state(out / "checkpoints").best_epoch
    for d in (out / "checkpoints").glob("epoch-*"):  # the version keeps its model only
        if d.name != ckpt.epoch_dir(out, best).name:
            shutil.rmtree(d)
    metrics = json.loads((out / "metrics.json").read_text())
    evaluations = {"next_day": ((end, end + DAY), metrics["next_day"])} if "next_day" in metrics else {}
    return StageRun(window, metrics.get("train_rows"), inputs, metrics, evaluations)


def _history_inputs(pipe, day: date) -> dict:
    if not pipe.cfg.actr.use_tpm:
        return {}
    months, versions = pipe.tpm_months(day)
    return {"tpm_months": months, "tpm_versions": versions}


# -- TPM ----------------------------------------------------------------------------------------


def _window(section: str, role: str):
    """A stage's training rows for a date: its section's ``window_days`` before the date, of
    the pipeline's ``role`` (organic or ad) domains."""

    def window(pipe, day: date) -> tuple[tuple[int, int], list[str]]:
        end = day_ts(day)
        return (end - getattr(pipe.cfg, section).window_days * DAY, end), getattr(pipe, role)

    return window


def _run_tpm(pipe, day: date, out: Path, vid: str, *, evaluate_next_day: bool = False,
             verbose: bool = True) -> StageRun:
    t = pipe.cfg.tpm
    model = pipe.cfg.model.model_copy(update={"fields": t.fields, "use_dense": False, "embedding_dim": t.embedding_dim,
                                              "hidden": t.hidden, "tower": "mlp"})
    window, domains = _window("tpm", "organic")(pipe, day)
    cfg = stage_train_config(pipe, model, t.train, domains)
    result = train_stage(pipe, vid, out, cfg, window, {"month": month_of(day)}, history=False, verbose=verbose)
    _snapshot(pipe, vid, out, cfg, window, result.inputs)
    return result


def _snapshot(pipe, vid: str, run: Path, cfg: TrainConfig, window: tuple[int, int], inputs: dict) -> None:
    """Write the TPM's user and item embeddings (ids seen in its window) to the store."""
    t = pipe.cfg.tpm
    version = RunDir(run)
    layout = version.layout()
    weights = version.tables([t.user_field, t.item_field])
    tables = {}
    for entity, f in (("user", t.user_field), ("item", t.item_field)):
        ids = window_ids(pipe.data_dir, f, window, list(cfg.train.domains))
        weight = weights[f].float().numpy()
        tables[entity] = (ids, weight[table_rows(ids, layout.rows[f])])
    pipe.embeddings.write(inputs["month"], tables, {"version_id": vid,
                                                    "window": [iso_day(window[0]), iso_day(window[1])]})
    inputs.update(user_rows=len(tables["user"][0]), item_rows=len(tables["item"][0]))


def window_ids(data_dir: Path, field_name: str, window: tuple[int, int], domains: list[str]) -> np.ndarray:
    """Distinct raw ids of ``field_name`` in rows of ``domains`` with ``ts`` in ``window``."""
    spec = load_spec(data_dir)
    out = []
    for name in spec.files:
        t = pq.read_table(data_dir / name, columns=[field_name, "ts", "domain"])
        keep = pc.and_(pc.and_(pc.greater_equal(t["ts"], window[0]), pc.less(t["ts"], window[1])),
                       pc.is_in(t["domain"], value_set=pa.array(domains)))
        out.append(np.unique(t.filter(keep)[field_name].to_numpy()))
    return np.unique(np.concatenate(out)) if out else np.empty(0, np.int64)


register(Stage(
    name="tpm", section="tpm", summary="tiny pretrain: monthly user/item embedding snapshots",
    due=lambda cfg: DueRule("month"),
    inputs=lambda cfg: (),
    hash_parts=lambda cfg: {"tpm": cfg.tpm.model_dump(mode="json")},
    enabled=lambda cfg: cfg.actr.use_tpm,
    run=_run_tpm,
    available=lambda pipe, day: bool(pipe.tpm_months(day)[0]),
    after_commit=lambda pipe: pipe.embeddings.gc(keep=pipe.cfg.tpm.keep, protect=pipe.months_in_use()),
    window=_window("tpm", "organic"),
    files=(RUN_FILE,),
))


# -- CPM and A-CTR ------------------------------------------------------------------------------


def _network_parts(cfg: PipelineConfig) -> dict:
    return {"model": cfg.model.model_dump(mode="json"), "optim": cfg.optim.model_dump(mode="json"),
            "use_tpm": cfg.actr.use_tpm}


def _run_cpm(pipe, day: date, out: Path, vid: str, *, evaluate_next_day: bool = False,
             verbose: bool = True) -> StageRun:
    c = pipe.cfg
    window, domains = _window("cpm", "organic")(pipe, day)
    cfg = stage_train_config(pipe, c.model, c.cpm.train, domains)
    return train_stage(pipe, vid, out, cfg, window, _history_inputs(pipe, day), history=c.actr.use_tpm,
                       verbose=verbose)


register(Stage(
    name="cpm", section="cpm", summary="complete pretrain: weekly, the ad model's network on organic rows",
    due=lambda cfg: DueRule("week", cfg.cpm.weekday),
    inputs=lambda cfg: ("tpm",) if cfg.actr.use_tpm else (),
    hash_parts=lambda cfg: {**_network_parts(cfg), "cpm": cfg.cpm.model_dump(mode="json")},
    enabled=lambda cfg: cfg.actr.init_from_cpm,
    run=_run_cpm,
    window=_window("cpm", "organic"),
    files=(RUN_FILE,),
))


def _run_actr(pipe, day: date, out: Path, vid: str, *, evaluate_next_day: bool = False,
              verbose: bool = True) -> StageRun:
    c = pipe.cfg
    window, domains = _window("actr", "ad")(pipe, day)
    cfg = stage_train_config(pipe, c.model, c.actr.train, domains, c.actr.optim)
    inputs = _history_inputs(pipe, day)
    init = None
    if c.actr.init_from_cpm:
        cpm = pipe.latest("cpm", day)
        if cpm is None:
            raise ArtifactError(f"no CPM version at or before {day} for this config: run "
                                f"`mdctr pipeline run cpm --date {day} --config ...` first", file=pipe.root)
        init = Init(RunDir(cpm.path).best_checkpoint(), exclude=tuple(c.actr.init_exclude))
        inputs["cpm"] = cpm.version_id
    else:
        inputs["cpm"] = None
    return train_stage(pipe, vid, out, cfg, window, inputs, history=c.actr.use_tpm, init=init,
                       evaluate_next_day=evaluate_next_day, verbose=verbose)


register(Stage(
    name="actr", section="actr", summary="the ad model: daily, from the latest CPM with the last K TPM snapshots",
    due=lambda cfg: DueRule("day"),
    inputs=lambda cfg: tuple(s for s, used in (("tpm", cfg.actr.use_tpm), ("cpm", cfg.actr.init_from_cpm)) if used),
    hash_parts=lambda cfg: {**_network_parts(cfg), "ad": cfg.ad_domains, "actr": cfg.actr.model_dump(mode="json")},
    enabled=lambda cfg: True,
    run=_run_actr,
    window=_window("actr", "ad"),
    files=(RUN_FILE,),
))

"""The three E-CDCTR stages as plain, idempotent entrypoints (``mdctr pipeline run``).

A stage run for date D trains on rows with ``ts`` in ``[D - window, D)`` only, so nothing on
or after D reaches it. Layout under the config's ``store``::

    lineage.sqlite                 versions and their inputs (:mod:`.lineage`)
    embeddings/tpm-HASH/           TPM snapshots (:class:`EmbeddingStore`), last K months
    versions/STAGE-DATE-HASH/      one directory per version, complete or absent:
        config.yaml                the stage's resolved training config
        stage.json                 the lineage record
        checkpoints/               DCP checkpoint of the version's model (best epoch only)
        next_day.parquet           A-CTR: logits and labels of the day after (replay)

- **TPM** (tiny pretrain, monthly): ``tpm.fields`` only, organic rows of the last
  ``tpm.window_days``; writes the snapshot of its user and item embeddings (ids seen in the
  window) for D's month and garbage-collects all but the newest ``tpm.keep`` months.
- **CPM** (complete pretrain, weekly): the ad model's network on ``cpm.window_days`` of
  organic rows, with the TPM history input when ``actr.use_tpm``.
- **A-CTR** (ad model, daily): starts from the latest CPM at or before D (minus
  ``actr.init_exclude``), takes the last K TPM snapshots at or before D, fine-tunes on the
  ad rows of the last ``actr.window_days``.

A stage whose ``train`` section has ``validation: true`` (TPM, CPM by default) trains on
its window's train part and early-stops on the window's valid part; with ``validation:
false`` (A-CTR by default: a day of ad rows leaves no room for a hold-out) it trains on
every row of the window and keeps the last epoch.

Re-running a stage for a date whose version is recorded returns that version untouched.
"""

from __future__ import annotations

import calendar
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from mdctr.domains.datasets import resolve_data
from mdctr.domains.errors import DataContractError
from mdctr.domains.ids import table_rows
from mdctr.domains.spec import Role, load_spec, save_spec
from mdctr.domains.validate import validate_dataset
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import (Baseline, ModelConfig, OptimConfig, TrainConfig, TrainLoopConfig,
                                  save_train_config)
from mdctr.platform.distributed import launch, select_device
from mdctr.platform.history import HistoryCTRModel, HistorySpec, SnapshotJoin
from mdctr.platform.metrics import compute_metrics, write_json
from mdctr.platform.model import CTRModel, feature_layout
from mdctr.platform.run import close_log_files, setup_logging
from mdctr.platform.stores.embeddings import EmbeddingStore
from mdctr.platform.trainer import Trainer
from mdctr.orchestration.config import STAGES, PipelineConfig
from mdctr.orchestration.lineage import Lineage, VersionRecord

log = logging.getLogger("mdctr.pipeline")

DAY = 86_400


def day_ts(day: date) -> int:
    """Seconds since the epoch at 00:00 UTC of ``day``."""
    return calendar.timegm(day.timetuple())


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


@dataclass
class StagePlan:
    """Everything a stage's worker needs (picklable: it crosses process boundaries)."""

    stage: str
    day: date
    version_id: str
    train_cfg: TrainConfig
    window: tuple[int, int]
    domains: list[str]
    history: HistorySpec | None = None
    tpm_months: list[str] = field(default_factory=list)
    embeddings: Path | None = None
    init_from: Path | None = None  # checkpoint epoch directory to start from
    init_exclude: list[str] = field(default_factory=list)
    evaluate: tuple[int, int] | None = None  # window to predict after training (A-CTR)
    min_eval_rows: int = 20
    verbose: bool = True  # epoch logs on stdout (always in the version's train.log)


class Pipeline:
    """One pipeline config's stages, store and lineage."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.data_dir = resolve_data(cfg.data)
        self.spec, _ = validate_dataset(self.data_dir)
        names = self.spec.domain_names
        self.organic = cfg.organic_domains or [d.name for d in self.spec.domains if d.role is Role.organic]
        self.ad = cfg.ad_domains or [d.name for d in self.spec.domains if d.role is Role.ad]
        for what, doms in (("organic_domains", self.organic), ("ad_domains", self.ad)):
            if not doms:
                raise DataContractError(f"no {what.split('_')[0]} domains (set {what} in the config)",
                                        file=self.data_dir / "dataset.yaml")
            bad = [d for d in doms if d not in names]
            if bad:
                raise DataContractError(f"{what} names '{bad[0]}', which the data lacks (has {names})",
                                        file=self.data_dir / "dataset.yaml")
        feature_layout(self.spec, cfg.model, Baseline.shared)  # field names checked before any work
        feature_layout(self.spec, ModelConfig(fields=cfg.tpm.fields), Baseline.shared)
        self.root = Path(cfg.store)
        self.lineage = Lineage(cfg.lineage_url or f"sqlite:///{(self.root / 'lineage.sqlite').resolve()}")
        self.embeddings = EmbeddingStore(self.root / "embeddings" / f"tpm-{cfg.stage_hash('tpm')}")

    # -- inputs ---------------------------------------------------------------------------
    def version_dir(self, version_id: str) -> Path:
        return self.root / "versions" / version_id

    def tpm_months(self, day: date) -> tuple[list[str], list[str]]:
        """The last K snapshot months usable on ``day`` and the TPM versions that wrote them:
        snapshots of TPM runs dated on or before ``day`` only."""
        by_month: dict[str, VersionRecord] = {}
        for rec in self.lineage.list("tpm", config_hash=self.cfg.stage_hash("tpm"), at_or_before=day.isoformat()):
            by_month[rec.inputs["month"]] = rec  # the latest run of each month wins
        stored = {v.name: v.meta.get("version_id") for v in self.embeddings.versions.versions()}
        usable = [(month, rec.version_id) for month, rec in sorted(by_month.items())
                  if stored.get(month) == rec.version_id]
        usable = usable[-self.cfg.tpm.keep:]
        return [m for m, _ in usable], [v for _, v in usable]

    def latest_cpm(self, day: date) -> VersionRecord | None:
        found = self.lineage.list("cpm", config_hash=self.cfg.stage_hash("cpm"), at_or_before=day.isoformat())
        return found[-1] if found else None

    def _history(self) -> HistorySpec:
        t = self.cfg.tpm
        return HistorySpec({"user": t.user_field, "item": t.item_field}, t.keep, t.embedding_dim, t.attention_heads)

    def _train_cfg(self, model: ModelConfig, loop: TrainLoopConfig, domains: list[str],
                   optim: OptimConfig | None = None) -> TrainConfig:
        train = loop.model_copy(update={"seed": self.cfg.seed, "domains": domains})
        return TrainConfig(data=str(self.data_dir), baseline=Baseline.shared, model=model,
                           optim=optim or self.cfg.optim, train=train, world_size=self.cfg.world_size)

    def plan(self, stage: str, day: date, *, evaluate_next_day: bool = False) -> tuple[StagePlan, dict]:
        """The stage's plan for ``day`` and its lineage inputs."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
        c = self.cfg
        vid = c.version_id(stage, day)
        end = day_ts(day)
        if stage == "tpm":
            t = c.tpm
            model = c.model.model_copy(update={"fields": t.fields, "use_dense": False, "embedding_dim": t.embedding_dim,
                                               "hidden": t.hidden, "tower": "mlp"})
            window = (end - t.window_days * DAY, end)
            plan = StagePlan(stage, day, vid, self._train_cfg(model, t.train, self.organic), window, self.organic)
            return plan, {"month": month_of(day)}
        section = c.cpm if stage == "cpm" else c.actr
        domains = self.organic if stage == "cpm" else self.ad
        window = (end - section.window_days * DAY, end)
        optim = c.actr.optim if stage == "actr" else None
        plan = StagePlan(stage, day, vid, self._train_cfg(c.model, section.train, domains, optim), window, domains)
        inputs: dict = {}
        if c.actr.use_tpm:
            months, versions = self.tpm_months(day)
            plan.history, plan.tpm_months, plan.embeddings = self._history(), months, self.embeddings.root
            inputs.update(tpm_months=months, tpm_versions=versions)
        if stage == "actr":
            plan.min_eval_rows = c.actr.min_eval_rows
            if evaluate_next_day:
                plan.evaluate = (end, end + DAY)
            if c.actr.init_from_cpm:
                cpm = self.latest_cpm(day)
                if cpm is None:
                    raise ValueError(f"no CPM version at or before {day} for this config: run "
                                     f"`mdctr pipeline run cpm --date {day} --config ...` first")
                state = ckpt.read_state(Path(cpm.path) / "checkpoints")
                plan.init_from = ckpt.epoch_dir(Path(cpm.path) / "checkpoints", state.best_epoch)
                plan.init_exclude = list(c.actr.init_exclude)
                inputs["cpm"] = cpm.version_id
            else:
                inputs["cpm"] = None
        return plan, inputs

    # -- running --------------------------------------------------------------------------
    def run(self, stage: str, day: date, *, evaluate_next_day: bool = False,
            verbose: bool = True) -> tuple[VersionRecord, bool]:
        """Run ``stage`` for ``day`` unless its version exists. Returns (record, created)."""
        vid = self.cfg.version_id(stage, day)
        done = self.lineage.get(vid)
        if done is not None and Path(done.path).is_dir():
            return done, False
        final = self.version_dir(vid)
        if (final / "stage.json").exists():  # committed, but the lineage insert was lost
            return self._record(final), False
        plan, inputs = self.plan(stage, day, evaluate_next_day=evaluate_next_day)
        plan.verbose = verbose
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{vid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            launch(_stage_worker, self.cfg.world_size, plan, tmp)
            summary = ckpt.read_state(tmp / "checkpoints")
            metrics = _read_json(tmp / "metrics.json")
            if stage == "tpm":
                self._snapshot(plan, tmp, inputs)
            for d in (tmp / "checkpoints").glob("epoch-*"):  # the version keeps its model only
                if d.name != ckpt.epoch_dir(tmp, summary.best_epoch).name:
                    shutil.rmtree(d)
            rec = VersionRecord(vid, stage, day.isoformat(), self.cfg.stage_hash(stage),
                                _iso(plan.window[0]), _iso(plan.window[1]), metrics.get("train_rows"), inputs,
                                metrics, str(final.resolve()))
            write_json(rec.to_dict(), tmp / "stage.json")
            try:
                tmp.rename(final)
            except OSError:  # a concurrent run committed the same version first
                shutil.rmtree(tmp, ignore_errors=True)
                return self._record(final), False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if stage == "tpm":
            self.embeddings.gc(keep=self.cfg.tpm.keep)
        stored = self.lineage.record(rec)
        if plan.evaluate is not None:
            self.lineage.set_evaluation(vid, "next_day", (_iso(plan.evaluate[0]), _iso(plan.evaluate[1])),
                                        metrics["next_day"])
        return stored, True

    def _record(self, final: Path) -> VersionRecord:
        raw = _read_json(final / "stage.json")
        return self.lineage.record(VersionRecord(**raw))

    def _snapshot(self, plan: StagePlan, run: Path, inputs: dict) -> None:
        """Write the TPM's user and item embeddings (ids seen in its window) to the store."""
        t = self.cfg.tpm
        layout = feature_layout(self.spec, plan.train_cfg.model, Baseline.shared)
        state = ckpt.read_state(run / "checkpoints")
        keys = {f: f"ebc.embedding_bags.t_{f}.weight" for f in (t.user_field, t.item_field)}
        weights = _load_state_dict_from_keys({f"model.{k}" for k in keys.values()},
                                             checkpoint_id=str(ckpt.epoch_dir(run / "checkpoints", state.best_epoch)))["model"]
        tables = {}
        for entity, f in (("user", t.user_field), ("item", t.item_field)):
            ids = window_ids(self.data_dir, f, plan.window, plan.domains)
            weight = weights[keys[f]].float().numpy()
            tables[entity] = (ids, weight[table_rows(ids, layout.rows[f])])
        self.embeddings.write(inputs["month"], tables, {"version_id": plan.version_id, "window": [
            _iso(plan.window[0]), _iso(plan.window[1])]})
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


def _iso(ts: int) -> str:
    return (date(1970, 1, 1) + timedelta(seconds=ts)).isoformat()


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _stage_worker(rank: int, world_size: int, plan: StagePlan, out: Path) -> None:
    """Train one stage's model on this rank; rank 0 writes ``config.yaml``, ``metrics.json``
    (and ``next_day.parquet`` when the plan evaluates) and ``train.log``."""
    setup_logging(out, rank)
    try:
        _train_stage(rank, world_size, plan, out)
    finally:
        close_log_files()


def _train_stage(rank: int, world_size: int, plan: StagePlan, out: Path) -> None:
    if not plan.verbose:
        for h in logging.getLogger("mdctr").handlers:
            if not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    device, _ = select_device(rank)
    cfg = plan.train_cfg
    data_dir = Path(cfg.data)
    spec = load_spec(data_dir)
    layout = feature_layout(spec, cfg.model, cfg.baseline)
    transform = None
    torch.manual_seed(cfg.train.seed)  # the dense layers' initialisation
    if plan.history is not None:
        model = HistoryCTRModel(layout, cfg.model, plan.history, seed=cfg.train.seed)
        reader = layout.reader(data_dir, raw_fields=list(plan.history.entities.values()))
        transform = SnapshotJoin(EmbeddingStore(plan.embeddings), plan.tpm_months, plan.history, layout.dense_dim)
    else:
        model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
        reader = layout.reader(data_dir)
    trainer = Trainer(cfg, reader, layout, out / "checkpoints", rank=rank, world_size=world_size, device=device,
                      model=model, window=plan.window, transform=transform, progress=False,
                      train_split="train" if cfg.train.validation else None)
    if plan.init_from is not None:
        ckpt.load(trainer.model, None, plan.init_from,
                  exclude=lambda name: any(p in name for p in plan.init_exclude))
    state = trainer.fit()
    train_rows = reader.num_rows(trainer.train_split, domains=plan.domains, ts_range=plan.window,
                                 split_seed=cfg.train.split_seed)
    best = next(h for h in state.history if h["epoch"] == state.best_epoch)
    metrics = {"train_rows": train_rows, "best_epoch": state.best_epoch, "valid_auc": best["valid_auc"],
               "valid_wauc": best["valid_wauc"], "train_loss": best["train_loss"]}
    if plan.evaluate is not None:
        logits, labels, domain, _ = trainer.predict(None, window=plan.evaluate)
        if rank == 0:
            pq.write_table(pa.table({"logit": logits.numpy(), "label": labels.numpy()}), out / "next_day.parquet")
            metrics["next_day"] = next_day_metrics(logits, labels, domain, spec.domain_names, plan.min_eval_rows)
    if rank == 0:
        save_train_config(cfg, out / "config.yaml")
        save_spec(spec, out)
        write_json(metrics, out / "metrics.json")


def next_day_metrics(logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor, names: list[str],
                     min_rows: int) -> dict:
    """AUC and log loss of one evaluation day (AUC None when it has fewer than ``min_rows``
    rows or a single class)."""
    n = int(labels.numel())
    if n < min_rows or labels.min() == labels.max():
        return {"n": n, "auc": None, "logloss": None}
    m = compute_metrics(logits, labels, domain, names, split="next_day")
    return {"n": n, "auc": m["auc"], "logloss": m["logloss"]}

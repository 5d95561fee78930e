"""Typed config of the tri-level transfer pipeline (``configs/*_cadence.yaml``).

Example (``configs/movielens_ads_cadence.yaml``)::

    data: movielens-100k:ads        # organic and ad domains, overlapping users
    store: runs/cadence/movielens-ads
    model: {tower: mlp, embedding_dim: 16, hidden: [256, 128]}   # CPM and A-CTR network
    tpm:  {window_days: 182, keep: 3, fields: [user_id, item_id, genres]}
    cpm:  {window_days: 30, weekday: 0}
    actr: {window_days: 1, init_from_cpm: true, use_tpm: true}

Each stage's version id is ``STAGE-DATE-HASH`` where HASH covers exactly the settings that
change that stage's artifact (the data, its own section, and what it consumes; the stage
registry, :mod:`mdctr.orchestration.stages`, says which), so re-running a stage for a date
with the same settings finds the same version.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mdctr.core.config import StrictModel, load_model
from mdctr.platform.config import ModelConfig, OptimConfig, ResourcesConfig, TrainLoopConfig


class TPMConfig(StrictModel):
    """Tiny pretrain model: few id features, long organic window, monthly snapshots."""

    #: days of organic data before the run date
    window_days: int = Field(default=182, ge=1)
    #: the fields the tiny model embeds (user, item and a category field)
    fields: list[str] = ["user_id", "item_id", "genres"]
    user_field: str = "user_id"
    item_field: str = "item_id"
    embedding_dim: int = Field(default=16, ge=1)
    hidden: list[int] = [64]
    #: snapshots kept in the store (older ones are garbage-collected) and fed to A-CTR
    keep: int = Field(default=3, ge=1)
    attention_heads: int = Field(default=2, ge=1)
    train: TrainLoopConfig = TrainLoopConfig(epochs=4, batch_size=1024, patience=1)

    @model_validator(mode="after")
    def _ids(self) -> "TPMConfig":
        for f in (self.user_field, self.item_field):
            if f not in self.fields:
                raise ValueError(f"tpm.fields must include '{f}'")
        if self.embedding_dim % self.attention_heads:
            raise ValueError("tpm.embedding_dim must be divisible by tpm.attention_heads")
        return self


class CPMConfig(StrictModel):
    """Complete pretrain model: the ad model's network on a short organic window, weekly."""

    window_days: int = Field(default=30, ge=1)
    #: the weekday (0 = Monday) of the weekly run
    weekday: int = Field(default=0, ge=0, le=6)
    train: TrainLoopConfig = TrainLoopConfig(epochs=4, batch_size=1024, patience=1)


class ACTRConfig(StrictModel):
    """The ad model, fine-tuned daily on the recent ad window."""

    window_days: int = Field(default=1, ge=1)
    #: start from the latest CPM at or before the date (else from scratch)
    init_from_cpm: bool = True
    #: feed the user's and item's last ``tpm.keep`` TPM snapshots to the tower
    use_tpm: bool = True
    #: model entries not taken from the CPM (substrings of their names): the output head
    #: (the CPM's is the organic domains' head), per-domain adapters and normalisation
    #: statistics (benchmarks/transfer_ablation.py)
    init_exclude: list[str] = [".head.", "lora_", "running_mean", "running_var", "num_batches_tracked"]
    train: TrainLoopConfig = TrainLoopConfig(epochs=2, batch_size=256, validation=False)
    #: the fine-tuning optimizer (default: the config's ``optim``)
    optim: OptimConfig | None = None
    #: next-day evaluation: days with fewer rows (or one class) get no AUC
    min_eval_rows: int = Field(default=20, ge=2)


class ScheduleConfig(StrictModel):
    """When an optional stage runs: every day, every week on ``weekday`` (0 = Monday) or on
    the first of every month."""

    every: Literal["day", "week", "month"] = "week"
    weekday: int = Field(default=0, ge=0, le=6)


class LabelsStageConfig(StrictModel):
    """Teacher labelling as a stage: the teacher run labels the rows of the last
    ``window_days`` before the date into the teacher-label store, once per schedule."""

    #: the teacher's run directory (any finished run)
    teacher: str
    #: the teacher-label store (default ``STORE/labels``)
    store: str | None = None
    window_days: int = Field(default=30, ge=1)
    #: label only these domains (default: every domain)
    domains: list[str] | None = None
    schedule: ScheduleConfig = ScheduleConfig()


class FinetuneStageConfig(StrictModel):
    """Adapter onboarding as a stage: ``domain``'s adapter is trained on the frozen latest
    ``base`` version (A-CTR or CPM) with the rows before the date."""

    domain: str
    base: Literal["cpm", "actr"] = "actr"
    rows: Literal["all", "cold", "none"] = "all"
    epochs: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    schedule: ScheduleConfig = ScheduleConfig(every="day")


class GateConfig(StrictModel):
    """The promotion gate of new A-CTR versions (:mod:`mdctr.orchestration.cadence.gate`).

    A candidate and the serving version are scored on the same rows: the ad rows of the
    ``days`` days before the earlier of their training windows (rows neither trained on).
    The candidate is promoted unless its AUC is lower than the serving version's by more than
    ``max_auc_drop`` or its log loss higher by more than ``max_logloss_rise``; with fewer than
    ``min_rows`` rows (or one class) nothing can be compared and it is gated."""

    enabled: bool = True
    days: int = Field(default=7, ge=1)
    min_rows: int = Field(default=20, ge=2)
    max_auc_drop: float = Field(default=0.005, ge=0)
    max_logloss_rise: float = Field(default=0.01, ge=0)


class CadenceConfig(StrictModel):
    """The scheduled cadence (``mdctr cadence tick``): from ``start`` on, every run the due
    rules name is submitted once, retried on failure, and A-CTR versions pass the gate."""

    #: the first day the cadence is responsible for (a first tick never runs anything before it)
    start: date
    #: a tick that would catch up more days than this needs ``--backfill``
    max_catchup_days: int = Field(default=14, ge=1)
    #: attempts of a run before it is marked failed
    max_attempts: int = Field(default=3, ge=1)
    #: wait before the second attempt (doubled for every further one), seconds
    retry_backoff_s: float = Field(default=60.0, ge=0)
    #: runs in flight at once
    max_parallel: int = Field(default=1, ge=1)
    #: seconds between polls of running jobs
    poll_s: float = Field(default=2.0, gt=0)
    #: a tick lock without a heartbeat for this long is taken over (its holder is gone)
    lock_lease_s: float = Field(default=900.0, gt=0)
    gate: GateConfig = GateConfig()


class PipelineConfig(StrictModel):
    data: str
    #: where versions, snapshots and lineage live
    store: str
    #: lineage database URL (SQLAlchemy); default ``sqlite:///STORE/lineage.sqlite``
    lineage_url: str | None = None
    #: domains of each role (default: by the roles in dataset.yaml)
    organic_domains: list[str] | None = None
    ad_domains: list[str] | None = None
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    tpm: TPMConfig = TPMConfig()
    cpm: CPMConfig = CPMConfig()
    actr: ACTRConfig = ACTRConfig()
    labels: LabelsStageConfig | None = None
    finetune: FinetuneStageConfig | None = None
    seed: int = Field(default=0, ge=0)
    world_size: int = Field(default=1, ge=1)
    #: where the training stages' ranks run (``workers`` > 1: Ray Train; not in any hash)
    resources: ResourcesConfig = ResourcesConfig()
    #: the scheduled cadence (``mdctr cadence``; not in any hash)
    cadence: CadenceConfig | None = None

    @model_validator(mode="after")
    def _stage_windows(self) -> "PipelineConfig":
        for name in ("tpm", "cpm", "actr"):
            if getattr(self, name).train.window is not None:
                raise ValueError(f"{name}.train.window: a stage's rows are its window_days before the date")
        return self


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    return load_model(path, PipelineConfig)

"""The pipeline's stages: a registry (:mod:`.registry`) with one entry per stage (TPM, CPM,
A-CTR in :mod:`.training`; teacher labelling and adapter onboarding in :mod:`.onboarding`),
and :class:`Pipeline`, which runs a stage for a date into a versioned store with lineage."""

# importing the entries registers them, in this order: tpm, cpm, actr, labels, finetune
from mdctr.orchestration.stages import training  # noqa: F401  isort: skip
from mdctr.orchestration.stages import onboarding  # noqa: F401  isort: skip
from mdctr.orchestration.stages.pipeline import Pipeline
from mdctr.orchestration.stages.registry import (
    STAGES, DueRule, Stage, StageRun, get_stage, schedule_order, stage_hash, version_id,
)
from mdctr.orchestration.stages.training import next_day_metrics, window_ids

__all__ = ["STAGES", "DueRule", "Pipeline", "Stage", "StageRun", "get_stage", "next_day_metrics", "schedule_order",
           "stage_hash", "version_id", "window_ids"]

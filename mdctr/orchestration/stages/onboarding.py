"""Stages around the models: teacher labelling (``labels``) and adapter onboarding
(``finetune``), so a cadence schedules them like the training stages.

- **labels**: the teacher run named in ``labels.teacher`` labels the rows of the last
  ``labels.window_days`` before D once, into the teacher-label store (``labels.store``,
  default ``STORE/labels``). Its version hash covers the teacher's identity (run id and
  best epoch), so a newer teacher run makes a new version due.
- **finetune**: ``finetune.domain``'s adapter trained on the frozen latest ``finetune.base``
  version (A-CTR by default) at or before D, with the rows before D; the version directory
  is the adapter directory.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from mdctr.core.errors import ArtifactError
from mdctr.core.timeutil import DAY, day_ts
from mdctr.orchestration.config import PipelineConfig
from mdctr.orchestration.stages.registry import DueRule, Stage, StageRun, register
from mdctr.platform.rundir import RunDir


def _labels_store(pipe) -> Path:
    c = pipe.cfg.labels
    return Path(c.store) if c.store is not None else pipe.root / "labels"


def _run_labels(pipe, day: date, out: Path, vid: str, *, evaluate_next_day: bool = False,
                verbose: bool = True) -> StageRun:
    from mdctr.platform.labelling import write_labels

    c = pipe.cfg.labels
    end = day_ts(day)
    window = (end - c.window_days * DAY, end)
    version = write_labels(c.teacher, pipe.data_dir, store=_labels_store(pipe), split=None, window=window,
                           domains=c.domains)
    inputs = {"labels_version": version.name, "store": str(_labels_store(pipe).resolve()),
              "teacher_run_id": version.meta["teacher_run_id"]}
    return StageRun(window, version.meta["rows"], inputs, {"rows": version.meta["rows"]})


def _teacher_parts(cfg: PipelineConfig) -> dict:
    from mdctr.platform.run import run_identity

    return {"labels": cfg.labels.model_dump(mode="json"), "teacher": run_identity(cfg.labels.teacher)}


register(Stage(
    name="labels", section="labels", summary="teacher labelling: the teacher labels recent rows once",
    due=lambda cfg: DueRule(cfg.labels.schedule.every, cfg.labels.schedule.weekday),
    inputs=lambda cfg: (),
    hash_parts=_teacher_parts,
    enabled=lambda cfg: cfg.labels is not None,
    run=_run_labels,
))


def _run_finetune(pipe, day: date, out: Path, vid: str, *, evaluate_next_day: bool = False,
                  verbose: bool = True) -> StageRun:
    from mdctr.adapters.onboard import finetune

    c = pipe.cfg.finetune
    base = pipe.latest(c.base, day)
    if base is None:
        raise ArtifactError(f"no {c.base} version at or before {day} for this config: run "
                            f"`mdctr pipeline run {c.base} --date {day} --config ...` first", file=pipe.root)
    end = day_ts(day)
    meta = finetune(RunDir(base.path).path, c.domain, pipe.data_dir, out, epochs=c.epochs, lr=c.lr, rows=c.rows,
                    window=(None, end), overwrite=True)
    metrics = meta["metrics"]["domains"].get(c.domain, {})
    start = int(pipe.spec.time_range[0]) if pipe.spec.time_range else 0
    return StageRun((start, end), None, {c.base: base.version_id},
                    {"auc": metrics.get("auc"), "parameters": meta["parameters"], "epochs": meta["epochs"]})


register(Stage(
    name="finetune", section="finetune", summary="adapter onboarding: a domain's adapter on the latest base version",
    due=lambda cfg: DueRule(cfg.finetune.schedule.every, cfg.finetune.schedule.weekday),
    inputs=lambda cfg: (cfg.finetune.base,),
    hash_parts=lambda cfg: {"finetune": cfg.finetune.model_dump(mode="json")},
    enabled=lambda cfg: cfg.finetune is not None,
    run=_run_finetune,
    files=("adapter.json", "adapter.safetensors"),
))

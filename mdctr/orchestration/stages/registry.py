"""The stage registry: every stage a pipeline can run, and what each one declares.

A :class:`Stage` says which config section holds its settings, what its version hash
covers, when it is due (:class:`DueRule`), which other stages' versions it consumes, and
how it runs for a date (it builds a :class:`~mdctr.platform.job.Job` and launches it, or
calls a library function that does). ``replay`` and the cadence read due rules and inputs
from here; nothing else lists stages by name.

>>> from datetime import date
>>> DueRule("week", weekday=0).due(date(1998, 3, 2)), DueRule("month").due(date(1998, 3, 2))
(True, False)
>>> DueRule("week", weekday=0).last_due(date(1998, 3, 4))
datetime.date(1998, 3, 2)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mdctr.core.errors import ConfigError
from mdctr.orchestration.config import PipelineConfig

if TYPE_CHECKING:
    from mdctr.orchestration.stages.pipeline import Pipeline


@dataclass(frozen=True)
class DueRule:
    """The dates a stage runs on: every day, every week on ``weekday`` (0 = Monday), or on
    the first of every month."""

    every: Literal["day", "week", "month"]
    weekday: int = 0

    def due(self, day: date) -> bool:
        if self.every == "day":
            return True
        if self.every == "week":
            return day.weekday() == self.weekday
        return day.day == 1

    def last_due(self, day: date) -> date:
        """The latest due date at or before ``day``."""
        if self.every == "day":
            return day
        if self.every == "week":
            return day - timedelta(days=(day.weekday() - self.weekday) % 7)
        return day.replace(day=1)


@dataclass
class StageRun:
    """What a stage's run for a date leaves besides its files (recorded in the lineage)."""

    window: tuple[int, int] | None
    rows: int | None
    inputs: dict
    metrics: dict
    #: evaluations to record: name -> (window, metrics)
    evaluations: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One entry of the registry.

    Args:
        name: the stage's name (``mdctr pipeline run NAME``) and version-id prefix.
        section: the :class:`PipelineConfig` attribute holding its settings.
        summary: one line for ``--help`` and listings.
        due: its due rule for a config.
        inputs: the stages whose versions it consumes, for a config (in this order).
        hash_parts: the settings its artifact depends on, besides the data, seed and the
            hashes of its inputs (added by :func:`stage_hash`).
        enabled: whether a scheduled pipeline (replay, cadence) runs it for a config.
        run: ``run(pipeline, day, out_dir, version_id, evaluate_next_day=, verbose=) ->
            StageRun``: train (or label, or fine-tune) into ``out_dir``, which becomes the
            version directory ``version_id``.
        available: whether a usable version exists for ``day`` (default: any version of this
            config at or before it); a scheduled pipeline runs an input stage that has none.
        after_commit: housekeeping once the version is committed (e.g. snapshot gc).
        window: for training stages, ``window(pipeline, day) -> ((lo, hi), domains)``: the
            rows it trains on (the pipeline refuses an empty one before anything is written).
        files: what its version directory holds besides ``stage.json`` (a version with
            ``run.json`` must also be a run directory whose best checkpoint is intact).
    """

    name: str
    section: str
    summary: str
    due: Callable[[PipelineConfig], DueRule]
    inputs: Callable[[PipelineConfig], tuple[str, ...]]
    hash_parts: Callable[[PipelineConfig], dict]
    enabled: Callable[[PipelineConfig], bool]
    run: Callable[..., StageRun]
    available: Callable[["Pipeline", date], bool] | None = None
    after_commit: Callable[["Pipeline"], None] | None = None
    window: Callable[["Pipeline", date], tuple[tuple[int, int], list[str]]] | None = None
    files: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is registered twice")
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r} (expected one of {', '.join(STAGES)})")
    return STAGES[name]


def stage_hash(cfg: PipelineConfig, name: str) -> str:
    """Hash of the settings that determine ``name``'s artifacts: the data, seed, organic
    domains, the stage's own ``hash_parts`` and the hashes of the stages it consumes."""
    stage = get_stage(name)
    parts: dict = {"data": cfg.data, "seed": cfg.seed, "organic": cfg.organic_domains}
    parts.update(stage.hash_parts(cfg))
    for dep in stage.inputs(cfg):
        parts[dep] = stage_hash(cfg, dep)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def version_id(cfg: PipelineConfig, name: str, day: date) -> str:
    return f"{name}-{day.isoformat()}-{stage_hash(cfg, name)}"


def schedule_order(cfg: PipelineConfig) -> list[Stage]:
    """The enabled stages, every stage after the stages it consumes."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"stage inputs form a cycle: {' -> '.join(path + (name,))}")
        for dep in get_stage(name).inputs(cfg):
            visit(dep, path + (name,))
        order.append(name)

    for name, stage in STAGES.items():
        if stage.enabled(cfg):
            visit(name, ())
    return [STAGES[n] for n in order]


def store_path(cfg: PipelineConfig, relative: str) -> Path:
    return Path(cfg.store) / relative

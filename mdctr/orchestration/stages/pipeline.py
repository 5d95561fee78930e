"""A pipeline config's store, lineage and stage runs (``mdctr pipeline run``).

A stage run for date D reads rows with ``ts`` before D only. Layout under the config's
``store``::

    lineage.sqlite                 versions and their inputs (:mod:`mdctr.orchestration.lineage`)
    embeddings/tpm-HASH/           TPM snapshots (:class:`EmbeddingStore`), last K months
    labels/                        the teacher-label store of the ``labels`` stage (default)
    versions/STAGE-DATE-HASH/      one directory per version, complete or absent: a run
                                   directory (:mod:`mdctr.platform.rundir`: run.json,
                                   config.yaml, dataset.yaml, checkpoints/ with the best
                                   epoch only, metrics.json) or the stage's other artifact,
                                   plus stage.json (the lineage record)

Re-running a stage for a date whose version is recorded returns that version untouched.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

from mdctr.core.errors import ArtifactError, DataContractError
from mdctr.core.io import commit_dir, temp_sibling, write_json
from mdctr.core.timeutil import iso_day
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import Role
from mdctr.domains.validate import validate_dataset
from mdctr.orchestration.config import PipelineConfig
from mdctr.orchestration.lineage import Lineage, VersionRecord
from mdctr.orchestration.stages.registry import get_stage, schedule_order, stage_hash, version_id
from mdctr.platform.config import Baseline, ModelConfig
from mdctr.platform.model import feature_layout
from mdctr.platform.stores.embeddings import EmbeddingStore


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
        try:  # field names checked before any work
            feature_layout(self.spec, cfg.model, Baseline.shared)
            feature_layout(self.spec, ModelConfig(fields=cfg.tpm.fields), Baseline.shared)
        except ValueError as exc:
            raise DataContractError(str(exc), file=self.data_dir / "dataset.yaml") from None
        if cfg.finetune is not None and cfg.finetune.domain not in names:
            raise DataContractError(f"finetune.domain names '{cfg.finetune.domain}', which the data lacks "
                                    f"(has {names})", file=self.data_dir / "dataset.yaml")
        self.root = Path(cfg.store)
        self.lineage = Lineage(cfg.lineage_url or f"sqlite:///{(self.root / 'lineage.sqlite').resolve()}")
        self.embeddings = EmbeddingStore(self.root / "embeddings" / f"tpm-{self.stage_hash('tpm')}")

    # -- versions and inputs ----------------------------------------------------------------
    def stage_hash(self, stage: str) -> str:
        return stage_hash(self.cfg, stage)

    def version_id(self, stage: str, day: date) -> str:
        return version_id(self.cfg, stage, day)

    def version_dir(self, version_id: str) -> Path:
        return self.root / "versions" / version_id

    def latest(self, stage: str, day: date) -> VersionRecord | None:
        """The newest version of ``stage`` for this config dated at or before ``day``."""
        found = self.lineage.list(stage, config_hash=self.stage_hash(stage), at_or_before=day.isoformat())
        return found[-1] if found else None

    def latest_cpm(self, day: date) -> VersionRecord | None:
        return self.latest("cpm", day)

    def tpm_months(self, day: date) -> tuple[list[str], list[str]]:
        """The last K snapshot months usable on ``day`` and the TPM versions that wrote them:
        snapshots of TPM runs dated on or before ``day`` only."""
        by_month: dict[str, VersionRecord] = {}
        for rec in self.lineage.list("tpm", config_hash=self.stage_hash("tpm"), at_or_before=day.isoformat()):
            by_month[rec.inputs["month"]] = rec  # the latest run of each month wins
        stored = {v.name: v.meta.get("version_id") for v in self.embeddings.versions.versions()}
        usable = [(month, rec.version_id) for month, rec in sorted(by_month.items())
                  if stored.get(month) == rec.version_id]
        usable = usable[-self.cfg.tpm.keep:]
        return [m for m, _ in usable], [v for _, v in usable]

    def available(self, stage: str, day: date) -> bool:
        """Whether a usable version of ``stage`` exists for ``day``."""
        entry = get_stage(stage)
        if entry.available is not None:
            return entry.available(self, day)
        return self.latest(stage, day) is not None

    def due(self, day: date) -> list[str]:
        """The stages a schedule runs on ``day``, inputs first: every enabled stage whose due
        rule falls on ``day``, and every input of those that has no usable version yet."""
        order = schedule_order(self.cfg)
        wanted = {s.name for s in order if s.due(self.cfg).due(day)}
        for stage in reversed(order):  # consumers come after their inputs
            if stage.name in wanted:
                wanted.update(dep for dep in stage.inputs(self.cfg) if not self.available(dep, day))
        return [s.name for s in order if s.name in wanted]

    # -- running --------------------------------------------------------------------------
    def run(self, stage: str, day: date, *, evaluate_next_day: bool = False,
            verbose: bool = True) -> tuple[VersionRecord, bool]:
        """Run ``stage`` for ``day`` unless its version exists. Returns (record, created)."""
        entry = get_stage(stage)
        vid = self.version_id(stage, day)
        done = self.lineage.get(vid)
        if done is not None and Path(done.path).is_dir():
            return done, False
        final = self.version_dir(vid)
        if (final / "stage.json").exists():  # committed, but the lineage insert was lost
            return self._record(final), False
        tmp = temp_sibling(final)
        try:
            result = entry.run(self, day, tmp, vid, evaluate_next_day=evaluate_next_day, verbose=verbose)
            window = result.window
            rec = VersionRecord(vid, stage, day.isoformat(), self.stage_hash(stage),
                                None if window is None else iso_day(window[0]),
                                None if window is None else iso_day(window[1]), result.rows, result.inputs,
                                result.metrics, str(final.resolve()))
            write_json(rec.to_dict(), tmp / "stage.json")
            if not commit_dir(tmp, final):  # a concurrent run committed the same version first
                return self._record(final), False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if entry.after_commit is not None:
            entry.after_commit(self)
        stored = self.lineage.record(rec)
        for name, (ev_window, metrics) in result.evaluations.items():
            self.lineage.set_evaluation(vid, name, (iso_day(ev_window[0]), iso_day(ev_window[1])), metrics)
        return stored, True

    def _record(self, final: Path) -> VersionRecord:
        try:
            raw = json.loads((final / "stage.json").read_text())
            return self.lineage.record(VersionRecord(**raw))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"unreadable stage.json ({exc.__class__.__name__})", file=final / "stage.json") from None

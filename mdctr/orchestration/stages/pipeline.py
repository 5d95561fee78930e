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

Re-running a stage for a date whose version is recorded returns that version untouched,
if it is complete and intact: a run directory's best checkpoint matches its checksums, other
versions have ``stage.json`` and the files their registry entry names. A damaged version
is refused with one line naming its directory (remove the directory to run the stage again;
a recorded version whose directory is gone is run again). A training stage whose window has
no rows fails without committing a version or a lineage row. Lineage stores version paths
relative to the store (a copied store reads its own versions).
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

from mdctr.core.errors import ArtifactError, ConfigError, DataContractError, InputError
from mdctr.core.io import commit_dir, temp_sibling, write_json
from mdctr.core.timeutil import iso_day
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import Role
from mdctr.domains.validate import validate_dataset
from mdctr.orchestration.config import PipelineConfig
from mdctr.orchestration.lineage import Lineage, VersionRecord
from mdctr.orchestration.stages.registry import get_stage, schedule_order, stage_hash, version_id
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.config import Baseline, ModelConfig
from mdctr.platform.launcher import Launcher
from mdctr.platform.model import feature_layout
from mdctr.platform.rundir import RUN_FILE, RunDir
from mdctr.platform.stores.embeddings import EmbeddingStore


class Pipeline:
    """One pipeline config's stages, store and lineage."""

    def __init__(self, cfg: PipelineConfig, launcher: Launcher | None = None):
        self.cfg = cfg
        #: where the training stages (tpm, cpm, actr) run their ranks (default: this machine)
        self.launcher = launcher
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
        self.lineage = Lineage(cfg.lineage_url or f"sqlite:///{(self.root / 'lineage.sqlite').resolve()}",
                               root=self.root)
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

    def months_in_use(self) -> set[str]:
        """The TPM snapshot months the serving A-CTR version reads (the cadence's serving
        pointer): snapshot gc keeps them while it serves."""
        from mdctr.orchestration.cadence.state import CadenceState

        serving = CadenceState(self.lineage).serving()
        rec = self.lineage.get(serving) if serving is not None else None
        return set(rec.inputs.get("tpm_months", [])) if rec is not None else set()

    def available(self, stage: str, day: date) -> bool:
        """Whether a usable version of ``stage`` exists for ``day``."""
        entry = get_stage(stage)
        if entry.available is not None:
            return entry.available(self, day)
        return self.latest(stage, day) is not None

    def due(self, day: date) -> list[str]:
        """The stages a schedule runs on ``day``, inputs first: every enabled stage whose due
        rule falls on ``day``, and every input of those that has no usable version yet."""
        return self.with_inputs([s.name for s in schedule_order(self.cfg) if s.due(self.cfg).due(day)], day)

    def with_inputs(self, stages: list[str], day: date) -> list[str]:
        """``stages`` and, inputs first, every input of theirs (recursively) that has no
        usable version for ``day``, in schedule order."""
        order = schedule_order(self.cfg)
        wanted = set(stages)
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
        final = self.version_dir(vid)
        done = self.lineage.get(vid)
        if done is not None and Path(done.path).is_dir():
            self.check_version(stage, Path(done.path))
            return done, False
        if (final / "stage.json").exists():  # committed, but the lineage insert was lost
            self.check_version(stage, final)
            return self._record(final), False
        self._check_window(stage, day)
        made = [d for d in (self.root, final.parent) if not d.exists()]  # removed again if nothing is committed
        tmp = temp_sibling(final)
        try:
            result = entry.run(self, day, tmp, vid, evaluate_next_day=evaluate_next_day, verbose=verbose)
            window = result.window
            if result.rows == 0:  # trained on nothing (e.g. a window with valid rows only): no version
                raise self._empty(stage, day, window)
            rec = VersionRecord(vid, stage, day.isoformat(), self.stage_hash(stage),
                                None if window is None else iso_day(window[0]),
                                None if window is None else iso_day(window[1]), result.rows, result.inputs,
                                result.metrics, final.relative_to(self.root).as_posix())
            write_json(rec.to_dict(), tmp / "stage.json")
            if not commit_dir(tmp, final):  # a concurrent run committed the same version first
                self.check_version(stage, final)
                return self._record(final), False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in reversed(made):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise
        if entry.after_commit is not None:
            entry.after_commit(self)
        stored = self.lineage.record(rec)
        for name, (ev_window, metrics) in result.evaluations.items():
            self.lineage.set_evaluation(vid, name, (iso_day(ev_window[0]), iso_day(ev_window[1])), metrics)
        return stored, True


    def window_rows(self, window: tuple[int, int], domains: list[str]) -> int:
        """Rows of ``domains`` with ``window[0] <= ts < window[1]`` (row-group statistics
        skip the row groups outside the window)."""
        import pyarrow.dataset as ds

        data = ds.dataset([str(self.data_dir / f) for f in self.spec.files], format="parquet")
        keep = (ds.field("ts") >= window[0]) & (ds.field("ts") < window[1]) & ds.field("domain").isin(domains)
        return data.count_rows(filter=keep)

    def empty_window(self, stage: str, day: date) -> ConfigError | None:
        """The error of a training stage whose window for ``day`` has no rows, else None."""
        entry = get_stage(stage)
        if entry.window is None:
            return None
        window, domains = entry.window(self, day)
        return self._empty(stage, day, window) if self.window_rows(window, domains) == 0 else None

    def _check_window(self, stage: str, day: date) -> None:
        """A training stage whose window has no rows fails before anything is written
        (the TPM would otherwise replace its month's snapshot with an empty one)."""
        error = self.empty_window(stage, day)
        if error is not None:
            raise error

    def _empty(self, stage: str, day: date, window: tuple[int, int] | None) -> ConfigError:
        span = "" if window is None else f" {iso_day(window[0])}..{iso_day(window[1])}"
        return ConfigError(f"stage {stage} for {day}: its window{span} has no rows to train on", file=self.data_dir)

    def check_version(self, stage: str, path: Path) -> None:
        """Refuse a recorded version of ``stage`` at ``path`` that is incomplete or damaged."""
        problem = _damage(stage, path)
        if problem is not None:
            raise ArtifactError(f"damaged {stage} version ({problem}): remove this directory to run the stage "
                                f"for this date again", file=path)

    def _record(self, final: Path) -> VersionRecord:
        try:
            raw = json.loads((final / "stage.json").read_text())
            return self.lineage.record(VersionRecord(**raw))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"unreadable stage.json ({exc.__class__.__name__})", file=final / "stage.json") from None


def _damage(stage: str, path: Path) -> str | None:
    """What is wrong with a version directory (None if it is complete and intact)."""
    missing = [f for f in ("stage.json", *get_stage(stage).files) if not (path / f).is_file()]
    if missing:
        return f"no {missing[0]}"
    if (path / RUN_FILE).exists():
        try:
            run = RunDir(path)
            for unit in run.units:
                ckpt.verify_checksums(run.best_checkpoint(unit))
        except InputError as exc:  # not a run directory, no finished or intact checkpoint
            where = Path(exc.file) if exc.file else None
            text = str(exc).removeprefix(f"{exc.file}: ") if exc.file else str(exc)
            if where is not None and where != path and where.is_relative_to(path):
                return f"{where.relative_to(path)}: {text}"
            return text
        except (ValueError, TypeError, OSError) as exc:  # e.g. an unreadable checkpoints/state.json
            return f"unreadable checkpoint state ({exc.__class__.__name__})"
    return None

"""The promotion gate: a new A-CTR version serves only if it is not worse than the serving one.

Both versions are scored on the same rows, which neither of them trained on (an A-CTR trains
on its own window only; its CPM and TPM inputs train on organic rows): the ad rows of the
``gate.days`` days before the candidate's training window or, when the serving version's
window reaches into those days (it is the previous day's), of the ``gate.days`` days before
the serving version's window. So the rows stay recent however old the serving version is. The candidate passes
unless its AUC is lower than the serving version's by more than ``gate.max_auc_drop`` or its
log loss higher by more than ``gate.max_logloss_rise``. With fewer than ``gate.min_rows``
rows or a single class there is nothing to compare on and the candidate is gated; the first
version (nothing serves yet) is promoted as it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date

from mdctr.core.errors import InputError
from mdctr.core.io import scratch_dir
from mdctr.core.timeutil import DAY, day_ts, iso_day
from mdctr.domains.selection import Selection
from mdctr.orchestration.config import GateConfig
from mdctr.orchestration.lineage import VersionRecord
from mdctr.orchestration.stages.training import next_day_metrics
from mdctr.platform.launcher import resolve_launcher
from mdctr.platform.trainer import Predictions
from mdctr.platform.outputs import PredictionsOutput, read_predictions
from mdctr.platform.run import prediction_job
from mdctr.platform.rundir import RunDir


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metrics: dict


def gate_window(candidate: VersionRecord, serving: VersionRecord, days: int) -> tuple[int, int]:
    """``(lo, hi)`` timestamps of the gate's rows (see the module doc)."""
    hi = day_ts(date.fromisoformat(candidate.window_start or candidate.date))
    served_from = day_ts(date.fromisoformat(serving.window_start or serving.date))
    served_to = day_ts(date.fromisoformat(serving.window_end or serving.date))
    if served_to > hi - days * DAY:  # the serving version trained on some of those days
        hi = min(hi, served_from)
    return hi - days * DAY, hi


def predict_window(pipeline, version: VersionRecord, window: tuple[int, int]) -> Predictions:
    """``version``'s predictions of the ad rows in ``window`` (every split)."""
    run = RunDir(version.path)
    cfg = run.config
    selection = Selection(cfg.train.split_kind, cfg.train.split_seed, tuple(pipeline.ad), window)
    scratch = scratch_dir("gate")
    try:
        out = scratch / "predictions.parquet"
        job = prediction_job(run, pipeline.data_dir, None, PredictionsOutput(out, "eval"), selection=selection)
        resolve_launcher(None).launch(job)
        return read_predictions(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def score(pipeline, version: VersionRecord, window: tuple[int, int], min_rows: int) -> dict:
    """AUC and log loss (``n``, ``auc``, ``logloss``) of ``version`` on the ad rows in ``window``."""
    p = predict_window(pipeline, version, window)
    return next_day_metrics(p.logits, p.labels, p.domain, pipeline.spec.domain_names, min_rows)


def decide(pipeline, candidate: VersionRecord, serving: VersionRecord | None, cfg: GateConfig) -> Decision:
    """Whether ``candidate`` replaces ``serving`` (see the module doc)."""
    if serving is None:
        return Decision(True, "first serving version", {})
    window = gate_window(candidate, serving, cfg.days)
    new = score(pipeline, candidate, window, cfg.min_rows)
    try:
        old = score(pipeline, serving, window, cfg.min_rows)
    except InputError as exc:  # e.g. its TPM snapshots were removed before the pointer protected them
        return Decision(True, f"the serving version {serving.version_id} cannot be scored any more "
                              f"({' '.join(str(exc).split())[:200]})", {"candidate": new})
    metrics = {"window": [iso_day(window[0]), iso_day(window[1])], "candidate": new, "serving": old}
    if new["auc"] is None or old["auc"] is None:
        return Decision(False, f"gated: {new['n']} held-out rows (need {cfg.min_rows} and both classes)", metrics)
    auc_drop = old["auc"] - new["auc"]
    logloss_rise = new["logloss"] - old["logloss"]
    metrics.update(auc_drop=round(auc_drop, 6), logloss_rise=round(logloss_rise, 6))
    if auc_drop > cfg.max_auc_drop:
        return Decision(False, f"gated: AUC {new['auc']:.4f} vs serving {old['auc']:.4f} "
                               f"(drop {auc_drop:.4f} > {cfg.max_auc_drop})", metrics)
    if logloss_rise > cfg.max_logloss_rise:
        return Decision(False, f"gated: log loss {new['logloss']:.4f} vs serving {old['logloss']:.4f} "
                               f"(rise {logloss_rise:.4f} > {cfg.max_logloss_rise})", metrics)
    return Decision(True, f"passed the gate: AUC {new['auc']:.4f} vs {old['auc']:.4f}, "
                          f"log loss {new['logloss']:.4f} vs {old['logloss']:.4f} on {new['n']} rows", metrics)


"""Replay the cadence over historical data: the live cadence's own tick on a simulated clock.

For every day D from ``start`` to ``end`` (inclusive), one :meth:`Cadence.tick
<mdctr.orchestration.cadence.tick.Cadence.tick>` at D 06:00 UTC runs, in this process, what
the live schedule would run that morning: with the default config, TPM on the first of a
month, CPM on ``cpm.weekday``, A-CTR every day (inputs with no version yet run on the first
day), retries and the promotion gate included; the cadence state is recorded in the
lineage database as a live tick's is. Every A-CTR is evaluated on the next day: AUC and log
loss on the ad rows of D. A day whose A-CTR was skipped (no ad rows in its window) is scored
with the version serving then, as it would have served.

Stages whose version exists are not re-run (idempotent), so a replay can be resumed or
extended, and replays of config variants share the stages they have in common.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, time as clock, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from mdctr.core.errors import ConfigError
from mdctr.core.io import write_json
from mdctr.orchestration.stages import Pipeline
from mdctr.platform.metrics import compute_metrics

log = logging.getLogger("mdctr.pipeline")

#: the simulated time of day of every replayed tick (after the previous day's data landed)
REPLAY_HOUR = clock(6, 0)

COLUMNS = ["date", "actr_version", "cpm_version", "tpm_months", "train_rows", "next_day_rows", "next_day_auc",
           "next_day_logloss"]


@dataclass
class ReplayResult:
    rows: list[dict]
    mean_auc: float | None  # mean over days with an AUC
    pooled_auc: float | None  # AUC of every next-day prediction together
    seconds: float
    table: Path

    def summary(self) -> dict:
        days = [r for r in self.rows if r["next_day_auc"] is not None]
        return {"days": len(self.rows), "days_with_auc": len(days), "mean_next_day_auc": self.mean_auc,
                "pooled_next_day_auc": self.pooled_auc, "seconds": round(self.seconds, 1), "table": str(self.table)}


def calendar_days(start: date, end: date) -> list[date]:
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def replay(pipeline: Pipeline, start: date, end: date, *, out: str | Path | None = None,
           progress: bool = True) -> ReplayResult:
    """Tick the cadence every day from ``start`` to ``end`` (the config's ``cadence:``
    settings, started at ``start``) and write the per-day table (CSV) to ``out`` (default
    ``STORE/replay-START-END-HASH.csv``) plus a JSON summary next to it."""
    from mdctr.orchestration.cadence.executors import LocalExecutor
    from mdctr.orchestration.cadence.state import CadenceState
    from mdctr.orchestration.cadence.tick import Cadence
    from mdctr.orchestration.config import CadenceConfig

    settings = pipeline.cfg.cadence
    settings = CadenceConfig(start=start) if settings is None else settings.model_copy(update={"start": start})
    cadence = Cadence(pipeline, CadenceState(pipeline.lineage), LocalExecutor(pipeline), cadence=settings,
                      say=log.info)
    t0 = time.perf_counter()
    rows: list[dict] = []
    preds: list[tuple[np.ndarray, np.ndarray]] = []
    bar = tqdm(calendar_days(start, end), desc="replay", unit="day", disable=None if progress else True)
    for day in bar:
        ticked = cadence.tick(datetime.combine(day, REPLAY_HOUR, tzinfo=timezone.utc), backfill=True)
        run_id = pipeline.version_id("actr", day)
        rec = pipeline.lineage.get(run_id)
        if rec is None:
            rec, nd, pred = _serving_on(pipeline, cadence, run_id, day, ticked)
            train_rows = 0
        else:
            nd, train_rows = rec.metrics.get("next_day") or {}, rec.rows
            if "next_day" not in rec.metrics:
                log.warning("%s was created without a next-day evaluation (pipeline run without "
                            "--evaluate-next-day): no AUC for %s", rec.version_id, day)
            f = Path(rec.path) / "next_day.parquet"
            pred = None
            if f.exists():
                t = pq.read_table(f)
                pred = (t.column("logit").to_numpy(), t.column("label").to_numpy())
        if pred is not None:
            preds.append(pred)
        rows.append({"date": day.isoformat(), "actr_version": rec.version_id, "cpm_version": rec.inputs.get("cpm"),
                     "tpm_months": " ".join(rec.inputs.get("tpm_months", [])), "train_rows": train_rows,
                     "next_day_rows": nd.get("n"), "next_day_auc": nd.get("auc"), "next_day_logloss": nd.get("logloss")})
        if nd.get("auc") is not None:
            bar.set_postfix(auc=f"{nd['auc']:.3f}")
    aucs = [r["next_day_auc"] for r in rows if r["next_day_auc"] is not None]
    pooled = None
    if preds:
        logits = torch.from_numpy(np.concatenate([p[0] for p in preds]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in preds]))
        if labels.numel() and labels.min() != labels.max():
            pooled = compute_metrics(logits, labels, torch.zeros_like(labels, dtype=torch.long), ["all"],
                                     split="next_day")["auc"]
    out = Path(out) if out is not None else pipeline.root / f"replay-{start}-{end}-{pipeline.stage_hash('actr')}.csv"
    result = ReplayResult(rows, round(float(np.mean(aucs)), 6) if aucs else None, pooled, time.perf_counter() - t0, out)
    write_table(rows, out)
    write_json(result.summary(), out.with_suffix(".json"))
    return result


def _serving_on(pipeline: Pipeline, cadence, run_id: str, day: date, ticked):
    """A day whose A-CTR was skipped (no ad rows in its window): the version serving then,
    scored on the day as an A-CTR's next-day evaluation is. ``(version, metrics, (logits, labels))``."""
    from mdctr.core.timeutil import DAY, day_ts
    from mdctr.orchestration.cadence.gate import predict_window
    from mdctr.orchestration.stages.training import next_day_metrics

    run = cadence.state.get(run_id)
    serving = cadence.state.serving()
    if run is None or run.status != "skipped" or serving is None:
        raise ConfigError(f"the A-CTR of {day} did not run: {', '.join(ticked.failed + ticked.blocked) or run_id} "
                          f"(see `mdctr cadence status`)")
    rec = pipeline.lineage.get(serving)
    p = predict_window(pipeline, rec, (day_ts(day), day_ts(day) + DAY))
    metrics = next_day_metrics(p.logits, p.labels, p.domain, pipeline.spec.domain_names, pipeline.cfg.actr.min_eval_rows)
    return rec, metrics, (p.logits.numpy(), p.labels.numpy())


def write_table(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)


def format_table(result: ReplayResult, every: int = 1) -> str:
    """The per-day table as text (every ``every``-th day) and the summary line."""
    lines = [f"{'date':<10}  {'train':>6}  {'next':>5}  {'auc':>7}  {'logloss':>7}  cpm / tpm months"]
    for i, r in enumerate(result.rows):
        if i % every:
            continue
        auc = "-" if r["next_day_auc"] is None else f"{r['next_day_auc']:.4f}"
        ll = "-" if r["next_day_logloss"] is None else f"{r['next_day_logloss']:.4f}"
        lines.append(f"{r['date']:<10}  {r['train_rows'] or 0:>6}  {r['next_day_rows'] or 0:>5}  {auc:>7}  {ll:>7}  "
                     f"{(r['cpm_version'] or '-')[:14]} / {r['tpm_months'] or '-'}")
    s = result.summary()
    lines.append(f"{s['days']} days, {s['days_with_auc']} with an AUC: mean next-day AUC {s['mean_next_day_auc']}, "
                 f"pooled {s['pooled_next_day_auc']}  ({s['seconds']} s)  -> {s['table']}")
    return "\n".join(lines)

"""What ``mdctr cadence status`` shows, and moving the serving pointer by hand."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from mdctr.core.errors import ArtifactError, ConfigError
from mdctr.core.io import format_table
from mdctr.orchestration.cadence.state import OPEN, CadenceState
from mdctr.orchestration.cadence.tick import SERVED
from mdctr.orchestration.stages.registry import schedule_order


def _next_due(rule, after: date) -> str | None:
    for i in range(1, 367):
        day = after + timedelta(days=i)
        if rule.due(day):
            return day.isoformat()
    return None


def cadence_status(pipeline, state: CadenceState, today: date) -> dict:
    """Per stage: the last success, the next due day, open/failed/blocked runs and the latest
    run's attempts; the serving version with its metrics and the last decisions."""
    cfg = pipeline.cfg
    stages = []
    for stage in schedule_order(cfg):
        runs = [r for r in state.runs(stage=stage.name) if r.config_hash == pipeline.stage_hash(stage.name)]
        done = [r for r in runs if r.status == "succeeded"]
        latest = runs[-1] if runs else None
        stages.append({
            "stage": stage.name,
            "last_success": done[-1].run_id if done else None,
            "next_due": _next_due(stage.due(cfg), today),
            "open": sum(r.status in OPEN for r in runs),
            "failed": [r.run_id for r in runs if r.status == "failed"],
            "blocked": [r.run_id for r in runs if r.status == "blocked"],
            "skipped": sum(r.status == "skipped" for r in runs),
            "latest": None if latest is None else {"run": latest.run_id, "status": latest.status,
                                                   "attempts": latest.attempts, "error": latest.error},
        })
    serving_id = state.serving(SERVED)
    serving = pipeline.lineage.get(serving_id) if serving_id else None
    history = state.history(SERVED)
    return {
        "today": today.isoformat(),
        "cadence_start": None if cfg.cadence is None else cfg.cadence.start.isoformat(),
        "stages": stages,
        "serving": None if serving is None else {"version": serving.version_id, "date": serving.date,
                                                  "metrics": serving.metrics,
                                                  "since_reason": next((h["reason"] for h in reversed(history)
                                                                        if h["version_id"] == serving_id
                                                                        and h["action"] != "gate"), None)},
        "decisions": [{k: h[k] for k in ("action", "version_id", "previous", "reason")} for h in history[-5:]],
        "lock": None if (lock := state.lock()) is None else lock.holder,
    }


def format_status(report: dict) -> str:
    rows = [{"stage": s["stage"], "last success": s["last_success"] or "-", "next due": s["next_due"] or "-",
             "open": s["open"], "failed": len(s["failed"]), "blocked": len(s["blocked"]), "skipped": s["skipped"],
             "latest": "-" if s["latest"] is None else
             f"{s['latest']['status']} ({s['latest']['attempts']} attempt{'s' if s['latest']['attempts'] != 1 else ''})"}
            for s in report["stages"]]
    lines = [format_table(rows)]
    for s in report["stages"]:
        for rid in s["failed"] + s["blocked"]:
            err = s["latest"]["error"] if s["latest"] and s["latest"]["run"] == rid else None
            lines.append(f"  {rid}: {'failed' if rid in s['failed'] else 'blocked'}" + (f" ({err})" if err else ""))
    serving = report["serving"]
    if serving is None:
        lines.append("serving: nothing yet")
    else:
        nd = serving["metrics"].get("next_day") or {}
        lines.append(f"serving: {serving['version']} (next-day AUC {nd.get('auc')}, log loss {nd.get('logloss')}; "
                     f"{serving['since_reason']})")
    for d in report["decisions"]:
        lines.append(f"  {d['action']:<8} {d['version_id']}: {d['reason']}")
    if report["lock"]:
        lines.append(f"a tick is running: {report['lock']}")
    return "\n".join(lines)


def _actr(pipeline, version: str):
    rec = pipeline.lineage.get(version)
    if rec is None:
        raise ConfigError(f"VERSION: no version '{version}' in the lineage database")
    if rec.stage != SERVED:
        raise ConfigError(f"VERSION: {version} is a {rec.stage} version; only {SERVED} versions serve")
    pipeline.check_version(rec.stage, Path(rec.path))
    return rec


def promote(pipeline, state: CadenceState, version: str, reason: str) -> None:
    """Point the serving pointer at ``version`` (an intact A-CTR version)."""
    _actr(pipeline, version)
    state.record_decision(SERVED, "manual", version, reason, {})


def rollback(pipeline, state: CadenceState, reason: str) -> str:
    """Serve the version that served before the current one; returns it."""
    current = state.serving(SERVED)
    if current is None:
        raise ConfigError("nothing serves yet: there is nothing to roll back")
    served = [h["version_id"] for h in state.history(SERVED) if h["action"] != "gate"]
    earlier = [v for v in served if v != current]
    # the version that served right before the current one took over
    before = None
    for i in range(len(served) - 1, 0, -1):
        if served[i] == current and served[i - 1] != current:
            before = served[i - 1]
            break
    before = before or (earlier[-1] if earlier else None)
    if before is None:
        raise ArtifactError(f"{current} is the only version that ever served: there is nothing to roll back to")
    _actr(pipeline, before)
    state.record_decision(SERVED, "rollback", before, f"{reason} (from {current})", {})
    return before

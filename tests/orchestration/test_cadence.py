"""The cadence tick on a simulated clock (runs in this process): what is due, in which order,
idempotence, catch-up, the lock, retries, blocked inputs, the promotion gate, and the CLI
(a killed tick, two concurrent ticks, status, promote/rollback)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from mdctr.core.config import dump_model
from mdctr.core.errors import ConfigError
from mdctr.core.timeutil import day_ts
from mdctr.domains.spec import load_spec, save_spec
from mdctr.domains.validate import data_fingerprint
from mdctr.orchestration.cadence.executors import LocalExecutor
from mdctr.orchestration.cadence.state import CadenceState
from mdctr.orchestration.cadence.tick import Cadence
from mdctr.orchestration.stages import Pipeline

MDCTR = str(Path(sys.executable).parent / "mdctr")
START = date(2024, 3, 1)  # a Friday; CPMs run on Mondays (2024-03-04)


def at(day: str, hour: int = 6) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00").replace(tzinfo=timezone.utc)


def _cfg(pipeline_config, data: Path, store: Path, **cadence):
    cfg = pipeline_config(data, store)
    return cfg.model_copy(update={"cadence": cfg.model_validate(
        {"data": "x", "store": "x", "cadence": {"start": START.isoformat(), "retry_backoff_s": 0, "poll_s": 0.01,
                                                **cadence}}).cadence})


@dataclass
class Failing(LocalExecutor):
    """A local executor on which the runs named in ``fail`` always fail."""

    pipeline: Pipeline = None
    fail: set = field(default_factory=set)

    def __post_init__(self):
        LocalExecutor.__init__(self, self.pipeline)

    def start(self, run, attempt):
        if any(run.run_id.startswith(prefix) for prefix in self.fail):
            self.results[self.job_id(run, attempt)] = ("failed", "planted failure")
            return
        super().start(run, attempt)


def _cadence(cfg, executor=None, lines=None):
    pipe = Pipeline(cfg)
    say = (lines.append if lines is not None else (lambda _: None))
    return pipe, Cadence(pipe, CadenceState(pipe.lineage), executor or LocalExecutor(pipe), say=say)


def _stem(run_id: str) -> str:
    return run_id.rsplit("-", 1)[0]


@pytest.fixture(scope="module")
def first(ads_data, pipeline_config, tmp_path_factory):
    """The first tick of a fresh cadence, at START 06:00: (config, result)."""
    cfg = _cfg(pipeline_config, ads_data, tmp_path_factory.mktemp("cadence") / "store")
    _, cadence = _cadence(cfg)
    return cfg, cadence.tick(at("2024-03-01"))


def test_first_tick_runs_what_is_due_inputs_first(first):
    cfg, result = first
    # TPM is due on the 1st; the CPM (due Mondays) has no version yet, so it runs first too
    assert [_stem(r) for r in result.started] == ["tpm-2024-03-01", "cpm-2024-03-01", "actr-2024-03-01"]
    assert result.succeeded == result.started and not result.failed and not result.open
    pipe, cadence = _cadence(cfg)
    assert cadence.state.serving() == result.started[-1] and result.promoted == [result.started[-1]]
    assert cadence.state.history()[-1]["reason"] == "first serving version"


def test_repeated_ticks_start_nothing(first):
    cfg, _ = first
    pipe, cadence = _cadence(cfg)
    versions = len(pipe.lineage.list())
    for _ in range(100):
        again = cadence.tick(at("2024-03-01", 23))
        assert again.planned == [] and again.started == []
    assert len(pipe.lineage.list()) == versions
    assert all(r.attempts == 1 and r.status == "succeeded" for r in cadence.state.runs())


def test_catch_up_after_downtime_runs_exactly_the_missing_runs_oldest_first(first, tmp_path):
    cfg, _ = first
    store = tmp_path / "store"
    shutil.copytree(cfg.store, store)  # a copied store works on its own files
    cfg = cfg.model_copy(update={"store": str(store)})
    pipe, cadence = _cadence(cfg)
    result = cadence.tick(at("2024-03-06"))  # 5 days later
    assert [_stem(r) for r in result.started] == ["actr-2024-03-02", "actr-2024-03-03", "cpm-2024-03-04",
                                                  "actr-2024-03-04", "actr-2024-03-05", "actr-2024-03-06"]
    assert result.succeeded == result.started
    actrs = [r for r in result.started if r.startswith("actr")]
    assert sorted(result.promoted + result.gated) == actrs  # every new A-CTR met the gate
    decisions = cadence.state.history()
    assert [d["version_id"] for d in decisions][-5:] == actrs
    assert all(d["metrics"]["window"] for d in decisions[-5:])  # scored on held-out days
    assert cadence.state.serving() in actrs
    # A-CTR 03-04 onwards start from the CPM of 03-04
    assert pipe.lineage.get(actrs[2]).inputs["cpm"] == result.started[2]


def test_a_long_catch_up_needs_backfill(ads_data, pipeline_config, tmp_path):
    cfg = _cfg(pipeline_config, ads_data, tmp_path / "store", max_catchup_days=3)
    pipe, cadence = _cadence(cfg)
    with pytest.raises(ConfigError, match="--backfill"):
        cadence.tick(at("2024-03-08"))
    assert cadence.state.runs() == [] and cadence.state.lock() is None
    before = cadence.tick(at("2024-02-20"))  # before cadence.start: nothing is owed
    assert before.planned == [] and before.started == []


def test_the_lock_keeps_a_second_tick_out_and_a_dead_holders_lock_is_taken_over(ads_data, pipeline_config, tmp_path):
    cfg = _cfg(pipeline_config, ads_data, tmp_path / "store")
    pipe, cadence = _cadence(cfg)
    other = CadenceState(Pipeline(cfg).lineage)
    holder, _ = other.acquire(lease_s=900)
    assert holder is not None
    lines = []
    _, blocked = _cadence(cfg, lines=lines)
    result = blocked.tick(at("2024-02-28"))
    assert result.locked_by is not None and result.locked_by.holder == holder and "another tick" in lines[0]
    other.release(holder)
    # a holder that died (a SIGKILLed tick) does not keep the lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with other.engine.begin() as con:
        con.execute(text("INSERT INTO cadence_lock VALUES ('tick', 'gone', :h, :p, 0, :t)"),
                    {"h": os.uname().nodename, "p": dead.pid, "t": time.time()})
    assert cadence.tick(at("2024-02-28")).locked_by is None
    assert cadence.state.lock() is None


def test_failures_are_retried_then_reported_and_do_not_stop_unrelated_runs(first, tmp_path):
    cfg, _ = first
    store = tmp_path / "store"
    shutil.copytree(cfg.store, store)
    cfg = cfg.model_copy(update={"store": str(store)})
    pipe = Pipeline(cfg)
    executor = Failing(pipe, fail={"actr-2024-03-02", "cpm-2024-03-04"})
    lines = []
    _, cadence = _cadence(cfg, executor, lines)
    result = cadence.tick(at("2024-03-05"))
    runs = {_stem(r.run_id): r for r in cadence.state.runs()}
    assert runs["actr-2024-03-02"].status == "failed" and runs["actr-2024-03-02"].attempts == 3
    assert runs["actr-2024-03-02"].error == "planted failure"
    assert runs["actr-2024-03-03"].status == "succeeded"  # a later day still runs
    assert runs["cpm-2024-03-04"].status == "failed"
    for day in ("2024-03-04", "2024-03-05"):  # their CPM failed: not started
        assert runs[f"actr-{day}"].status == "blocked" and runs[f"actr-{day}"].attempts == 0
        assert "cpm-2024-03-04" in runs[f"actr-{day}"].error
    assert sum(line.startswith("retry") for line in lines) == 4  # 2 retries of each failing run
    assert [_stem(r) for r in result.failed] == ["actr-2024-03-02", "cpm-2024-03-04"]
    assert cadence.state.serving() == runs["actr-2024-03-03"].run_id  # the failed ones never served


def _poison_ads(src: Path, dst: Path, lo: date, hi: date) -> None:
    """Copy the dataset with the ad rows' labels flipped in [lo, hi)."""
    shutil.copytree(src, dst)
    f = dst / "part-00000.parquet"
    t = pq.read_table(f)
    spec = load_spec(src)
    ad = [d.name for d in spec.domains if d.role.value == "ad"]
    hit = pc.and_(pc.and_(pc.greater_equal(t["ts"], day_ts(lo)), pc.less(t["ts"], day_ts(hi))),
                  pc.is_in(t["domain"], pa.array(ad, t["domain"].type)))
    cols = {n: t[n] for n in t.column_names}
    cols["label"] = pc.if_else(hit, pc.subtract(1, t["label"]), t["label"]).cast(t["label"].type)
    poisoned = pa.table(cols, schema=t.schema)
    pq.write_table(poisoned, f, row_group_size=pq.ParquetFile(src / "part-00000.parquet").metadata.row_group(0).num_rows)
    positives = poisoned.group_by("domain").aggregate([("label", "sum")]).to_pydict()
    positives = dict(zip(positives["domain"], positives["label_sum"]))
    domains = [d.model_copy(update={"positives": positives.get(d.name, 0)}) for d in spec.domains]
    save_spec(spec.model_copy(update={"domains": domains, "fingerprint": data_fingerprint([f])}), dst)


@pytest.mark.slow
def test_a_planted_bad_actr_is_gated_and_the_serving_pointer_stays(ads_data, pipeline_config, tmp_path):
    """The A-CTR of 03-04 trains on a window (03-03) whose ad rows have flipped labels: it
    scores worse than the serving A-CTR of 03-03 on held-out days and does not serve."""
    data = tmp_path / "poisoned"
    _poison_ads(ads_data, data, date(2024, 3, 3), date(2024, 3, 4))
    cfg = _cfg(pipeline_config, data, tmp_path / "store")
    cfg = cfg.model_copy(update={"actr": cfg.actr.model_copy(update={"window_days": 1, "train": cfg.actr.train.model_copy(
        update={"epochs": 6})})})
    pipe, cadence = _cadence(cfg)
    cadence.tick(at("2024-03-03"))
    good = pipe.version_id("actr", date(2024, 3, 3))
    assert cadence.state.get(good).status == "succeeded"
    cadence.state.record_decision("actr", "manual", good, "the test's baseline", {})
    result = cadence.tick(at("2024-03-04"))
    bad = pipe.version_id("actr", date(2024, 3, 4))
    assert result.started[-1] == bad and result.gated == [bad]  # after the CPM due on Monday
    assert cadence.state.serving() == good
    gate = cadence.state.get(bad).gate
    print(f"\nplanted bad A-CTR: AUC {gate['candidate']['auc']} vs serving {gate['serving']['auc']} "
          f"on {gate['candidate']['n']} rows {gate['window']}; {gate['reason']}")
    limits = cfg.cadence.gate
    assert gate["promoted"] is False
    assert gate["auc_drop"] > limits.max_auc_drop or gate["logloss_rise"] > limits.max_logloss_rise
    assert cadence.state.history()[-1]["action"] == "gate"


# -- the command line -----------------------------------------------------------------------

def _mdctr(*args, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([MDCTR, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.fixture
def cli_config(ads_data, pipeline_config, tmp_path) -> Path:
    path = tmp_path / "cadence.yaml"
    dump_model(_cfg(pipeline_config, ads_data, tmp_path / "store"), path)
    return path


def _runs(store: Path) -> list[dict]:
    engine = create_engine(f"sqlite:///{store / 'lineage.sqlite'}")  # plain SQL, as users read it
    with engine.connect() as con:
        return [dict(r._mapping) for r in con.execute(text("SELECT run_id, status, attempts FROM cadence_runs"))]


@pytest.mark.slow
def test_two_concurrent_ticks_start_every_run_once(cli_config, tmp_path):
    procs = [_mdctr("cadence", "tick", "--executor", "local", "--now", "2024-03-01T06:00", "--config",
                    str(cli_config), cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-4000:] for _, err in outs]
    joined = "".join(o for o, _ in outs)
    assert joined.count("another tick holds the lock") == 1  # the second one found the first running
    runs = _runs(tmp_path / "store")
    assert len(runs) == 3 and all(r["status"] == "succeeded" and r["attempts"] == 1 for r in runs), runs


@pytest.mark.slow
def test_a_killed_tick_is_finished_by_the_next_with_nothing_twice(cli_config, tmp_path):
    proc = _mdctr("cadence", "tick", "--executor", "local", "--now", "2024-03-01T06:00", "--config",
                  str(cli_config), cwd=tmp_path)
    seen = ""
    while "start    cpm-" not in seen:  # killed while the CPM (second run) trains
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen += line
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = tmp_path / "store"
    assert {r["status"] for r in _runs(store)} >= {"submitted"}
    again = _mdctr("cadence", "tick", "--executor", "local", "--now", "2024-03-01T06:00", "--config",
                   str(cli_config), cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    runs = {_stem(r["run_id"]): r for r in _runs(store)}
    assert all(r["status"] == "succeeded" for r in runs.values()), runs
    assert runs["tpm-2024-03-01"]["attempts"] == 1 and runs["cpm-2024-03-01"]["attempts"] == 2  # re-run once
    versions = sorted(p.name for p in (store / "versions").iterdir())
    assert [_stem(v) for v in versions] == ["actr-2024-03-01", "cpm-2024-03-01", "tpm-2024-03-01"]  # no leftovers


def test_status_promote_and_rollback(first, tmp_path, capsys):
    from mdctr.cli import main

    cfg, _ = first
    store = tmp_path / "store"
    shutil.copytree(cfg.store, store)
    cfg = cfg.model_copy(update={"store": str(store)})
    config = tmp_path / "cadence.yaml"
    dump_model(cfg, config)
    _, cadence = _cadence(cfg)
    cadence.tick(at("2024-03-02"))

    def mdctr(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = mdctr("cadence", "status", "--json", "--now", "2024-03-02T07:00", "--config", str(config))
    report = json.loads(out)
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["actr"]["last_success"].startswith("actr-2024-03-02") and stages["actr"]["next_due"] == "2024-03-03"
    assert stages["cpm"]["next_due"] == "2024-03-04" and stages["tpm"]["next_due"] == "2024-04-01"
    serving = report["serving"]["version"]  # the first A-CTR, or the second if it passed the gate
    other = next(r["run_id"] for r in _runs(store) if r["run_id"].startswith("actr") and r["run_id"] != serving)
    assert mdctr("cadence", "promote", other, "--config", str(config), "--reason", "hotfix")[:2] == (
        0, f"serving {other}\n")
    assert mdctr("cadence", "rollback", "--config", str(config))[:2] == (0, f"serving {serving}\n")
    code, _, err = mdctr("cadence", "promote", "cpm-nope", "--config", str(config))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cpm-nope" in err
    code, out, _ = mdctr("cadence", "status", "--config", str(config))
    assert code == 0 and "rollback" in out and "manual" in out and "serving:" in out
    assert [h["action"] for h in CadenceState(Pipeline(cfg).lineage).history()][-2:] == ["manual", "rollback"]


def test_a_day_without_rows_is_skipped_and_replay_scores_the_serving_version(first, tmp_path, monkeypatch):
    """No ad rows in an A-CTR's window: the run is skipped (no version, not a failure), the
    next day still runs, and the replay's row for that day is the serving version's score."""
    from mdctr.orchestration.replay import replay

    cfg, result = first
    store = tmp_path / "store"
    shutil.copytree(cfg.store, store)
    pipe = Pipeline(cfg.model_copy(update={"store": str(store)}))
    empty_day = date(2024, 3, 2)
    real = pipe.empty_window
    monkeypatch.setattr(pipe, "empty_window", lambda stage, day: (ConfigError("no rows") if (stage, day) == (
        "actr", empty_day) else real(stage, day)))
    out = replay(pipe, START, date(2024, 3, 3), out=tmp_path / "replay.csv", progress=False)
    state = CadenceState(pipe.lineage)
    assert state.get(pipe.version_id("actr", empty_day)).status == "skipped"
    assert pipe.lineage.get(pipe.version_id("actr", empty_day)) is None
    assert state.get(pipe.version_id("actr", date(2024, 3, 3))).status == "succeeded"
    by_day = {r["date"]: r for r in out.rows}
    first_actr = result.started[-1]
    assert by_day["2024-03-02"]["actr_version"] == state.history()[0]["version_id"] == first_actr
    assert by_day["2024-03-02"]["train_rows"] == 0 and by_day["2024-03-02"]["next_day_auc"] is not None
    assert len(out.rows) == 3 and out.mean_auc is not None


@pytest.mark.slow
def test_teacher_labels_are_due_when_the_teacher_has_a_newer_run(ads_data, pipeline_config, tmp_path):
    """Labels run monthly, and also as soon as the teacher named in the config has a run that
    has no labels yet (its run id is part of the labels' version hash)."""
    from mdctr.platform.run import train
    from tests.platform.conftest import _make_config

    teacher = tmp_path / "teacher"
    teacher_cfg = _make_config(ads_data, train={"epochs": 1, "split_kind": "temporal"})
    train(teacher_cfg, teacher)
    cfg = _cfg(pipeline_config, ads_data, tmp_path / "store", start="2024-03-02")
    cfg = cfg.model_copy(update={"labels": cfg.model_validate(
        {"data": "x", "store": "x", "labels": {"teacher": str(teacher), "window_days": 7,
                                               "schedule": {"every": "month"}}}).labels})
    pipe, cadence = _cadence(cfg)
    first = cadence.tick(at("2024-03-02"))
    assert [_stem(r) for r in first.started if r.startswith("labels")] == ["labels-2024-03-02"]  # a new teacher
    assert not [r for r in cadence.tick(at("2024-03-03")).started if r.startswith("labels")]  # not due
    shutil.rmtree(teacher)
    train(teacher_cfg.model_copy(update={"train": teacher_cfg.train.model_copy(update={"seed": 1})}), teacher)
    pipe, cadence = _cadence(cfg)  # the hash covers the teacher's run: read it again
    third = cadence.tick(at("2024-03-04"))
    labels = [r for r in third.started if r.startswith("labels")]
    assert [_stem(r) for r in labels] == ["labels-2024-03-04"] and labels[0] != first.started[0]
    assert cadence.state.get(labels[0]).status == "succeeded"


def test_the_schema_is_versioned_and_migrated_by_the_code(tmp_path, monkeypatch):
    from mdctr.core.errors import ArtifactError
    from mdctr.orchestration.cadence import state as state_mod
    from mdctr.orchestration.lineage import Lineage

    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    fresh = CadenceState(Lineage(url))
    assert fresh.runs() == [] and not (tmp_path / "state.sqlite").exists()  # reads create nothing
    fresh.add("actr-2024-03-01-x", "actr", START, "x")
    engine = create_engine(url)
    with engine.begin() as con:
        assert con.execute(text("SELECT version FROM mdctr_schema WHERE component = 'cadence'")).scalar() == 1
        con.execute(text("UPDATE mdctr_schema SET version = 0"))
    ran = []
    monkeypatch.setitem(state_mod.MIGRATIONS, 0, lambda con: ran.append(con))
    assert [r.run_id for r in CadenceState(Lineage(url)).runs()] == ["actr-2024-03-01-x"]
    assert len(ran) == 1  # an older database is migrated when opened
    with engine.begin() as con:
        assert con.execute(text("SELECT version FROM mdctr_schema")).scalar() == state_mod.SCHEMA_VERSION
        con.execute(text("UPDATE mdctr_schema SET version = 99"))
    with pytest.raises(ArtifactError, match="schema version 99 is newer"):
        CadenceState(Lineage(url)).runs()


@pytest.mark.parametrize("kind", ["k8s-cronjob", "raycronjob"])
def test_schedule_prints_a_manifest_that_runs_the_tick(kind, tmp_path):
    import yaml

    from mdctr.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("data: x\nstore: y\n")
    out = subprocess.run([MDCTR, "cadence", "schedule", "--print", kind, "--config", "/data/c.yaml",
                          "--address", "http://ray-head:8265"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    command = ["mdctr", "cadence", "tick", "--config", "/data/c.yaml"]
    if kind == "k8s-cronjob":
        assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
        assert doc["spec"]["concurrencyPolicy"] == "Forbid" and doc["spec"]["schedule"] == "0 6 * * *"
        container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == command
        assert {"name": "RAY_ADDRESS", "value": "http://ray-head:8265"} in container["env"]
    else:
        assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
        assert doc["spec"]["schedule"] == "0 6 * * *"
        assert doc["spec"]["jobTemplate"]["entrypoint"] == " ".join(command)
    assert main(["cadence", "schedule", "--print", "crontab", "--config", str(config)]) == 0


def test_the_gate_scores_recent_rows_neither_version_trained_on():
    from mdctr.core.timeutil import iso_day
    from mdctr.orchestration.cadence.gate import gate_window
    from mdctr.orchestration.lineage import VersionRecord

    def actr(day: str, start: str) -> VersionRecord:
        return VersionRecord(f"actr-{day}", "actr", day, "h", start, day, 10, {}, {}, "v")

    def days(candidate, serving):
        lo, hi = gate_window(candidate, serving, 7)
        return iso_day(lo), iso_day(hi)

    today = actr("1998-03-02", "1998-03-01")  # trained on 03-01
    # yesterday's version trained on 02-28: the 7 days before that
    assert days(today, actr("1998-03-01", "1998-02-28")) == ("1998-02-21", "1998-02-28")
    # a version serving for months: the 7 days before today's window, not months-old rows
    assert days(today, actr("1997-09-21", "1997-09-20")) == ("1998-02-22", "1998-03-01")

"""The replay calendar and ``mdctr pipeline`` as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from mdctr.core.config import dump_model
from mdctr.orchestration.replay import replay
from mdctr.orchestration.stages import Pipeline

MDCTR = str(Path(sys.executable).parent / "mdctr")


def test_replay_runs_the_calendar_in_order(ads_data, pipeline_config, tmp_path):
    pipe = Pipeline(pipeline_config(ads_data, tmp_path / "store"))
    result = replay(pipe, date(2024, 2, 27), date(2024, 3, 5), progress=False)
    # TPM on the first replayed day (none yet) and on the 1st; CPM on day one and Monday 03-04
    assert [r.date for r in pipe.lineage.list("tpm")] == ["2024-02-27", "2024-03-01"]
    assert [r.date for r in pipe.lineage.list("cpm")] == ["2024-02-27", "2024-03-04"]
    assert [r["date"] for r in result.rows] == [f"2024-02-{d}" for d in (27, 28, 29)] + [f"2024-03-0{d}" for d in range(1, 6)]
    by_day = {r["date"]: r for r in result.rows}
    assert by_day["2024-02-29"]["tpm_months"] == "2024-02"
    assert by_day["2024-03-01"]["tpm_months"] == "2024-02 2024-03"  # keep: 2
    assert by_day["2024-03-03"]["cpm_version"].startswith("cpm-2024-02-27-")
    assert by_day["2024-03-04"]["cpm_version"].startswith("cpm-2024-03-04-")
    aucs = [r["next_day_auc"] for r in result.rows]
    assert all(a is not None and 0.5 < a < 1 for a in aucs)
    assert result.mean_auc == round(sum(aucs) / len(aucs), 6) and 0.5 < result.pooled_auc < 1
    with open(result.table) as fh:
        table = list(csv.DictReader(fh))
    assert [r["date"] for r in table] == list(by_day) and float(table[0]["next_day_auc"]) == aucs[0]
    # a second replay over an overlapping range reuses every version
    n = len(list((tmp_path / "store" / "versions").iterdir()))
    again = replay(pipe, date(2024, 3, 1), date(2024, 3, 5), progress=False)
    assert len(list((tmp_path / "store" / "versions").iterdir())) == n
    assert [r["next_day_auc"] for r in again.rows] == aucs[3:]
    # the next-day evaluation is in the lineage
    ev = pipe.lineage.evaluations(by_day["2024-03-02"]["actr_version"])["next_day"]
    assert ev["window"] == ["2024-03-02", "2024-03-03"] and ev["auc"] == by_day["2024-03-02"]["next_day_auc"]


def _mdctr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([MDCTR, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_cli_run_show_and_errors(ads_data, pipeline_config, tmp_path):
    config = tmp_path / "cadence.yaml"
    dump_model(pipeline_config(ads_data, tmp_path / "store"), config)
    first = _mdctr("pipeline", "run", "tpm", "--date", "2024-03-01", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    status = [line for line in first.stdout.splitlines() if line.startswith(("created", "exists"))]
    assert len(status) == 1 and status[0].startswith("created tpm-2024-03-01-")
    assert "epoch 0" in first.stdout  # the training log
    vid = status[0].split()[1]
    again = _mdctr("pipeline", "run", "tpm", "--date", "2024-03-01", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith(f"exists  {vid}")
    show = _mdctr("pipeline", "show", vid, "--config", str(config), cwd=tmp_path)
    rec = json.loads(show.stdout)
    assert rec["stage"] == "tpm" and rec["inputs"]["month"] == "2024-03" and rec["window_end"] == "2024-03-01"
    for args, fragment in [
        (("pipeline", "run", "weekly", "--date", "2024-03-01"), "unknown stage 'weekly'"),
        (("pipeline", "run", "cpm", "--date", "2024-03-32"), "--date: expected YYYY-MM-DD"),
        (("pipeline", "run", "actr", "--only", "--date", "2024-03-01"), "no CPM version at or before 2024-03-01"),
        (("pipeline", "show", "actr-nope"), "no version 'actr-nope'"),
    ]:
        proc = _mdctr(*args, "--config", str(config), cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, proc.stderr)
    # without --only, the inputs that have no usable version run first (the TPM exists)
    actr = _mdctr("pipeline", "run", "actr", "--date", "2024-03-02", "--config", str(config), cwd=tmp_path)
    assert actr.returncode == 0, actr.stderr
    made = [line.split()[:2] for line in actr.stdout.splitlines() if line.startswith(("created", "exists"))]
    assert [(status, v.rsplit("-", 1)[0]) for status, v in made] == [("created", "cpm-2024-03-02"),
                                                                     ("created", "actr-2024-03-02")]
    assert json.loads(actr.stdout[actr.stdout.index("{"):])["inputs"]["cpm"] == made[0][1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("window_days: 2", "window_days: 0"))
    proc = _mdctr("pipeline", "run", "actr", "--date", "2024-03-01", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "window_days" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

"""``mdctr labels ...`` as a user runs it: write, list, show, gc, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from mdctr.core.config import dump_model
from mdctr.core.timeutil import day_ts
from mdctr.platform.run import train

MDCTR = str(Path(sys.executable).parent / "mdctr")


def _mdctr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([MDCTR, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_labels_cli(ml_gender, make_config, tmp_path):
    train(make_config(ml_gender, train={"epochs": 1}), tmp_path / "teacher")
    for _ in range(2):
        proc = _mdctr("labels", "write", "--teacher", "teacher", "--data", str(ml_gender), "--split", "valid",
                      cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("wrote ") and "10,019 labels of ['F', 'M']" in proc.stdout
    listed = _mdctr("labels", "list", cwd=tmp_path).stdout.splitlines()
    assert len(listed) == 2 and all("split valid" in line for line in listed)
    shown = json.loads(_mdctr("labels", "show", "latest", cwd=tmp_path).stdout)
    assert shown["version"] == listed[1].split()[0] and shown["rows"] == 10_019
    assert shown["date_range"] == ["1997-09-20", "1998-04-22"] and shown["teacher_dir"].endswith("teacher")
    gc = _mdctr("labels", "gc", "--keep", "1", cwd=tmp_path)
    assert gc.stdout.startswith("removed 1 version(s): " + listed[0].split()[0])
    # a student config naming the labels trains from them
    student = make_config(ml_gender, train={"epochs": 1}, distill={"store": str(tmp_path / "runs/labels")})
    dump_model(student, tmp_path / "student.yaml")
    proc = _mdctr("train", "--config", "student.yaml", "--out", "student", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "student" / "metrics.json").read_text())["auc"] > 0.7
    # a window of days: every split's rows in [start, end), whatever window the teacher trained on
    proc = _mdctr("labels", "write", "--teacher", "teacher", "--data", str(ml_gender), "--split", "all",
                  "--start", "1998-03-01", "--end", "1998-04-01", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(_mdctr("labels", "show", "latest", cwd=tmp_path).stdout)
    ts = pq.read_table(ml_gender / "part-00000.parquet", columns=["ts"]).column(0).to_numpy()
    lo, hi = day_ts(date(1998, 3, 1)), day_ts(date(1998, 4, 1))
    assert shown["rows"] == int(((ts >= lo) & (ts < hi)).sum()) > 1000
    assert shown["date_range"] == ["1998-03-01", "1998-03-31"]
    for args, fragment in [
        (("labels", "write", "--teacher", "teacher", "--data", str(ml_gender), "--start", "1998-04-01",
          "--end", "1998-03-01"), "--start 1998-04-01 must precede --end 1998-03-01"),
        (("labels", "write", "--teacher", "teacher", "--data", str(ml_gender), "--start", "March"),
         "--start: expected YYYY-MM-DD"),
        (("labels", "write", "--teacher", "nowhere", "--data", str(ml_gender)), "nowhere: not a run directory"),
        (("labels", "show", "20990101-000000-000000-beef"), "no version '20990101-000000-000000-beef'"),
        (("labels", "gc", "--keep", "-1"), "keep must be >= 0"),
    ]:
        proc = _mdctr(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, proc.stderr)

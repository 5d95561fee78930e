"""``mdctr cadence tick`` against a real local Ray head: every due run is a Ray job (its
submission id the run's version id), the tick waits for them in dependency order, and ticking
again submits nothing. Slow: a head node and one job per run."""

from __future__ import annotations

import json

import pytest

from mdctr.core.config import dump_model
from tests.orchestration.test_cadence import _cfg, _runs, _stem
from tests.orchestration.test_ray_cluster import _run, head  # noqa: F401  (the head fixture)

pytestmark = pytest.mark.slow


def test_tick_submits_the_due_runs_as_ray_jobs_once(head, ads_data, pipeline_config, tmp_path):  # noqa: F811
    env, info = head
    config = tmp_path / "cadence.yaml"
    dump_model(_cfg(pipeline_config, ads_data, tmp_path / "store"), config)
    r = _run(env, "cadence", "tick", "--now", "2024-03-01T06:00", "--config", str(config), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = _runs(tmp_path / "store")
    assert sorted(_stem(x["run_id"]) for x in runs) == ["actr-2024-03-01", "cpm-2024-03-01", "tpm-2024-03-01"]
    assert all(x["status"] == "succeeded" and x["attempts"] == 1 for x in runs), runs
    started = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("start")]
    assert [_stem(s) for s in started] == ["tpm-2024-03-01", "cpm-2024-03-01", "actr-2024-03-01"]  # inputs first
    listed = _run(env, "submit", "--list").stdout.split()
    for x in runs:  # one Ray job per run, named after the version it makes
        assert listed.count(f"mdctr-{x['run_id']}") == 1, listed

    again = _run(env, "cadence", "tick", "--now", "2024-03-01T06:00", "--config", str(config), timeout=300)
    assert again.returncode == 0 and "0 due, 0 started" in again.stdout, again.stdout + again.stderr
    assert _run(env, "submit", "--list").stdout.split().count(f"mdctr-{runs[0]['run_id']}-2") == 0

    status = json.loads(_run(env, "cadence", "status", "--json", "--now", "2024-03-01T07:00", "--config",
                             str(config)).stdout)
    assert status["serving"]["version"].startswith("actr-2024-03-01")

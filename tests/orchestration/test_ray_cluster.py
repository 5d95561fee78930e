"""``mdctr cluster up|status|down`` and ``mdctr submit`` against a real local Ray head.

The cluster tests share one head node (module-scoped fixture, ``MDCTR_STATE`` in a tmp dir)
that is always stopped at teardown, by its own PIDs (never ``ray stop``). They are marked
slow (a head takes about 6-10 s to start, each job a few seconds); the tests at the top need
no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdctr.orchestration.ray import cluster, submit

VENV_BIN = Path(sys.executable).parent
MDCTR = str(VENV_BIN / "mdctr")
RAY = str(VENV_BIN / "ray")
ON_LINUX = Path("/proc/self/net/tcp").exists()


def _listening():
    """``listening(pid)`` from tests/platform/test_listeners.py (a /proc reader)."""
    path = Path(__file__).parents[1] / "platform" / "test_listeners.py"
    spec = importlib.util.spec_from_file_location("_mdctr_listeners", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.listening


# --- no cluster needed ----------------------------------------------------------------------

def test_submission_id_is_deterministic_and_keyed_by_config_content_and_date(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: 1\n")
    argv = ["train", "--config", str(cfg), "--out", "r"]
    sid = submit.submission_id(argv)
    assert sid.startswith("mdctr-") and len(sid) == len("mdctr-") + 16
    assert submit.submission_id(list(argv)) == sid
    assert submit.submission_id(argv[:-1] + ["r2"]) != sid
    cfg.write_text("a: 2\n")  # same argv, other config content: another job
    assert submit.submission_id(argv) != sid
    d1 = submit.submission_id(["pipeline", "run", "actr", "--date=2024-01-02"])
    assert d1 != submit.submission_id(["pipeline", "run", "actr", "--date=2024-01-03"])


def test_submission_id_rejects_a_missing_config(tmp_path):
    with pytest.raises(submit.ConfigError, match="--config file not found"):
        submit.submission_id(["train", "--config", str(tmp_path / "nope.yaml")])


def test_entrypoint_is_this_environments_mdctr():
    ep = submit.entrypoint(["data", "validate", "a dir"])
    assert ep == f"{MDCTR} data validate 'a dir'"


def test_client_env_loopback_disables_auth_and_other_hosts_use_a_token():
    info = cluster.ClusterInfo(address="127.0.0.1:1", dashboard="http://127.0.0.1:2", temp_dir="/t",
                               host="127.0.0.1", num_cpus=1, auth_mode="disabled")
    env = cluster.client_env(info)
    assert env["RAY_AUTH_MODE"] == "disabled" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    info.host, info.auth_mode, info.token_path = "10.0.0.5", "token", "/s/ray/auth_token"
    env = cluster.client_env(info)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/s/ray/auth_token"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env


def test_temp_dir_match_is_a_path_prefix_not_a_string_prefix():
    assert cluster._names_dir(["--temp-dir=/tmp/a"], "/tmp/a")
    assert cluster._names_dir(["--logs-dir=/tmp/a/session_1/logs"], "/tmp/a")
    assert not cluster._names_dir(["--temp-dir=/tmp/ab"], "/tmp/a")


def _run(env, *args, timeout=180):
    return subprocess.run([MDCTR, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_status_and_down_without_a_cluster(tmp_path):
    env = {**os.environ, "MDCTR_STATE": str(tmp_path)}
    assert "no cluster is running" in _run(env, "cluster", "status").stdout
    assert "no cluster is running" in _run(env, "cluster", "down").stdout


def test_submit_without_arguments_is_a_usage_error(tmp_path):
    r = _run({**os.environ, "MDCTR_STATE": str(tmp_path)}, "submit")
    assert r.returncode == 2 and "nothing to submit" in r.stderr


# --- one real head node -----------------------------------------------------------------------

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``(env, info)`` of a running 2-CPU head; stopped (by its PIDs) at teardown."""
    state = tmp_path_factory.mktemp("state")
    env = {**os.environ, "MDCTR_STATE": str(state), "RAY_USAGE_STATS_ENABLED": "0"}
    r = _run(env, "cluster", "up", "--num-cpus", "2")
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("started"), r.stdout
        info = cluster.ClusterInfo(**json.loads((state / "ray" / "cluster.json").read_text()))
        yield env, info
    finally:
        _run(env, "cluster", "down")
        left = cluster.cluster_pids(info.temp_dir) if "info" in locals() else []
        assert not left, f"cluster processes left: {left}"


@pytest.fixture(scope="module")
def dataset() -> Path:
    from mdctr.domains.datasets import resolve_data

    return resolve_data("movielens-100k:gender")


@pytest.fixture(scope="module")
def local_summary(dataset) -> list[str]:
    r = _run(os.environ.copy(), "data", "validate", str(dataset))
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@slow
def test_up_records_the_cluster_and_is_idempotent(head):
    env, info = head
    assert info.host == "127.0.0.1" and info.auth_mode == "disabled" and info.pids
    assert info.dashboard.startswith("http://127.0.0.1:")
    r = _run(env, "cluster", "up", "--num-cpus", "2")
    assert r.returncode == 0 and r.stdout.startswith("already running"), r.stdout + r.stderr
    assert info.address in r.stdout


@slow
def test_status_lists_one_node_with_two_cpus(head):
    env, info = head
    r = _run(env, "cluster", "status")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line and not line.startswith(" "))
    assert fields["nodes"].strip() == "1"
    assert fields["cpus"].strip() == "2"
    assert fields["address"].strip() == info.address
    assert fields["dashboard"].strip() == info.dashboard


@slow
@pytest.mark.skipif(not ON_LINUX, reason="reads /proc (Linux)")
def test_every_listener_of_the_cluster_is_on_loopback(head):
    _, info = head
    listening = _listening()
    pids = cluster.cluster_pids(info.temp_dir, info.pids)
    assert set(info.pids) <= set(pids) | {p for p in info.pids if not cluster._alive(p)}
    found = {}
    for pid in pids:
        try:
            found[pid] = listening(pid)
        except OSError:  # exited meanwhile
            continue
    ports = [addr for socks in found.values() for addr in socks]
    assert len(ports) >= 3  # at least GCS, raylet, dashboard
    assert (f"127.0.0.1", int(info.dashboard.rsplit(":", 1)[1])) in ports
    bad = {pid: [a for a in socks if a[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
           for pid, socks in found.items()}
    assert not any(bad.values()), bad


@slow
def test_ray_job_submit_runs_an_mdctr_command_verbatim(head, dataset, local_summary):
    env, info = head
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([RAY, "job", "submit", "--address", info.dashboard, "--", MDCTR, "data", "validate",
                        str(dataset)], env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    for line in local_summary:
        assert line in out, (line, r.stdout)


@slow
def test_ray_job_submit_runs_a_pipeline_stage_verbatim(head):
    """The command users type, word for word: the uploaded working directory's config, the
    A-CTR's missing inputs (TPM, CPM) run first, the same output a local run prints, exit 0."""
    env, info = head
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    repo = Path(__file__).parents[2]
    r = subprocess.run([RAY, "job", "submit", "--address", info.dashboard, "--working-dir", ".", "--",
                        "mdctr", "pipeline", "run", "actr", "--date", "1998-03-02",
                        "--config", "configs/movielens_ads_cadence.yaml"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    made = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("created ")]
    assert [v.rsplit("-", 1)[0] for v in made] == ["tpm-1998-03-02", "cpm-1998-03-02", "actr-1998-03-02"]
    assert "epoch 0" in r.stdout and '"inputs"' in r.stdout
    assert "mdctr: warning: running in a Ray job's uploaded working directory" in r.stdout + r.stderr


@slow
def test_a_failing_ray_job_submit_exits_non_zero(head):
    env, info = head
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([RAY, "job", "submit", "--address", info.dashboard, "--", MDCTR, "pipeline", "run", "actr",
                        "--date", "1998-13-02", "--config", "configs/movielens_ads_cadence.yaml"],
                       env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "--date" in r.stdout + r.stderr


@slow
def test_mdctr_submit_prints_the_summary_and_recognises_a_resubmission(head, dataset, local_summary):
    env, info = head
    r = _run(env, "submit", "--", "data", "validate", str(dataset))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    for line in local_summary:
        assert line in out, (line, r.stdout)
    sid = submit.submission_id(["data", "validate", str(dataset)], os.getcwd())
    assert f"submitted: {sid}" in r.stderr

    again = _run(env, "submit", "--", "data", "validate", str(dataset))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already submitted: {sid} (SUCCEEDED)" in again.stderr
    listed = _run(env, "submit", "--list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()].count(sid) == 1
    assert "SUCCEEDED" in listed.stdout


@slow
def test_a_failing_job_exits_non_zero_and_shows_its_error(head):
    env, _ = head
    r = _run(env, "submit", "--", "data", "validate", "/nonexistent")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "/nonexistent" in r.stderr
    sid = submit.submission_id(["data", "validate", "/nonexistent"], os.getcwd())
    again = _run(env, "submit", "--", "data", "validate", "/nonexistent")  # a failed job may be retried
    assert again.returncode == 1, again.stdout + again.stderr
    assert f"previous job {sid} FAILED: submitting again as {sid}-2" in again.stderr
    assert again.stdout.count("not a dataset directory") == 1, again.stdout  # only the new attempt's log
    listed = _run(env, "submit", "--list").stdout.split()
    assert sid in listed and f"{sid}-2" in listed  # the failed attempt stays, its log readable


@slow
def test_no_wait_returns_at_once_and_the_job_still_runs(head, dataset):
    env, info = head
    r = _run(env, "submit", "--no-wait", "--", "data", "validate", "--help")
    assert r.returncode == 0, r.stdout + r.stderr
    sid = submit.submission_id(["data", "validate", "--help"], os.getcwd())
    assert f"submitted: {sid}" in r.stderr and not r.stdout.strip()


@slow
def test_down_stops_every_process_of_the_cluster(head):
    env, info = head
    pids = cluster.cluster_pids(info.temp_dir, info.pids)
    assert pids
    r = _run(env, "cluster", "down")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stopped"), r.stdout
    assert not [p for p in pids + info.pids if cluster._alive(p)]
    assert not cluster.cluster_pids(info.temp_dir)
    assert "no cluster is running" in _run(env, "cluster", "status").stdout
    assert not Path(env["MDCTR_STATE"], "ray", "cluster.json").exists()


def test_default_address_inside_and_outside_a_ray_job(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert submit.default_address() is None  # the local cluster
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert submit.default_address() == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address, outside a job: not a job server
    assert submit.default_address() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # a job driver (e.g. a RayCronJob's tick)
    assert submit.default_address() == "http://10.0.0.5:8265"

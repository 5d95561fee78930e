"""``mdctr cadence schedule --print KIND``: the rendered crontab, systemd units and manifests."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
import yaml

from mdctr.core.errors import ConfigError
from mdctr.orchestration.cadence.schedule import KINDS, ScheduleSpec, on_calendar, render, tick_command

FULL = dict(config="/data/pipeline.yaml", mdctr="/opt/venv/bin/mdctr", state_url="postgresql://u@db/mdctr",
            ray_address="http://ray-head:8265", workdir="/srv/mdctr app", log="/var/log/mdctr.log",
            cron="30 5 * * MON-FRI", timezone="Europe/Berlin")
TICK = ["/opt/venv/bin/mdctr", "cadence", "tick", "--config", "/data/pipeline.yaml",
        "--state-url", "postgresql://u@db/mdctr"]


def _manifest(kind: str, spec: ScheduleSpec) -> dict:
    text = render(kind, spec)
    assert text.startswith("# ")  # the comment lines explaining what to edit
    return yaml.safe_load(text)


def _calendar_ok(value: str) -> None:
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "calendar", value], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr


def test_tick_command():
    assert tick_command(ScheduleSpec(**FULL)) == TICK
    assert tick_command(ScheduleSpec(config="c.yaml")) == ["mdctr", "cadence", "tick", "--config", "c.yaml"]


def test_crontab_line():
    text = render("crontab", ScheduleSpec(**FULL))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "CRON_TZ=Europe/Berlin"
    assert len(lines) == 2
    fields = lines[1].split(maxsplit=5)
    assert fields[:5] == ["30", "5", "*", "*", "MON-FRI"]
    words = shlex.split(fields[5])
    assert words[:3] == ["cd", "/srv/mdctr app", "&&"]
    assert words[3] == "RAY_ADDRESS=http://ray-head:8265"
    assert words[4:4 + len(TICK)] == TICK
    assert words[4 + len(TICK):] == [">>", "/var/log/mdctr.log", "2>&1"]
    assert "idempotent" in text and "exclusive" in text


def test_crontab_minimal_and_percent():
    text = render("crontab", ScheduleSpec(config="c%d.yaml"))
    line = text.splitlines()[-1]
    assert "CRON_TZ=UTC" in text.splitlines()
    assert line.split(maxsplit=5)[:5] == ["0", "6", "*", "*", "*"]
    assert line.split(maxsplit=5)[5] == r"mdctr cadence tick --config c\%d.yaml"  # % ends a cron command
    assert "RAY_ADDRESS" not in line and "cd " not in line and ">>" not in line


def test_systemd_units():
    text = render("systemd", ScheduleSpec(**FULL))
    service, timer = text.split("# --- mdctr-cadence.timer ---")
    assert service.startswith("# --- mdctr-cadence.service ---")
    assert "Type=oneshot" in service.splitlines()
    assert "WorkingDirectory=/srv/mdctr app" in service.splitlines()
    assert 'Environment="RAY_ADDRESS=http://ray-head:8265"' in service.splitlines()
    execs = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert len(execs) == 1 and shlex.split(execs[0][len("ExecStart="):]) == TICK
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 05:30:00 Europe/Berlin" in timer.splitlines()
    assert "Persistent=true" in timer.splitlines()
    assert "Unit=mdctr-cadence.service" in timer.splitlines()
    minimal = render("systemd", ScheduleSpec(config="c.yaml"))
    assert "RAY_ADDRESS" not in minimal and "WorkingDirectory" not in minimal


def test_systemd_escapes_specifiers():
    text = render("systemd", ScheduleSpec(config="/d/50%_$HOME.yaml"))
    assert "ExecStart=mdctr cadence tick --config '/d/50%%_$$HOME.yaml'" in text.splitlines()


@pytest.mark.parametrize("cron, calendar", [
    ("0 6 * * *", "*-*-* 06:00:00 UTC"),
    ("5 23 * * *", "*-*-* 23:05:00 UTC"),
    ("0 6,18 * * *", "*-*-* 06,18:00:00 UTC"),
    ("15 4 * * 1", "Mon *-*-* 04:15:00 UTC"),
    ("15 4 * * sun", "Sun *-*-* 04:15:00 UTC"),
    ("15 4 * * 7", "Sun *-*-* 04:15:00 UTC"),
    ("0 2 * * 0,6", "Sat,Sun *-*-* 02:00:00 UTC"),
    ("0 2 * * MON-WED,FRI", "Mon,Tue,Wed,Fri *-*-* 02:00:00 UTC"),
])
def test_on_calendar(cron, calendar):
    assert on_calendar(cron, "UTC") == calendar
    _calendar_ok(calendar)


def test_on_calendar_timezone():
    value = on_calendar("0 6 * * *", "America/New_York")
    assert value == "*-*-* 06:00:00 America/New_York"
    _calendar_ok(value)


@pytest.mark.parametrize("cron", ["*/15 * * * *", "0 6 1 * *", "0 6 * 1 *", "0 */2 * * *", "0 1-5 * * *",
                                  "0 6 * * */2"])
def test_on_calendar_unsupported(cron):
    with pytest.raises(ConfigError, match="cron.*crontab.*--cron"):
        on_calendar(cron)
    with pytest.raises(ConfigError, match="cron"):
        render("systemd", ScheduleSpec(config="c.yaml", cron=cron))
    render("crontab", ScheduleSpec(config="c.yaml", cron=cron))  # crontab takes any valid expression


def test_k8s_cronjob():
    m = _manifest("k8s-cronjob", ScheduleSpec(**FULL))
    assert (m["apiVersion"], m["kind"], m["metadata"]["name"]) == ("batch/v1", "CronJob", "mdctr-cadence")
    spec = m["spec"]
    assert spec["schedule"] == "30 5 * * MON-FRI"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 3600
    assert spec["successfulJobsHistoryLimit"] == spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "rayproject/ray:2.60.0-py311-cpu"
    assert container["command"] == TICK
    assert container["env"] == [{"name": "RAY_ADDRESS", "value": "http://ray-head:8265"}]
    assert container["volumeMounts"] == [{"name": "mdctr-data", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "mdctr-data", "persistentVolumeClaim": {"claimName": "mdctr-data"}}]


def test_k8s_cronjob_without_address():
    m = _manifest("k8s-cronjob", ScheduleSpec(config="/data/c.yaml", name="nightly", timezone="UTC"))
    assert m["metadata"]["name"] == "nightly"
    assert m["spec"]["timeZone"] == "UTC"
    (container,) = m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mdctr", "cadence", "tick", "--config", "/data/c.yaml"]
    assert "env" not in container


def test_raycronjob():
    m = _manifest("raycronjob", ScheduleSpec(**FULL))
    assert (m["apiVersion"], m["kind"], m["metadata"]["name"]) == ("ray.io/v1", "RayCronJob", "mdctr-cadence")
    spec = m["spec"]
    assert set(spec) <= {"schedule", "timeZone", "suspend", "jobTemplate"}  # KubeRay's RayCronJobSpec
    assert spec["schedule"] == "30 5 * * MON-FRI"
    assert spec["timeZone"] == "Europe/Berlin"
    job = spec["jobTemplate"]
    assert shlex.split(job["entrypoint"]) == TICK
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0
    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "rayproject/ray:2.60.0-py311-cpu"
    assert head["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mdctr-data"
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["groupName"] and workers["template"]["spec"]["containers"][0]["image"]
    assert "RAY_ADDRESS" not in render("raycronjob", ScheduleSpec(**FULL)).split("apiVersion:")[1]


def test_every_kind_renders_defaults():
    for kind in KINDS:
        text = render(kind, ScheduleSpec(config="c.yaml"))
        assert text.startswith("# ") and text.endswith("\n") and "c.yaml" in text


@pytest.mark.parametrize("cron", ["0 6 * *", "0 6 * * * *", "@daily", "60 6 * * *", "0 24 * * *", "0 6 0 * *",
                                  "0 6 * 13 *", "0 6 * * 8", "0 6 * * FOO", "0 6 * JAN-MON *", "0 6 ? * *",
                                  "0 6 * * */0", "0 6 * * 5-1", "0 MON * * *", "*-5 6 * * *"])
def test_bad_cron(cron):
    with pytest.raises(ConfigError, match="cron"):
        ScheduleSpec(config="c.yaml", cron=cron)


@pytest.mark.parametrize("cron", ["*/15 * * * *", "0 6 1,15 * *", "0 6 * JAN-MAR,dec *", "0 0-23/2 * * 1-5",
                                  "0 6 * * SUN-SAT"])
def test_good_cron(cron):
    assert ScheduleSpec(config="c.yaml", cron=cron).cron == cron


@pytest.mark.parametrize("name", ["Mdctr", "mdctr_cadence", "-mdctr", "mdctr-", "", "a" * 53, "m.c"])
def test_bad_name(name):
    with pytest.raises(ConfigError, match="name"):
        ScheduleSpec(config="c.yaml", name=name)


def test_name_limit():
    assert ScheduleSpec(config="c.yaml", name="a" * 52).name == "a" * 52


def test_other_fields():
    with pytest.raises(ConfigError, match="config"):
        ScheduleSpec(config=" ")
    with pytest.raises(ConfigError, match="log"):
        ScheduleSpec(config="c.yaml", log="a\nb")
    with pytest.raises(ConfigError, match="timezone"):
        ScheduleSpec(config="c.yaml", timezone="Europe Berlin")


def test_unknown_kind():
    with pytest.raises(ConfigError, match="--print.*crontab, systemd, k8s-cronjob, raycronjob"):
        render("anacron", ScheduleSpec(config="c.yaml"))

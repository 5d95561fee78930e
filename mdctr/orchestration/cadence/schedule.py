"""``mdctr cadence schedule --print KIND``: a ready-to-use scheduler entry running the tick.

Every kind runs the same command, ``mdctr cadence tick --config C [--state-url URL]``, on
``ScheduleSpec.cron``. The tick is idempotent and exclusive (it takes a lock in its state
database), so the scheduler needs no overlap protection of its own and a missed run is caught
up by the next one. Kinds:

- ``crontab``: a ``CRON_TZ=`` line and one crontab line (``cd``, ``RAY_ADDRESS``, log file).
- ``systemd``: a ``Type=oneshot`` service and a ``Persistent=true`` timer; the cron expression
  is converted to ``OnCalendar=`` (``M H * * *`` and ``M H * * DOW`` only).
- ``k8s-cronjob``: a ``batch/v1`` CronJob whose pod runs the tick against ``RAY_ADDRESS``.
- ``raycronjob``: KubeRay's ``ray.io/v1`` RayCronJob (alpha, KubeRay >= 1.6): each run creates
  a RayCluster whose RayJob ``entrypoint`` is the tick. Its ``spec`` is ``schedule``,
  ``timeZone``, ``suspend`` and ``jobTemplate`` (a RayJobSpec), as in KubeRay's CRD
  ``ray-operator/config/crd/bases/ray.io_raycronjobs.yaml``.

``workdir`` applies to crontab and systemd, ``log`` to crontab only (systemd logs to the
journal, Kubernetes to the pod); the k8s kinds mount the example volume instead.

>>> print(render("crontab", ScheduleSpec(config="pipeline.yaml")).splitlines()[-1])
0 6 * * * mdctr cadence tick --config pipeline.yaml
>>> on_calendar("30 6 * * 1-5", "UTC")
'Mon,Tue,Wed,Thu,Fri *-*-* 06:30:00 UTC'
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from mdctr.core.errors import ConfigError

__all__ = ["KINDS", "ScheduleSpec", "on_calendar", "render", "tick_command"]

KINDS = ("crontab", "systemd", "k8s-cronjob", "raycronjob")

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# name, lowest, highest, names (the first name has the value ``lowest``)
_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day-of-month", 1, 31, ()),
                ("month", 1, 12, _MONTHS), ("day-of-week", 0, 7, _DAYS))
_CRON_ITEM = re.compile(r"(\*|[0-9]+|[A-Za-z]{3})(?:-([0-9]+|[A-Za-z]{3}))?(?:/([0-9]+))?")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_K8S_NAME_MAX = 52  # a CronJob's name: 52 characters, so its Jobs' names (+ 11) fit in 63
_TIMEZONE = re.compile(r"[A-Za-z0-9_+\-/]+")
_DATA_VOLUME = "mdctr-data"  # the example PersistentVolumeClaim, mounted at /data
_DATA_MOUNT = "/data"


@dataclass(frozen=True)
class ScheduleSpec:
    """What to schedule, and how, for :func:`render`.

    Args:
        config: the pipeline config's path as the scheduled command sees it.
        mdctr: the mdctr executable (cron and systemd: give an absolute path, e.g. a venv's).
        cron: 5-field cron expression; default daily 06:00, after the day's data lands.
        name: the unit / Kubernetes object name (an RFC 1123 label, at most 52 characters).
        image: the container image of the k8s kinds; it must have mdctr installed (the stock
            Ray image does not: build one ``FROM`` it with ``pip install mdctr``).
        state_url: the tick's ``--state-url`` (default: the tick's own default).
        ray_address: the Ray cluster's dashboard address, passed as ``RAY_ADDRESS`` (crontab,
            systemd, k8s-cronjob); the raycronjob runs inside the cluster it creates.
        workdir: crontab/systemd: the directory to ``cd`` to first.
        log: crontab: the file stdout and stderr are appended to.
        timezone: the time zone ``cron`` is read in (IANA name).
    """

    config: str
    mdctr: str = "mdctr"
    cron: str = "0 6 * * *"
    name: str = "mdctr-cadence"
    image: str = "rayproject/ray:2.60.0-py311-cpu"  # must have mdctr installed
    state_url: str | None = None
    ray_address: str | None = None
    workdir: str | None = None
    log: str | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        for field in ("config", "mdctr", "image"):
            if not str(getattr(self, field)).strip():
                raise ConfigError(f"{field}: must not be empty")
        for field, value in vars(self).items():
            if isinstance(value, str) and ("\n" in value or "\r" in value):
                raise ConfigError(f"{field}: must be one line, got {value!r}")
        _check_cron(self.cron)
        if len(self.name) > _K8S_NAME_MAX or not _K8S_NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r}: must be a Kubernetes name: lowercase letters, digits and '-', "
                              f"starting and ending with a letter or digit, at most {_K8S_NAME_MAX} characters")
        if not _TIMEZONE.fullmatch(self.timezone):
            raise ConfigError(f"timezone {self.timezone!r}: must be a time zone name such as UTC or Europe/Berlin")


def _cron_value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    elif text.upper() in names:
        value = low + names.index(text.upper())
    else:
        named = f" or one of {', '.join(names)}" if names else ""
        raise ConfigError(f"cron: {field} field: {text!r} is not a number{named}")
    if not low <= value <= high:
        raise ConfigError(f"cron: {field} field: {value} is outside {low}-{high}")
    return value


def _check_cron(cron: str) -> list[str]:
    """The 5 fields of ``cron``; ConfigError naming ``cron`` if it is not a valid expression."""
    fields = cron.split()
    if len(fields) != 5:
        raise ConfigError(f"cron {cron!r}: must have 5 fields (minute hour day-of-month month day-of-week), "
                          f"got {len(fields)}")
    for text, (field, low, high, names) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            m = _CRON_ITEM.fullmatch(item)
            if m is None or (m[1] == "*" and m[2] is not None):
                raise ConfigError(f"cron {cron!r}: {field} field: {item!r} is not *, N, N-M, a list or a /step")
            if m[1] != "*":
                start = _cron_value(m[1], field, low, high, names)
                if m[2] is not None and _cron_value(m[2], field, low, high, names) < start:
                    raise ConfigError(f"cron {cron!r}: {field} field: range {item!r} goes backwards")
            if m[3] is not None and int(m[3]) == 0:
                raise ConfigError(f"cron {cron!r}: {field} field: step 0 in {item!r}")
    return fields


def tick_command(spec: ScheduleSpec) -> list[str]:
    """``[mdctr, "cadence", "tick", "--config", C]`` (+ ``["--state-url", URL]``)."""
    argv = [spec.mdctr, "cadence", "tick", "--config", spec.config]
    return argv + (["--state-url", spec.state_url] if spec.state_url else [])


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.strip().splitlines())


def _crontab(spec: ScheduleSpec) -> str:
    parts = [f"cd {shlex.quote(spec.workdir)} &&"] if spec.workdir else []
    if spec.ray_address:
        parts.append(f"RAY_ADDRESS={shlex.quote(spec.ray_address)}")
    parts.append(shlex.join(tick_command(spec)))
    if spec.log:
        parts.append(f">> {shlex.quote(spec.log)} 2>&1")
    command = " ".join(parts).replace("%", r"\%")  # an unescaped % ends a crontab command
    head = _comment(f"""
mdctr cadence: run the retraining tick on '{spec.cron}' ({spec.timezone}). Install with `crontab -e`.
The tick is idempotent and exclusive (a lock in its state database): a run that overlaps a
still-running one does nothing twice, so no `flock -n` wrapper is needed, and a missed run
is caught up by the next tick.
cron's PATH is short: give the absolute path of mdctr (--mdctr). CRON_TZ applies to every
line below it; it needs cronie or systemd-cron (Debian's cron ignores it: there, write the
time in the system's time zone).
""")
    return f"{head}CRON_TZ={spec.timezone}\n{spec.cron} {command}\n"


def on_calendar(cron: str, timezone: str = "UTC") -> str:
    """The systemd ``OnCalendar=`` value for ``M H * * *`` or ``M H * * DOW`` (M, H numbers or
    comma lists; DOW numbers or names, lists, ranges); ConfigError for any other expression."""
    minute, hour, dom, month, dow = _check_cron(cron)
    if not (re.fullmatch(r"[0-9]+(,[0-9]+)*", minute) and re.fullmatch(r"[0-9]+(,[0-9]+)*", hour)
            and dom == "*" and month == "*" and "/" not in dow):
        raise ConfigError(f"cron {cron!r}: systemd can only be given 'M H * * *' or 'M H * * DOW' here: "
                          f"use --print crontab or pass a simpler --cron")
    days = ""
    if dow != "*":
        numbers: list[int] = []
        for item in dow.split(","):
            start, _, end = item.partition("-")
            first = _cron_value(start, "day-of-week", 0, 7, _DAYS)
            last = _cron_value(end, "day-of-week", 0, 7, _DAYS) if end else first
            numbers += [d % 7 for d in range(first, last + 1) if d % 7 not in numbers]
        days = ",".join(_DAYS[d].title() for d in sorted(numbers, key=lambda d: (d + 6) % 7)) + " "  # Mon first
    hours = ",".join(f"{int(h):02d}" for h in hour.split(","))
    minutes = ",".join(f"{int(m):02d}" for m in minute.split(","))
    return f"{days}*-*-* {hours}:{minutes}:00 {timezone}"


def _unit_escape(value: str) -> str:
    return value.replace("%", "%%")  # systemd expands %-specifiers in these settings


def _systemd(spec: ScheduleSpec) -> str:
    calendar = on_calendar(spec.cron, spec.timezone)
    service = [f"# --- {spec.name}.service ---",
               _comment(f"""
Save as /etc/systemd/system/{spec.name}.service (or ~/.config/systemd/user/ with --user),
then: systemctl daemon-reload && systemctl enable --now {spec.name}.timer
ExecStart needs mdctr by absolute path (--mdctr) unless it is in /usr/local/bin or /usr/bin.
""").rstrip(),
               "[Unit]", "Description=mdctr cadence tick (scheduled retraining)",
               "Wants=network-online.target", "After=network-online.target", "",
               "[Service]", "Type=oneshot"]
    if spec.workdir:
        service.append(f"WorkingDirectory={_unit_escape(spec.workdir)}")
    if spec.ray_address:
        escaped = spec.ray_address.replace("\\", "\\\\").replace('"', '\\"')
        service.append(f'Environment="RAY_ADDRESS={_unit_escape(escaped)}"')
    command = _unit_escape(shlex.join(tick_command(spec))).replace("$", "$$")  # ExecStart expands $VAR
    service.append(f"ExecStart={command}")
    timer = [f"# --- {spec.name}.timer ---",
             _comment("""
Persistent=true: a run missed while the machine was off fires at boot; the tick catches up.
The tick is idempotent and exclusive, so an overlapping start is harmless.
""").rstrip(),
             "[Unit]", f"Description=Run {spec.name}.service on '{spec.cron}' ({spec.timezone})", "",
             "[Timer]", f"OnCalendar={calendar}", "Persistent=true", f"Unit={spec.name}.service", "",
             "[Install]", "WantedBy=timers.target"]
    return "\n".join(service) + "\n\n" + "\n".join(timer) + "\n"


def _yaml(head: str, manifest: dict) -> str:
    return _comment(head) + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=1000)


def _data_volume() -> list[dict]:
    return [{"name": _DATA_VOLUME, "persistentVolumeClaim": {"claimName": _DATA_VOLUME}}]


def _container(name: str, spec: ScheduleSpec, **fields) -> dict:
    return {"name": name, "image": spec.image, **fields,
            "volumeMounts": [{"name": _DATA_VOLUME, "mountPath": _DATA_MOUNT}]}


def _k8s_cronjob(spec: ScheduleSpec) -> dict:
    extra = {"env": [{"name": "RAY_ADDRESS", "value": spec.ray_address}]} if spec.ray_address else {}
    pod = {"restartPolicy": "Never",
           "containers": [_container("tick", spec, command=tick_command(spec), **extra)],
           "volumes": _data_volume()}
    return {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": spec.name},
        "spec": {"schedule": spec.cron, "timeZone": spec.timezone, "concurrencyPolicy": "Forbid",
                 "startingDeadlineSeconds": 3600, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                 "jobTemplate": {"spec": {"backoffLimit": 0,  # the tick retries failed runs itself
                                          "template": {"spec": pod}}}},
    }


def _raycronjob(spec: ScheduleSpec) -> dict:
    version = re.search(r":([0-9]+\.[0-9]+\.[0-9]+)", spec.image)
    head_ports = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                  {"containerPort": 10001, "name": "client"}]
    cluster = {
        **({"rayVersion": version[1]} if version else {}),
        "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
            "containers": [_container("ray-head", spec, ports=head_ports)], "volumes": _data_volume()}}},
        "workerGroupSpecs": [{"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                              "rayStartParams": {}, "template": {"spec": {
                                  "containers": [_container("ray-worker", spec)], "volumes": _data_volume()}}}],
    }
    job = {"entrypoint": shlex.join(tick_command(spec)), "backoffLimit": 0, "shutdownAfterJobFinishes": True,
           "ttlSecondsAfterFinished": 600, "rayClusterSpec": cluster}
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": spec.name},
            "spec": {"schedule": spec.cron, "timeZone": spec.timezone, "jobTemplate": job}}


_K8S_HEAD = f"""
Edit before `kubectl apply -f`: the image (it must have mdctr installed) and the volume. The
config, the dataset and the store (with the tick's SQLite state, unless --state-url names a
database server) must be on a volume shared with the Ray cluster's pods: here the
PersistentVolumeClaim {_DATA_VOLUME!r} mounted at {_DATA_MOUNT}, so paths in the config start with {_DATA_MOUNT}.
"""


def _render_k8s_cronjob(spec: ScheduleSpec) -> str:
    return _yaml(f"""
mdctr cadence: a Kubernetes CronJob running the retraining tick on '{spec.cron}' ({spec.timezone}).
The tick submits the due runs as Ray jobs to RAY_ADDRESS (the Ray cluster's dashboard) and waits.
{_K8S_HEAD}
concurrencyPolicy Forbid and backoffLimit 0: the tick is exclusive and retries runs itself.
""", _k8s_cronjob(spec))


def _render_raycronjob(spec: ScheduleSpec) -> str:
    return _yaml(f"""
mdctr cadence: a KubeRay RayCronJob (ray.io/v1, alpha, KubeRay >= 1.6) on '{spec.cron}' ({spec.timezone}).
Each run creates a RayCluster (rayClusterSpec) whose RayJob entrypoint is the tick; the cluster
is deleted when it finishes (shutdownAfterJobFinishes). Size the worker group for training.
{_K8S_HEAD}
RayCronJob has no concurrencyPolicy: an overlapping tick finds the lock held and does nothing
twice, as long as both see the same state database. spec.timeZone is newer than KubeRay 1.6.0
(kuberay PR #4762): with an operator without it, delete that line (the schedule is then read in
the operator's time zone). Set spec.suspend: true to pause the schedule.
""", _raycronjob(spec))


_RENDER: dict[str, Callable[[ScheduleSpec], str]] = {
    "crontab": _crontab, "systemd": _systemd, "k8s-cronjob": _render_k8s_cronjob, "raycronjob": _render_raycronjob}


def render(kind: str, spec: ScheduleSpec) -> str:
    """The scheduler entry of ``kind`` (one of :data:`KINDS`) that runs the tick for ``spec``."""
    if kind not in _RENDER:
        raise ConfigError(f"--print {kind!r}: unknown schedule kind; choose one of {', '.join(KINDS)}")
    return _RENDER[kind](spec)

"""``mdctr cluster up|status|down``: one local Ray head node that mdctr owns (DESIGN.md §7).

``up`` runs ``ray start --head`` with its own temp dir and free ports, bound to 127.0.0.1
(FACTS.md: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; token auth off on a loopback-only
cluster), and records in ``<state_dir>/ray/cluster.json`` the addresses, the temp dir and the
PIDs of the processes it started. ``--host`` other than loopback binds that interface and
turns token auth on (the token is kept in ``<state_dir>/ray/auth_token``, mode 0600).

``down`` stops only that cluster's processes (never ``ray stop``, which stops every Ray
process on the machine): the recorded PIDs, every process whose command line names the
cluster's temp dir, and all their descendants (workers, agents, job entrypoints); SIGTERM,
then SIGKILL after a timeout, then a check that none is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mdctr.core.errors import InputError
from mdctr.core.io import state_dir

__all__ = ["ClusterInfo", "ClusterError", "client_env", "cluster_file", "down", "load", "running", "status", "up"]

LOOPBACK = ("127.0.0.1", "localhost")
#: unix socket paths must stay under ~107 bytes; Ray puts ``session_<stamp>/sockets/plasma_store``
#: (about 62 bytes) under the temp dir
_MAX_TEMP_DIR = 36
_SHORT_PREFIX = "mdctr-ray-"


class ClusterError(InputError):
    """The local cluster cannot be started, reached or stopped."""


@dataclass
class ClusterInfo:
    """What ``up`` recorded about the cluster it started."""

    address: str  # GCS address host:port (ray.init(address=...))
    dashboard: str  # http://host:port (job server, state API)
    temp_dir: str
    host: str
    num_cpus: int | None
    auth_mode: str  # "disabled" or "token"
    token_path: str | None = None
    pids: list[int] = field(default_factory=list)
    started_at: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def ray_dir() -> Path:
    return state_dir() / "ray"


def cluster_file() -> Path:
    return ray_dir() / "cluster.json"


def ray_executable() -> str:
    """This environment's ``ray`` script (the venv's, next to the running Python)."""
    cand = Path(sys.executable).parent / "ray"
    return str(cand) if cand.exists() else "ray"


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def client_env(info: ClusterInfo | None = None) -> dict[str, str]:
    """Environment variables a process needs to run or talk to the cluster ``info``."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if info is None or _is_loopback(info.host):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every listener on 127.0.0.1 (FACTS.md)
        env["RAY_AUTH_MODE"] = "disabled"
    else:
        env["RAY_AUTH_MODE"] = "token"
        if info.token_path:
            env["RAY_AUTH_TOKEN_PATH"] = info.token_path
    return env


def apply_client_env(info: ClusterInfo | None) -> None:
    """Set :func:`client_env` in this process (before Ray's client code reads it)."""
    os.environ.update(client_env(info))
    if info is not None and info.auth_mode == "disabled":
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


# --- processes --------------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode(errors="replace").split("\0") if a]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _names_dir(args: list[str], temp_dir: str) -> bool:
    prefix = temp_dir.rstrip("/")
    for a in args:
        i = a.find(prefix)
        while i >= 0:
            end = i + len(prefix)
            if end == len(a) or a[end] in "/ ,;'\"":
                return True
            i = a.find(prefix, i + 1)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie has exited


def cluster_pids(temp_dir: str, known: list[int] = ()) -> list[int]:
    """The cluster's live processes: the ``known`` PIDs still alive, those whose command line
    names ``temp_dir``, and all their descendants (this process excluded)."""
    me = os.getpid()
    pids = _all_pids()
    parent = {p: _ppid(p) for p in pids}
    roots = {p for p in pids if p != me and _names_dir(_cmdline(p), temp_dir)}
    roots |= {p for p in known if p in parent and _alive(p)}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= frontier
    found.discard(me)
    return sorted(p for p in found if _alive(p))


def _owned_alive(info: ClusterInfo) -> list[int]:
    """Recorded PIDs that are still this cluster's (alive, and not a reused PID)."""
    live = set(cluster_pids(info.temp_dir))
    return [p for p in info.pids if p in live]


# --- state ------------------------------------------------------------------------------------

def load() -> ClusterInfo | None:
    """The recorded cluster, if ``cluster.json`` exists (running or not)."""
    path = cluster_file()
    if not path.exists():
        return None
    try:
        return ClusterInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"unreadable cluster record ({exc}); remove it", file=path) from exc


def _save(info: ClusterInfo) -> None:
    path = cluster_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def running() -> ClusterInfo | None:
    """The recorded cluster if its head processes are alive, else None."""
    info = load()
    if info is None:
        return None
    return info if _owned_alive(info) else None


def _temp_dir() -> Path:
    preferred = ray_dir() / "tmp"
    if len(str(preferred.resolve())) <= _MAX_TEMP_DIR:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred.resolve()
    # a deep state dir would make Ray's unix socket paths too long: a short private dir instead
    return Path(tempfile.mkdtemp(prefix=_SHORT_PREFIX))


def up(num_cpus: int | None = None, dashboard_port: int | None = None, host: str = "127.0.0.1",
       timeout: float = 120.0, log=None) -> tuple[ClusterInfo, bool]:
    """Start the local head node unless one is running; returns ``(info, started)``."""
    log = log or (lambda msg: None)
    current = running()
    if current is not None:
        return current, False
    stale = load()
    if stale is not None:  # recorded but dead: clear what may be left of it
        _stop_pids(cluster_pids(stale.temp_dir, stale.pids), timeout=10)
        cluster_file().unlink(missing_ok=True)
    if num_cpus is not None and num_cpus < 1:
        raise ClusterError(f"--num-cpus must be at least 1, got {num_cpus}")
    loopback = _is_loopback(host)
    if host == "localhost":
        host = "127.0.0.1"
    reach = "127.0.0.1" if loopback or host == "0.0.0.0" else host  # where clients connect
    probe = "127.0.0.1" if loopback else "0.0.0.0"
    if dashboard_port is None:
        dashboard_port = 8265 if _port_free(8265, probe) else None
    elif not _port_free(dashboard_port, probe):
        raise ClusterError(f"--dashboard-port {dashboard_port} is in use")
    ports = [p for p in _free_ports(6, probe) if p != dashboard_port]
    if dashboard_port is None:
        dashboard_port = ports.pop()
    gcs_port, client_port, agent_port, autoscaler_metrics, dashboard_metrics = ports[:5]
    temp_dir = _temp_dir()
    token_path = None
    auth_mode = "disabled" if loopback else "token"
    if not loopback:
        token = ray_dir() / "auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        token_path = str(token)
    info = ClusterInfo(address=f"{reach}:{gcs_port}", dashboard=f"http://{reach}:{dashboard_port}",
                       temp_dir=str(temp_dir), host=host, num_cpus=num_cpus, auth_mode=auth_mode,
                       token_path=token_path, started_at=time.time())
    cmd = [ray_executable(), "start", "--head", "--disable-usage-stats",
           "--include-dashboard=true", f"--dashboard-host={host}", f"--dashboard-port={dashboard_port}",
           f"--temp-dir={temp_dir}", f"--port={gcs_port}",
           f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if not loopback and host != "0.0.0.0":
        cmd.append(f"--node-ip-address={host}")
    # jobs inherit the head's PATH: this environment's scripts (mdctr, ray) come first, so a
    # `ray job submit ... -- mdctr ...` entrypoint runs this installation
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, *(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != bin_dir)])
    env = {**os.environ, **client_env(info), "PATH": path,
           # fixed by default (44217, 44227): a second cluster on the machine would collide
           "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics), "DASHBOARD_METRIC_PORT": str(dashboard_metrics)}
    if loopback:
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    log(f"starting Ray head (temp dir {temp_dir})")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        _stop_pids(cluster_pids(str(temp_dir)), timeout=10)
        raise ClusterError(f"'ray start' did not finish within {timeout:.0f} s") from exc
    pids = cluster_pids(str(temp_dir))
    if proc.returncode != 0:
        _stop_pids(pids, timeout=10)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise ClusterError(f"'ray start' failed: {lines[-1] if lines else proc.returncode}")
    info.pids = pids
    _save(info)
    return info, True


# --- status -----------------------------------------------------------------------------------

def status(info: ClusterInfo) -> dict:
    """Nodes, CPUs and jobs of the running cluster, from the dashboard (state API, job server)."""
    apply_client_env(info)
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=info.dashboard, detail=True, timeout=10)
        jobs = JobSubmissionClient(info.dashboard).list_jobs()
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the same to the user
        raise ClusterError(f"cluster at {info.dashboard} does not answer: {' '.join(str(exc).split())[:200]}") from exc
    alive = [n for n in nodes if n.state == "ALIVE"]
    return {
        "address": info.address,
        "dashboard": info.dashboard,
        "auth": info.auth_mode,
        "nodes": len(alive),
        "cpus": sum(n.resources_total.get("CPU", 0) for n in alive),
        "jobs": [{"id": j.submission_id or j.job_id, "status": str(getattr(j.status, "value", j.status)),
                  "entrypoint": j.entrypoint} for j in jobs],
        "pids": _owned_alive(info),
    }


# --- down -------------------------------------------------------------------------------------

def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _stop_pids(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids``, SIGKILL the ones left after ``timeout``; returns those still alive."""
    if not pids:
        return []
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    _signal([p for p in pids if _alive(p)], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def down(timeout: float = 5.0) -> tuple[ClusterInfo | None, list[int]]:
    """Stop the recorded cluster; returns ``(info or None if none recorded, PIDs stopped)``."""
    info = load()
    if info is None:
        return None, []
    stopped: list[int] = []
    for _ in range(3):  # processes may spawn children while being stopped
        pids = cluster_pids(info.temp_dir, info.pids)
        if not pids:
            break
        stopped += pids
        left = _stop_pids(pids, timeout)
        if left:
            raise ClusterError(f"processes {left} of the cluster survived SIGKILL")
    left = cluster_pids(info.temp_dir, info.pids)
    if left:
        raise ClusterError(f"processes {left} of the cluster are still running")
    cluster_file().unlink(missing_ok=True)
    if Path(info.temp_dir).name.startswith(_SHORT_PREFIX):  # the private short dir _temp_dir made
        shutil.rmtree(info.temp_dir, ignore_errors=True)
    return info, sorted(set(stopped))

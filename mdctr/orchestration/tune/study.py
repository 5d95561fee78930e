"""``mdctr tune``: an Optuna study of a train config's ``tune:`` space.

- **Sampler and pruner**: TPE (multivariate, seeded; each parallel worker seeded apart, with
  the constant liar so workers do not pick the same point), and a median pruner fed by the
  training's per-epoch validation score (``tune.pruner``; ``none`` turns it off).
- **Storage**: Optuna's own. By default a journal file under the state directory
  (``STATE/tune/<study>.journal``, ``JournalFileBackend``: safe for several processes on one
  machine); ``--storage`` takes an RDB URL (``sqlite:///...``, ``postgresql://...``) for
  several machines, or a journal file path. ``optuna-dashboard <storage>`` opens either.
- **Trials in parallel**: K workers, each a Ray task (one CPU) on the local or given cluster
  that loads the study and runs trials until the study has ``trials`` of them (Optuna's
  ``MaxTrialsCallback``); ``--parallel 1`` without a cluster runs them in this process. A
  failed trial is recorded as failed with its error and the study goes on.
- **Names**: the default study name is ``<config stem>-<hash of the config and space>``, so
  re-running a changed config never mixes its trials into an old study; an existing study
  is continued only with ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from mdctr.core.config import dump_model
from mdctr.core.errors import ConfigError
from mdctr.core.io import format_table, state_dir
from mdctr.orchestration.tune.objective import Objective
from mdctr.orchestration.tune.space import apply, check_space
from mdctr.platform.config import TrainConfig

log = logging.getLogger("mdctr.tune")

DIRECTIONS = {"valid_wauc": "maximize", "valid_auc": "maximize", "valid_logloss": "minimize"}


def default_study_name(config: Path, cfg: TrainConfig) -> str:
    blob = json.dumps(cfg.model_dump(mode="json", exclude={"resources"}), sort_keys=True).encode()
    return f"{Path(config).stem}-{hashlib.sha256(blob).hexdigest()[:8]}"


def storage_for(url: str | None, study: str, *, create: bool = True):
    """The Optuna storage: an RDB URL, a journal file path, or the default journal file (a
    journal file that does not exist is made only with ``create``)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is not None and "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable database: the user's input
            raise ConfigError(f"--storage: cannot open {url} ({' '.join(str(exc).split())[:200]})") from None
    path = Path(url) if url is not None else state_dir() / "tune" / f"{study}.journal"
    if path.is_dir():
        raise ConfigError("--storage: is a directory (give a journal file or a database URL)", file=path)
    if not create and not path.exists():
        raise ConfigError(f"--study: no study {study!r} (no journal file {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def latest_study(url: str | None) -> str:
    """The study ``tune show`` reports when no ``--study`` is given: the most recently
    written journal file under the state directory, or in ``--storage`` the study started
    last."""
    import optuna

    if url is None:
        journals = sorted((state_dir() / "tune").glob("*.journal"), key=lambda p: p.stat().st_mtime)
        if not journals:
            raise ConfigError(f"--study: no study in {state_dir() / 'tune'} (run mdctr tune first)")
        return journals[-1].stem
    if "://" not in url and not Path(url).exists():
        raise ConfigError("--storage: no such journal file", file=url)
    summaries = optuna.get_all_study_summaries(storage_for(url, "", create=False), include_best_trial=False)
    if not summaries:
        raise ConfigError(f"--study: no study in {url}")
    return max(summaries, key=lambda s: (s.datetime_start is not None, s.datetime_start or 0)).study_name


def storage_label(url: str | None, study: str) -> str:
    return url if url is not None else str(state_dir() / "tune" / f"{study}.journal")


def _sampler(cfg: TrainConfig, worker: int, existing: int = 0):
    """TPE seeded by the study's seed and the worker; a resumed study (``existing`` trials)
    gets another seed, or its random start-up trials would repeat the first run's."""
    import optuna

    seed = cfg.tune.seed + worker + 7919 * existing
    return optuna.samplers.TPESampler(multivariate=True, seed=seed, constant_liar=True)


def _pruner(cfg: TrainConfig):
    import optuna

    p = cfg.tune.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)


def open_study(cfg: TrainConfig, name: str, storage_url: str | None, *, create: bool, resume: bool = False,
               worker: int = 0):
    import optuna

    storage = storage_for(storage_url, name, create=create)
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if create and exists and not resume:
        raise ConfigError(f"--study: study {name!r} exists in {storage_label(storage_url, name)} "
                          f"(pass --resume to continue it, or another --study)")
    if not create and not exists:
        raise ConfigError(f"--study: no study {name!r} in {storage_label(storage_url, name)}")
    kw = {}
    if cfg is not None:
        kw = dict(sampler=_sampler(cfg, worker), pruner=_pruner(cfg))
    if create:
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                   direction=DIRECTIONS[cfg.tune.objective], **kw)
    study = optuna.load_study(study_name=name, storage=storage, **kw)
    if cfg is not None and study.trials:
        study.sampler = _sampler(cfg, worker, len(study.trials))
    return study


def fail_abandoned(study) -> list[int]:
    """Trials an earlier, stopped run left ``RUNNING`` (a killed process never tells the
    storage) are marked failed, so they stop counting as running and the report says why.
    ``--resume`` assumes no other process is running the study at the same time."""
    from optuna.trial import TrialState

    left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for t in left:
        study._storage.set_trial_user_attr(t._trial_id, "error", "left running by a run that stopped (--resume)")
        study.tell(t.number, state=TrialState.FAIL)
    if left:
        log.warning("marked %d trial(s) an earlier run left running as failed: %s", len(left),
                    ", ".join(str(t.number) for t in left))
    return [t.number for t in left]


def run_worker(cfg: TrainConfig, name: str, storage_url: str | None, root: str, worker: int) -> int:
    """One worker: trials until the study has ``tune.trials`` of them; returns how many it ran."""
    import optuna
    import torch
    from optuna.study import MaxTrialsCallback

    from mdctr.platform.quiet import quiet_library_warnings

    quiet_library_warnings()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if os.environ.get("MDCTR_TUNE_THREADS"):
        torch.set_num_threads(int(os.environ["MDCTR_TUNE_THREADS"]))
    study = open_study(cfg, name, storage_url, create=False, worker=worker)
    before = len(study.trials)
    study.optimize(Objective(cfg, root), catch=(Exception,), gc_after_trial=True,
                   callbacks=[MaxTrialsCallback(cfg.tune.trials, states=None)])
    return len(study.trials) - before


@dataclass
class TuneResult:
    study: str
    storage: str
    best_config: Path | None
    table: str


def tune(config: Path, cfg: TrainConfig, *, trials: int | None = None, parallel: int = 1,
         storage: str | None = None, study: str | None = None, resume: bool = False,
         out: Path | None = None, address: str | None = None) -> TuneResult:
    """Run the study; returns its report (also written next to the best config)."""
    check_space(cfg)  # every path and value, before any trial runs
    if trials is not None:
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {trials}")
        cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": trials})})
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    name = study or default_study_name(config, cfg)
    root = Path(out) if out is not None else Path("runs") / "tune" / name
    if root.exists() and not root.is_dir():
        raise ConfigError("--out: is a file (trials' run directories go there)", file=root)
    opened = open_study(cfg, name, storage, create=True, resume=resume)
    if resume:
        fail_abandoned(opened)
    root.mkdir(parents=True, exist_ok=True)
    if parallel == 1 and address is None:
        run_worker(cfg, name, storage, str(root.absolute()), 0)
    else:
        _run_on_ray(cfg, name, storage, root.absolute(), parallel, address)
    return report(name, storage, cfg=cfg, out=root)


def _run_on_ray(cfg: TrainConfig, name: str, storage: str | None, root: Path, parallel: int,
                address: str | None) -> None:
    from mdctr.orchestration.ray import cluster
    from mdctr.orchestration.ray.train import ray_session

    label = storage_label(storage, name)  # the workers open the same journal file or database
    local = cluster.running() if address is None else None
    if local is not None:  # `mdctr cluster up`'s cluster: the trials run there
        cluster.apply_client_env(local)
        address = local.address
    with ray_session(parallel) if address is None else _connect(address, loopback=local is not None):
        import ray

        worker = ray.remote(num_cpus=1, max_retries=0)(run_worker)
        env = {"runtime_env": {"env_vars": {"MDCTR_TUNE_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}}}
        done = ray.get([worker.options(**env).remote(cfg, name, label, str(root), i) for i in range(parallel)])
    log.info("%d trials on %d Ray workers", sum(done), parallel)


@contextmanager
def _connect(address: str, *, loopback: bool) -> Iterator[None]:
    """Connected to the cluster at ``address`` meanwhile (as a loopback-only client for the
    local ``mdctr cluster``)."""
    import ray

    from mdctr.orchestration.ray.train import loopback_only

    with loopback_only() if loopback else nullcontext():
        ray.init(address=address)
        try:
            yield
        finally:
            ray.shutdown()


def report(name: str, storage: str | None, *, cfg: TrainConfig | None = None, out: Path | None = None,
           top: int = 10) -> TuneResult:
    """The best trials, parameter importances and (with ``cfg``) the best config as YAML."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(None, name, storage, create=False)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(done, key=lambda t: t.value, reverse=reverse)[:top]
    rows = [{"trial": t.number, "value": round(t.value, 6), "epochs": t.user_attrs.get("epochs", "-"),
             **{k: v for k, v in t.params.items()}} for t in ranked]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                         TrialState.FAIL, TrialState.RUNNING)}
    lines = [f"study {name} ({storage_label(storage, name)}): {len(trials)} trials, "
             + ", ".join(f"{v} {k}" for k, v in counts.items())]
    lines.append(format_table(rows) if rows else "no completed trial")
    if len(done) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
            lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
        except (RuntimeError, ValueError) as exc:  # e.g. every trial with the same value
            lines.append(f"importance: not available ({exc})")
    for t in trials:
        if t.state == TrialState.FAIL:
            lines.append(f"trial {t.number} failed: {t.user_attrs.get('error') or t.system_attrs.get('fail_reason', '')}")
    best_path = None
    if cfg is not None and out is not None and done:
        best = ranked[0]
        best_cfg = apply(cfg, _params(cfg, best.params))
        best_path = out / "best.yaml"
        dump_model(best_cfg, best_path)
        lines.append(f"best: trial {best.number}, {study.direction.name.lower()} {cfg.tune.objective} "
                     f"{best.value:.6f} -> {best_path} (mdctr train --config {best_path} --out ...)")
    text = "\n".join(lines)
    if out is not None:
        (out / "report.txt").write_text(text + "\n")
    return TuneResult(name, storage_label(storage, name), best_path, text)


def _params(cfg: TrainConfig, params: dict) -> dict:
    """A trial's stored parameters as config values (list choices are stored as JSON text)."""
    space = check_space(cfg)
    out = {}
    for path, value in params.items():
        spec = space[path]
        if spec.categorical is not None and isinstance(value, str) and value not in spec.categorical:
            value = json.loads(value)
        out[path] = value
    return out

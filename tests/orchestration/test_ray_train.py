"""Ray Train as a launcher: the same job on 2 Ray Train workers as on 2 local ranks, and a
worker killed mid-run that restarts, resumes from its last checkpoint and finishes.

The slow tests start one private local Ray cluster (loopback only, no dashboard, its own
temp dir) for the module and shut down only that cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date
from functools import partial
from pathlib import Path

import pytest

from mdctr.core.errors import ConfigError
from mdctr.platform.job import TrainerHooks
from mdctr.platform.run import resolve_config, train, train_jobs
from tests.platform import test_listeners
from tests.platform.test_listeners import LOOPBACK, listening
from tests.platform.conftest import _make_config

AUC_TOL = 0.003
EPOCHS = 2


def own_lines(err: str) -> list[str]:
    """stderr without the lines Ray forwards from an earlier test's workers and actors
    (``(Name pid=N) ...``, coloured), which can arrive at any time in this process."""
    return [line for line in err.strip().splitlines() if not re.match(r"^(\x1b\[\d+m)?\(\w+ pid=\d+", line)]


@pytest.fixture(scope="module")
def make_config():
    return _make_config


@pytest.fixture(scope="module")
def ml_gender() -> Path:
    from mdctr.domains.datasets import resolve_data

    return resolve_data("movielens-100k:gender")


# -- config and flags (fast) ------------------------------------------------------------------


def test_resources_section_defaults_and_strictness(make_config):
    cfg = make_config("d")
    assert (cfg.resources.workers, cfg.resources.use_gpu, cfg.resources.max_failures) == (1, False, 0)
    cfg = make_config("d", resources={"workers": 2, "max_failures": 1})
    assert cfg.resources.workers == 2
    for bad in ({"workers": 0}, {"max_failures": -1}, {"wrokers": 2}):
        with pytest.raises(Exception):
            make_config("d", resources=bad)
    # where the ranks run is not part of what the run is
    assert make_config("d", resources={"max_failures": 3}).fingerprint() == make_config("d").fingerprint()


def test_workers_sets_the_world_size(make_config):
    cfg = resolve_config(make_config("d"), workers=2)
    assert (cfg.resources.workers, cfg.world_size) == (2, 2)
    cfg = resolve_config(make_config("d", resources={"workers": 3}))
    assert cfg.world_size == 3
    assert resolve_config(make_config("d"), workers=1).world_size == 1
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        resolve_config(make_config("d"), workers=0)
    with pytest.raises(ConfigError, match="--world-size 3 differs"):
        resolve_config(make_config("d"), workers=2, world_size=3)


def test_cli_rejects_zero_workers(tmp_path, make_config, capsys):
    from mdctr.cli import main
    from mdctr.platform.config import save_train_config

    save_train_config(make_config("d"), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--workers", "0"]) == 2
    assert own_lines(capsys.readouterr().err) == ["mdctr: error: --workers must be >= 1, got 0"]
    assert not (tmp_path / "r").exists()


# -- on a local Ray cluster (slow) ------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    from ray import cloudpickle

    from mdctr.orchestration.ray.train import local_cluster

    temp = tempfile.mkdtemp(prefix="ray-t-")  # short: Ray's socket paths live under it
    # the hooks below travel to the workers by value (this module is not on their path)
    for module in (sys.modules[__name__], test_listeners):
        cloudpickle.register_pickle_by_value(module)
    try:
        with local_cluster(2, temp):  # ray.shutdown() at the end stops this cluster only
            yield
    finally:
        for module in (sys.modules[__name__], test_listeners):
            cloudpickle.unregister_pickle_by_value(module)
        shutil.rmtree(temp, ignore_errors=True)


def _config(data: Path):
    return _make_config(data, train={"epochs": EPOCHS, "patience": 2}, world_size=2)


@dataclass
class RecordListeners(TrainerHooks):
    """After the first epoch, every rank writes what its worker process listens on."""

    out: Path

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        import torch.distributed as dist

        if epoch == 0:
            seen = listening() if os.path.exists("/proc/self/net/tcp") else None
            (self.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(seen))
        return False


@pytest.fixture(scope="module")
def ray_run(ray_cluster, ml_gender, tmp_path_factory):
    """An undisturbed 2-worker Ray Train run: (run dir, metrics, seconds); its workers record
    their listening sockets in ``listeners/``."""
    from mdctr.orchestration.ray.train import RayTrainLauncher

    out = tmp_path_factory.mktemp("ray") / "run"
    (out.parent / "listeners").mkdir()
    t0 = time.perf_counter()
    metrics = train(_config(ml_gender), out, planner=partial(_with_hooks, RecordListeners(out.parent / "listeners")),
                    launcher=RayTrainLauncher(2))
    return out, metrics, time.perf_counter() - t0


@pytest.mark.slow
def test_ray_workers_match_local_ranks(ray_run, ml_gender, tmp_path):
    out, ray_metrics, ray_s = ray_run
    t0 = time.perf_counter()
    local = train(_config(ml_gender), tmp_path / "local")  # LocalLauncher, world size 2
    local_s = time.perf_counter() - t0
    print(f"\ntest AUC: ray {ray_metrics['auc']:.6f} ({ray_s:.1f}s), local world size 2 {local['auc']:.6f} "
          f"({local_s:.1f}s), diff {abs(ray_metrics['auc'] - local['auc']):.6f}")
    assert abs(ray_metrics["auc"] - local["auc"]) <= AUC_TOL
    assert abs(ray_metrics["wauc"] - local["wauc"]) <= AUC_TOL
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["last_epoch"] == EPOCHS - 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["listeners", "run"]  # Ray Train's storage is gone


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads /proc (Linux)")
def test_ray_train_workers_listen_on_loopback_only(ray_run):
    """No rendezvous store on every interface: each worker's sockets (Ray's own and gloo's)
    are on 127.0.0.1."""
    out, _, _ = ray_run
    for rank in range(2):
        seen = json.loads((out.parent / "listeners" / f"rank{rank}.json").read_text())
        assert seen, rank  # Ray's worker servers at least
        assert {addr for addr, _ in seen} <= LOOPBACK, (rank, seen)


@dataclass
class KillOnce(TrainerHooks):
    """On rank ``rank``, once (``marker``), after epoch ``epoch`` is checkpointed and
    recorded in ``state.json``: SIGKILL this worker process."""

    marker: Path
    ckpt_dir: Path
    epoch: int = 0
    rank: int = 1

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        import torch.distributed as dist

        if epoch != self.epoch or dist.get_rank() != self.rank or self.marker.exists():
            return False
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # rank 0 records the epoch right after the hooks
            try:
                if json.loads((self.ckpt_dir / "state.json").read_text())["last_epoch"] >= epoch:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
        return False


def _with_hooks(hooks, cfg, data_dir, run_dir, resume):
    return [replace(job, hooks=hooks) for job in train_jobs(cfg, data_dir, run_dir, resume)]


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes(ray_run, ml_gender, tmp_path):
    from mdctr.orchestration.ray.train import RayTrainLauncher
    from mdctr.platform.safe_dcp import CHECKSUMS

    _, undisturbed, _ = ray_run
    out = tmp_path / "run"
    hooks = KillOnce(tmp_path / "killed", out / "checkpoints")
    t0 = time.perf_counter()
    metrics = train(_config(ml_gender), out, planner=partial(_with_hooks, hooks),
                    launcher=RayTrainLauncher(2, max_failures=1, storage_path=tmp_path / "ray-storage"))
    seconds = time.perf_counter() - t0
    print(f"\nkilled and restarted: test AUC {metrics['auc']:.6f} ({seconds:.1f}s), undisturbed "
          f"{undisturbed['auc']:.6f}, diff {abs(metrics['auc'] - undisturbed['auc']):.6f}")
    assert (tmp_path / "killed").exists()  # the worker was killed
    log = (out / "train.log").read_text()
    assert "resumed from epoch 0" in log
    assert abs(metrics["auc"] - undisturbed["auc"]) <= AUC_TOL
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["auc"] == metrics["auc"] and set(on_disk["domains"]) == {"F", "M"}
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["last_epoch"] == EPOCHS - 1 and [h["epoch"] for h in state["history"]] == list(range(EPOCHS))
    epochs = [d for d in (out / "checkpoints").iterdir() if d.is_dir()]
    assert epochs and all((d / CHECKSUMS).is_file() for d in epochs)
    assert not list((tmp_path / "ray-storage").iterdir())  # Ray Train's copies are removed


@pytest.mark.slow
def test_worker_error_is_reraised(ray_cluster, ml_gender, tmp_path):
    """Without restarts, a worker's error reaches the caller as itself."""
    from mdctr.orchestration.ray.train import RayTrainLauncher

    with pytest.raises(RuntimeError, match="boom on rank 1"):
        train(_config(ml_gender), tmp_path / "run", planner=partial(_with_hooks, Boom()),
              launcher=RayTrainLauncher(2))
    assert not (tmp_path / "run").exists() or (tmp_path / "run" / "checkpoints").exists()


@dataclass
class Boom(TrainerHooks):
    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        import torch.distributed as dist

        if dist.get_rank() == 1:
            raise RuntimeError("boom on rank 1")
        return False


@pytest.mark.slow
def test_pipeline_stage_on_ray_workers_matches_local_ranks(ray_cluster, ads_data, pipeline_config, tmp_path, capsys):
    """``mdctr pipeline run tpm --workers 2``: the stage's ranks on two Ray Train workers give
    the version the local 2-process run gives (same rows, same validation AUC)."""
    from mdctr.cli import main
    from mdctr.core.config import dump_model
    from mdctr.orchestration.stages import Pipeline

    local_cfg = pipeline_config(ads_data, tmp_path / "local").model_copy(update={"world_size": 2})
    local, _ = Pipeline(local_cfg).run("tpm", date(2024, 3, 1))
    config = tmp_path / "pipeline.yaml"
    dump_model(pipeline_config(ads_data, tmp_path / "ray"), config)
    assert main(["pipeline", "run", "tpm", "--date", "2024-03-01", "--config", str(config), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "created tpm-2024-03-01-" in out
    assert "(RayTrainWorker pid=" in out  # the epochs were printed by Ray Train workers
    ray_cfg = pipeline_config(ads_data, tmp_path / "ray").model_copy(update={"world_size": 2})
    on_ray = Pipeline(ray_cfg).latest("tpm", date(2024, 3, 2))
    assert on_ray.version_id == local.version_id  # 2 workers are world size 2; nothing else differs
    assert on_ray.rows == local.rows
    assert on_ray.metrics["valid_auc"] == pytest.approx(local.metrics["valid_auc"], abs=AUC_TOL)


def test_pipeline_run_rejects_zero_workers(tmp_path, capsys):
    from mdctr.cli import main

    config = tmp_path / "pipeline.yaml"
    config.write_text(f"data: movielens-100k:ads\nstore: {tmp_path / 'store'}\n")
    assert main(["pipeline", "run", "tpm", "--date", "1998-03-01", "--config", str(config), "--workers", "0"]) == 2
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1 and "--workers" in err[0]
    assert not (tmp_path / "store").exists()

"""Ray Train as a :class:`~mdctr.platform.launcher.Launcher`: the ranks of a job run on Ray
Train workers.

:class:`RayTrainLauncher` starts a ``TorchTrainer`` whose workers each call
:func:`~mdctr.platform.job.run_job` with their world rank, in a process group (gloo on CPU,
NCCL with ``use_gpu``) set up as :class:`~mdctr.platform.launcher.LocalLauncher` sets up
its own (:class:`~mdctr.orchestration.ray.rendezvous.FileRendezvousConfig`: no TCP rendezvous store, which would listen on
every interface; each worker's transport on its node's own interface), so the job runs
exactly as it does locally. Every epoch, every worker calls
``ray.train.report`` with the epoch's metrics; rank 0 attaches the epoch's checkpoint
directory. When a worker dies, Ray Train restarts the worker group (up to
``max_failures`` times) and the job resumes from its own last checkpoint
(``ckpt_dir/state.json``; the run directory must be on a path every worker sees).

:func:`ray_session` connects to Ray: inside a Ray job (or with ``RAY_ADDRESS``) it joins
that cluster, otherwise it starts a private local cluster whose listeners bind loopback
only, and shuts it down afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from mdctr.core.environ import scoped_env
from mdctr.platform.job import Job, TrainerHooks, run_job

log = logging.getLogger("mdctr.ray")

#: set before a private local cluster starts: listeners on 127.0.0.1, no usage reports, no
#: token (the cluster is reachable from this machine only)
#: Ray Train's storage (run state, checkpoint copies) next to the run directory by default
STORAGE_DIR = ".mdctr-ray-train"

LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                     "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayReportHooks(TrainerHooks):
    """Reports every epoch to Ray Train (all ranks; the checkpoint directory from rank 0),
    then runs the job's own hooks."""

    rank: int
    unit: str | None = None
    inner: TrainerHooks | None = None

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        import ray.train

        report = {k: v for k, v in metrics.items() if v is not None}
        report["epoch"] = epoch
        if self.unit is not None:
            report["unit"] = self.unit
        ckpt = None
        if checkpoint is not None and self.rank == 0:
            ckpt = ray.train.Checkpoint.from_directory(str(checkpoint))
        # the epoch's directory is the run's own checkpoint: Ray copies it, never deletes it
        ray.train.report(report, checkpoint=ckpt, delete_local_checkpoint_after_upload=False)
        return bool(self.inner.on_epoch_end(epoch, metrics, checkpoint)) if self.inner is not None else False


def _state_files(job: Job) -> dict[str, str]:
    """The job's ``state.json`` files (its own and its units') -> a digest of their content."""
    dirs = [job.ckpt_dir] + [job.ckpt_dir / u for u in job.units if u is not None]
    found = {}
    for d in dirs:
        try:
            found[str(d)] = hashlib.sha256((d / "state.json").read_bytes()).hexdigest()
        except OSError:
            pass
    return found


def _train_loop(job: Job, launched_states: dict[str, str]) -> None:
    """One Ray Train worker: its rank of ``job``. ``launched_states``: the job's
    ``state.json`` files when the launch began."""
    import ray.train
    import torch.distributed as dist

    from mdctr.platform.quiet import quiet_library_warnings

    quiet_library_warnings()
    logging.getLogger().setLevel(logging.WARNING)  # fbgemm/TBE's INFO chatter (mdctr logs on its own)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    if dist.is_initialized() and dist.get_world_size() != world_size:  # pragma: no cover - Ray sets it up
        raise RuntimeError(f"process group of {dist.get_world_size()} ranks, Ray Train has {world_size} workers")
    # a worker group restarted after a failure finds the state an earlier attempt of this
    # launch wrote, and continues from the run's own last checkpoint (every rank reads the
    # same file: rank 0 writes it only after the first epoch's collectives)
    progressed = _state_files(job) != launched_states
    resume = job.resume or (progressed and job.fit and job.keep_only is None)
    if resume and not job.resume and rank == 0:
        log.warning("restarted after a worker failure: resuming from the last checkpoint")
    unit = job.units[0] if len(job.units) == 1 else None
    job = replace(job, resume=resume, world_size=world_size,
                  hooks=RayReportHooks(rank, unit, job.hooks))
    run_job(rank, world_size, job)


def _unwrap(error: BaseException) -> BaseException:
    """The first failed worker's own exception, when Ray wrapped it."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        first = failures[min(failures)]
        cause = getattr(first, "cause", None)
        if isinstance(cause, BaseException):
            return cause
        return first
    return error


class RayTrainLauncher:
    """Runs a job's ranks on ``num_workers`` Ray Train workers (needs ``ray.init`` first;
    see :func:`ray_session`).

    Args:
        num_workers: workers (= ranks); the job's world size is set to it.
        use_gpu: one GPU per worker, NCCL (else CPU and gloo).
        max_failures: worker-group restarts after a failure; each resumes from the last
            checkpoint.
        storage_path: where Ray Train keeps its run state and checkpoint copies (a path
            every node sees on a multi-node cluster); default: ``.mdctr-ray-train`` next to
            the run directory. The launch's own subdirectory is removed afterwards.
    """

    def __init__(self, num_workers: int, use_gpu: bool = False, max_failures: int = 0,
                 storage_path: str | Path | None = None):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {max_failures}")
        self.num_workers, self.use_gpu, self.max_failures = num_workers, use_gpu, max_failures
        self.storage_path = None if storage_path is None else Path(storage_path)

    def launch(self, job: Job) -> None:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from mdctr.orchestration.ray.rendezvous import FileRendezvousConfig

        job = replace(job, world_size=self.num_workers)
        base = Path(job.log_dir or job.ckpt_dir.parent)
        name = f"{base.name or 'run'}-{uuid.uuid4().hex[:12]}"
        # next to the run directory by default: the run itself must be where every worker sees it
        storage = (self.storage_path if self.storage_path is not None else base.parent / STORAGE_DIR).resolve()
        storage.mkdir(parents=True, exist_ok=True)
        trainer = TorchTrainer(
            partial(_train_loop, job, _state_files(job)),
            scaling_config=ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu),
            torch_config=FileRendezvousConfig(backend="nccl" if self.use_gpu else "gloo", root=str(storage / name)),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=self.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)))
        log.info("training on %d Ray Train worker(s) (%s, max_failures %d)", self.num_workers,
                 "GPU" if self.use_gpu else "CPU", self.max_failures)
        try:
            try:
                result = trainer.fit()
            except Exception as exc:
                raise _unwrap(exc) from exc
            if result.error is not None:
                raise _unwrap(result.error) from result.error
        finally:
            shutil.rmtree(storage / name, ignore_errors=True)
            if self.storage_path is None:
                try:
                    storage.rmdir()  # unless another launch is using it
                except OSError:
                    pass


@contextmanager
def resources_launcher(resources) -> Iterator[RayTrainLauncher | None]:
    """The launcher a ``resources:`` section asks for, for the duration: None (this machine's
    :class:`~mdctr.platform.launcher.LocalLauncher`) for one worker, else a
    :class:`RayTrainLauncher` inside a :func:`ray_session`."""
    if resources.workers <= 1:
        yield None
        return
    with ray_session(resources.workers):
        yield RayTrainLauncher(resources.workers, use_gpu=resources.use_gpu, max_failures=resources.max_failures)


def inside_ray_cluster() -> bool:
    """Whether this process should join an existing Ray cluster (a Ray job's entrypoint,
    or ``RAY_ADDRESS`` set) rather than start its own."""
    return bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"))


@contextmanager
def loopback_only() -> Iterator[None]:
    """While a private local cluster starts and runs: every Ray listener on 127.0.0.1, no
    usage reports, no token (:data:`LOCAL_CLUSTER_ENV`). Ray reads
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, so an already imported Ray is
    told too. Restored afterwards."""
    import ray._private.ray_constants as ray_constants

    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with scoped_env(LOCAL_CLUSTER_ENV):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag


@contextmanager
def local_cluster(num_cpus: int, temp_dir: str | Path | None = None) -> Iterator[None]:
    """A private Ray cluster on this machine for the duration (loopback only, no dashboard);
    ``ray.shutdown()`` afterwards stops this cluster only."""
    import ray

    with loopback_only():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _temp_dir=None if temp_dir is None else str(temp_dir))
        try:
            yield
        finally:
            ray.shutdown()


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """Connected to Ray for the duration: an existing connection is reused; inside a Ray job
    (or with ``RAY_ADDRESS``) ``ray.init()`` joins that cluster; otherwise a private
    :func:`local_cluster` (``num_cpus`` CPUs, at least this machine's) runs meanwhile."""
    import ray

    if ray.is_initialized():
        yield
    elif inside_ray_cluster():
        ray.init()
        try:
            yield
        finally:
            ray.shutdown()
    else:
        with local_cluster(max(num_cpus or 0, os.cpu_count() or 1)):
            yield

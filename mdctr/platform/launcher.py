"""Launchers run a :class:`~mdctr.platform.job.Job` on its ranks.

A launcher decides *where* the ranks run; :func:`~mdctr.platform.job.run_job` is what every
rank runs, whatever the launcher. :class:`LocalLauncher` runs them on this machine (world
size 1 in this process, more as spawned processes with gloo/NCCL on 127.0.0.1). A Ray Train
launcher runs the same function on Ray workers and is a drop-in replacement.
"""

from __future__ import annotations

from typing import Protocol

from mdctr.platform.job import Job, run_job


class Launcher(Protocol):
    def launch(self, job: Job) -> None:
        """Run ``job`` on ``job.world_size`` ranks and return when every rank finished
        (re-raising a rank's error)."""


class LocalLauncher:
    """Ranks on this machine (:func:`mdctr.platform.distributed.launch`)."""

    def launch(self, job: Job) -> None:
        from mdctr.platform.distributed import launch

        launch(run_job, job.world_size, job, near=job.ckpt_dir)


def resolve_launcher(launcher: Launcher | None) -> Launcher:
    return launcher if launcher is not None else LocalLauncher()

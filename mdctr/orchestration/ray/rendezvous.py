"""How Ray Train workers form their process group: through a file, not a TCP store.

Ray Train's ``TorchConfig`` starts a TCP store on rank 0 for the rendezvous, and that store
listens on every interface. :class:`FileRendezvousConfig` keeps everything else of Ray
Train's torch backend (environment, shutdown) and joins the group as the local launcher
does (:func:`~mdctr.platform.distributed.init_group`): a ``FileStore`` in a fresh directory
under the launch's Ray Train storage (which every worker sees), each worker's transport on
its own node's interface. This module imports Ray at the top: import it only where Ray is
in use.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import ray
import ray.train
from ray.train.torch.config import TorchConfig, _TorchBackend

from mdctr.platform.distributed import TRANSPORT_IFNAME_VARS, init_group, interface_of


def _join_group(backend: str, world_rank: int, world_size: int, rendezvous: str | None, timeout_s: int) -> None:
    """On a Ray Train worker: the torch environment variables, then join the group with the
    transport on the interface of this worker's node address (loopback on a local cluster)."""
    ctx = ray.train.get_context()
    os.environ.update({"RANK": str(world_rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_RANK": str(ctx.get_local_rank()),
                       "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()),
                       "NODE_RANK": str(ctx.get_node_rank())})
    interface = interface_of(ray.util.get_node_ip_address())
    if interface is not None:
        os.environ.update(dict.fromkeys(TRANSPORT_IFNAME_VARS, interface))
    init_group(world_rank, world_size, backend, rendezvous, timedelta(seconds=timeout_s))


class _FileRendezvousBackend(_TorchBackend):
    """Ray Train's torch backend, with the process group joined through a ``FileStore``."""

    def on_start(self, worker_group, backend_config: FileRendezvousConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus else "gloo")
        n = len(worker_group)
        rendezvous = None
        if n > 1:  # a fresh file for every (re)start of the worker group
            directory = Path(backend_config.root) / f"rendezvous-{uuid.uuid4().hex[:12]}"
            directory.mkdir(parents=True, mode=0o700)
            rendezvous = str(directory / "store")
        ray.get([worker_group.execute_single_async(i, _join_group, backend=backend, world_rank=i, world_size=n,
                                                   rendezvous=rendezvous, timeout_s=backend_config.timeout_s)
                 for i in range(n)])


@dataclass
class FileRendezvousConfig(TorchConfig):
    """``TorchConfig`` whose workers meet through a file under ``root`` (a directory every
    worker sees: the launch's Ray Train storage) instead of the TCP store Ray Train would
    start on rank 0, which listens on every interface. World size 1 opens no socket at all
    (:func:`~mdctr.platform.distributed.init_group`)."""

    root: str = ""

    @property
    def backend_cls(self):
        return _FileRendezvousBackend

"""Process groups, sharding and optimizers.

- :func:`select_device`: CUDA + NCCL when a GPU is present, else CPU + gloo.
- :func:`launch`: run ``fn(rank, world_size, *args)`` in ``world_size`` processes (world
  size 1 runs in this process) in a process group that listens on loopback only (see
  :func:`process_group`).
- :func:`shard`: fused in-backward optimizer on the tables, TorchRec's planner, then
  ``DistributedModelParallel``.
- :func:`dense_optimizer`: a torch optimizer over every parameter that is not a table.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.optim  # noqa: F401  (see _PREIMPORTED below)
import torch.multiprocessing as mp
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardedModule, ShardingEnv, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from tqdm import tqdm  # the base class of every tqdm bar (tqdm.auto's too)

from mdctr.core.environ import scoped_env
from mdctr.core.errors import ConfigError
from mdctr.core.io import scratch_dir, temp_sibling
from mdctr.platform import solo_group
from mdctr.platform.config import DenseOptim, EmbeddingOptim
from mdctr.platform.quiet import quiet_library_warnings

log = logging.getLogger("mdctr.distributed")

#: environment variables that pick the network interface of gloo's and NCCL's transport
#: sockets; :func:`process_group` points them at the loopback interface
TRANSPORT_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")

_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8  # <linux/if.h>

#: ``torch.distributed.optim.zero_redundancy_optimizer`` binds ``dist.group.WORLD`` as a
#: default argument when first imported, which TorchRec's in-backward optimizer does lazily:
#: imported inside a launch, it would keep that launch's process group (and its transport's
#: listening socket) alive for the rest of the process. Imported here, before any group
#: exists, the default is None.
_PREIMPORTED = torch.distributed.optim


def select_device(local_rank: int = 0) -> tuple[torch.device, str]:
    """``(cuda:local_rank, "nccl")`` when CUDA is available, else ``(cpu, "gloo")``."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def loopback_interface() -> str:
    """The name of this machine's loopback network interface (``lo`` on Linux).

    The first interface that is up and flagged loopback in ``/sys/class/net``, else the
    first whose name starts with ``lo`` (``lo0`` on macOS), else ``"lo"``.
    """
    net = Path("/sys/class/net")
    try:
        names = sorted(p.name for p in net.iterdir())
    except OSError:
        names = []
    for name in names:
        try:
            flags = int((net / name / "flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        if flags & _IFF_LOOPBACK and flags & _IFF_UP:
            return name
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    return next((name for name in names if name.startswith("lo")), "lo")


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds IPv4 ``address`` (the loopback interface
    for 127.0.0.0/8), or None if none does or it cannot be told (not Linux)."""
    if address.startswith("127.") or address in ("localhost", "::1"):
        return loopback_interface()
    try:
        import fcntl

        names = [name for _, name in socket.if_nameindex()]
    except (ImportError, OSError):
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:  # SIOCGIFADDR: the interface's IPv4 address
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


@contextmanager
def transport_on(interface: str) -> Iterator[None]:
    """Make the gloo/NCCL transports created meanwhile bind ``interface``.

    gloo otherwise binds the address this machine's hostname resolves to (often a public
    one), NCCL its first non-loopback interface. The variables are restored afterwards.
    """
    with scoped_env(dict.fromkeys(TRANSPORT_IFNAME_VARS, interface)):
        yield


def loopback_transport():
    """:func:`transport_on` the loopback interface: the ranks :func:`launch` starts all run on
    this machine, so loopback reaches every peer."""
    return transport_on(loopback_interface())


def init_group(rank: int, world_size: int, backend: str, rendezvous: str | None = None,
               timeout: timedelta | None = None) -> None:
    """Join the default process group without a TCP rendezvous.

    World size 1 needs none: on CPU it runs on
    :class:`~mdctr.platform.solo_group.SoloGroup` (no transport, nothing listens), on GPU
    on NCCL with an in-memory ``HashStore``. Larger worlds share a ``FileStore`` at
    ``rendezvous`` (a fresh file every rank sees). The transport binds the interface the
    caller chose (``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``).
    """
    if world_size > 1 and rendezvous is None:
        raise ValueError("a process group of more than one rank needs a rendezvous file")
    if world_size == 1 and backend == "gloo":
        solo_group.register()
        backend = solo_group.BACKEND
    store = dist.HashStore() if world_size == 1 else dist.FileStore(rendezvous, world_size)
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, **kwargs)


@contextmanager
def process_group(rank: int, world_size: int, backend: str, rendezvous: str | None = None) -> Iterator[None]:
    """Join (and finally leave) the default process group (:func:`init_group`), its
    transport on loopback (:func:`loopback_transport`); a no-op if one exists already."""
    if dist.is_initialized():
        yield
        return
    hook = sys.excepthook  # init_process_group chains a "[rankN]:" excepthook on every call
    with loopback_transport():
        init_group(rank, world_size, backend, rendezvous)
        try:
            yield
        finally:
            dist.destroy_process_group()
            sys.excepthook = hook
            # objects fn made (a sharded model, its optimizer) may hold the group in reference
            # cycles: collect them, so the transport's socket closes now, not at some later launch
            gc.collect()


def _worker(rank: int, world_size: int, rendezvous: str | None, fn: Callable, args: tuple) -> None:
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    quiet_library_warnings()
    if world_size > 1:  # ranks share the cores: oversubscribed OpenMP pools spin and crawl
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    _, backend = select_device(rank)
    with process_group(rank, world_size, backend, rendezvous):
        fn(rank, world_size, *args)


def _spawned_worker(rank: int, world_size: int, rendezvous: str, fn: Callable, args: tuple) -> None:
    """:func:`_worker` in a spawned rank process, which then ends without interpreter
    finalization.

    A gloo worker thread may still be destroying the last collective's work object (it
    holds the gathered tensors) when the rank's Python code is done; if that happens while
    the interpreter finalizes, taking the GIL ends the thread and the C++ runtime aborts the
    process (``terminate called without an active exception``, SIGABRT; seen in ~1 of 8
    two-rank runs, backtrace ``~AsyncAllgatherWork`` -> ``decref_pyobject`` ->
    ``PyThread_exit_thread``). Once the process group is destroyed and the logs flushed,
    there is nothing left to finalize, so the rank exits at once with status 0. Errors
    still propagate to :func:`torch.multiprocessing.spawn` as usual.

    Exiting so skips multiprocessing's own clean-up too: a semaphore the rank made would be
    reported "leaked" by the parent's resource tracker. tqdm makes one (its default lock is a
    ``multiprocessing.RLock``, to share a terminal between processes); a rank's bars need a
    thread lock only.
    """
    tqdm.set_lock(threading.RLock())
    _worker(rank, world_size, rendezvous, fn, args)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(fn: Callable, world_size: int, *args, near: Path | None = None) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks (spawned processes if > 1).

    Already inside a process group (e.g. a Ray Train worker or ``torchrun``), ``fn`` runs on
    this rank of it instead. Otherwise the ranks rendezvous through a file in a private
    directory rather than a TCP port, and their transport listens on loopback only
    (:func:`process_group`). The directory is a hidden sibling of ``near`` (the job's
    output; else under the state directory's scratch), removed when the ranks are done, also
    on failure, and by the next launch if this one was killed.
    """
    if dist.is_initialized():
        fn(dist.get_rank(), dist.get_world_size(), *args)
        return
    if world_size == 1:
        _worker(0, 1, None, fn, args)
        return
    rendezvous = temp_sibling(near, "rendezvous") if near is not None else scratch_dir("rendezvous")
    try:
        mp.spawn(_spawned_worker, args=(world_size, os.path.join(rendezvous, "store"), fn, args),
                 nprocs=world_size, join=True)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)


_FUSED: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}


def fused_kwargs(cfg: EmbeddingOptim) -> dict:
    kw: dict = {"lr": cfg.lr}
    if cfg.type != "sgd":
        kw["eps"] = cfg.eps
    if cfg.weight_decay:
        kw["weight_decay"] = cfg.weight_decay
    return kw


def check_embedding_optim(cfg: EmbeddingOptim, device_type: str) -> None:
    """fbgemm's CPU kernels have less than its GPU ones: refuse what they would not do (no
    Adam; ``weight_decay`` set but silently not applied) rather than train something else."""
    if device_type != "cpu":
        return
    if cfg.type == "adam":
        raise ConfigError("optim.embedding.type: fbgemm has no adam kernel on CPU "
                          "(rowwise_adagrad, adagrad or sgd run on CPU and GPU)")
    if cfg.weight_decay:
        raise ConfigError("optim.embedding.weight_decay: fbgemm's CPU kernels do not apply weight decay "
                          "(train.embedding_l2 regularises the embeddings on every device)")


def sharders(cfg: EmbeddingOptim) -> list:
    """TorchRec's default sharders, the EmbeddingBagCollection's carrying the fbgemm settings
    the optimizer class cannot: fbgemm ignores ``weight_decay`` unless a weight-decay mode is
    set (rowwise Adagrad: L2, added to the rows' gradients as torch's Adagrad does; Adam:
    decoupled, as AdamW). Only rows in a batch decay."""
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

    if not cfg.weight_decay:
        return get_default_sharders()
    mode = WeightDecayMode.L2 if cfg.type == "rowwise_adagrad" else WeightDecayMode.DECOUPLE
    return [EmbeddingBagCollectionSharder(fused_params={"weight_decay_mode": mode})
            if isinstance(s, EmbeddingBagCollectionSharder) else s for s in get_default_sharders()]


#: Sharding types the planner may choose from (all run on CPU and GPU). Data-parallel is left
#: out on purpose: it would train small tables with a dense optimizer instead of fbgemm's.
SHARDING_TYPES = [ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value,
                  ShardingType.TABLE_COLUMN_WISE.value]


def shard(model: nn.Module, *, device: torch.device, batch_size: int, optim: EmbeddingOptim) -> DistributedModelParallel:
    """Attach the fused optimizer to every EmbeddingBagCollection of ``model``, plan, and wrap.

    Every table gets a fused fbgemm kernel; the planner picks table-, column- or
    table-column-wise sharding per table for the world size.
    """
    check_embedding_optim(optim, device.type)
    ebcs = [m for m in model.modules() if isinstance(m, EmbeddingBagCollection)]
    pg = dist.group.WORLD
    world = dist.get_world_size()
    # one rank: every table lands whole on it, so table-wise is the only plan worth searching
    types = SHARDING_TYPES if world > 1 else [ShardingType.TABLE_WISE.value]
    constraints = {}
    for ebc in ebcs:
        apply_optimizer_in_backward(_FUSED[optim.type], ebc.parameters(), fused_kwargs(optim))
        for table in ebc.embedding_bag_configs():
            constraints[table.name] = ParameterConstraints(
                sharding_types=types, compute_kernels=[EmbeddingComputeKernel.FUSED.value])
    topology = TopologyFactory.create_topology(TrainerConfig(world_size=world, local_world_size=world),
                                               kernel_config=KernelConfig(compute_device=device.type))
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints,
                                       storage_reservation=FixedPercentageStorageReservation(0.15))
    chosen = sharders(optim)
    plan = planner.collective_plan(model, chosen, pg)
    # one rank has nothing to all-reduce: skip DDP's wrapper and its gradient-bucket copies
    return DistributedModelParallel(model, env=ShardingEnv.from_process_group(pg), device=device, plan=plan,
                                    sharders=chosen, init_data_parallel=world > 1)


def table_param_names(dmp: nn.Module) -> set[str]:
    """Names of the fused (sharded table) parameters of a DMP model.

    With more than one rank, a rank's sharded modules also list the tables that live on
    other ranks (placeholders its fused optimizer does not hold): they are tables too, and
    must stay out of the dense optimizer (whose state a resume would otherwise expect)."""
    names = set(dmp.fused_optimizer.params.keys())
    sharded = {id(p) for m in dmp.modules() if isinstance(m, ShardedModule) for p in m.parameters()}
    names.update(n for n, p in dmp.named_parameters() if id(p) in sharded)
    return names


#: Adam/AdamW run fused (one kernel over every parameter, CPU and CUDA) rather than a Python
#: loop over parameters: models with many small tensors (per-domain adapters) step 2-3x faster
_DENSE: dict[str, Callable] = {
    "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, weight_decay=c.weight_decay, fused=True),
    "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, weight_decay=c.weight_decay, fused=True),
    "sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, weight_decay=c.weight_decay, momentum=0.9),
    "adagrad": lambda ps, c: torch.optim.Adagrad(ps, lr=c.lr, weight_decay=c.weight_decay),
}


def dense_optimizer(params: dict[str, nn.Parameter], cfg: DenseOptim) -> KeyedOptimizerWrapper:
    """A keyed torch optimizer over ``params`` (name -> parameter)."""
    if not params:
        raise ValueError("no dense parameters to optimise")
    return KeyedOptimizerWrapper(params, lambda ps: _DENSE[cfg.type](list(ps), cfg))

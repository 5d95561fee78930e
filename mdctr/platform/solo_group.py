"""A process group of one rank that opens no socket: the ``mdctr-solo`` backend.

TorchRec's ``DistributedModelParallel`` needs a process group even when one process holds
every table. gloo's would open a listening transport socket for it (on loopback, but a
socket all the same), so single-process work runs on :class:`SoloGroup` instead: every
collective of one rank, done exactly (a collective among one rank is the identity: its
output is a copy of its input), with no transport at all. A collective this class does not
implement raises ``NotImplementedError`` (the base class's behaviour) rather than return
something plausible: nothing is ever silently skipped. It is used on CPU only; with a GPU,
one rank still runs NCCL (no listener either: NCCL at one rank never connects).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import (
    AllgatherOptions,
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    GatherOptions,
    ReduceOp,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
    _create_work_from_future,
)
from torch.futures import Future

#: the backend's name for ``init_process_group``
BACKEND = "mdctr-solo"

#: reductions whose result over one rank is that rank's tensor unchanged (AVG: divided by 1)
_IDENTITY_OPS = frozenset({ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX,
                           ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR})


def _done(result) -> dist.Work:
    future: Future = Future()
    future.set_result(result)
    return _create_work_from_future(future)


def _check_op(op: ReduceOp) -> None:
    if op.op not in _IDENTITY_OPS:
        raise NotImplementedError(f"{BACKEND}: reduce op {op.op.name} is not supported")


def _copy(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> None:
    if len(outputs) != len(inputs):
        raise ValueError(f"{BACKEND}: {len(outputs)} output tensors for {len(inputs)} inputs")
    for out, src in zip(outputs, inputs):
        if out.numel() != src.numel():
            raise ValueError(f"{BACKEND}: output of {out.numel()} elements for an input of {src.numel()}")
        if out.data_ptr() != src.data_ptr():
            out.copy_(src.view(out.shape))


def _single(lists: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """The one rank's tensor of each per-rank list."""
    for tensors in lists:
        if len(tensors) != 1:
            raise ValueError(f"{BACKEND}: a list of {len(tensors)} per-rank tensors for one rank")
    return [tensors[0] for tensors in lists]


class SoloGroup(dist.ProcessGroup):
    """Rank 0 of a world of one: every collective is a copy (or nothing), done at once."""

    def __init__(self) -> None:
        super().__init__(0, 1)
        self._name = ""
        self._desc = ""

    def getBackendName(self) -> str:  # noqa: N802  (torch's name)
        return BACKEND

    # the group's name and description, which torch sets once it is made (kept here: a
    # Python process group has no C++ backend to keep them)
    def _set_group_name(self, name: str) -> None:
        self._name = name

    def _set_group_desc(self, desc: str) -> None:
        self._desc = desc

    @property
    def group_name(self) -> str:
        return self._name

    @property
    def group_desc(self) -> str:
        return self._desc

    # -- reductions: the rank's own tensor is the result
    def allreduce(self, tensors, opts=AllreduceOptions()):
        _check_op(opts.reduceOp)
        return _done(tensors)

    def allreduce_coalesced(self, tensors, opts=AllreduceCoalescedOptions()):
        _check_op(opts.reduceOp)
        return _done(tensors)

    def reduce(self, tensors, opts=ReduceOptions()):
        _check_op(opts.reduceOp)
        return _done(tensors)

    def reduce_scatter(self, outputs, input_lists, opts=ReduceScatterOptions()):
        _check_op(opts.reduceOp)
        _copy(outputs, _single(input_lists))
        return _done(outputs)

    def _reduce_scatter_base(self, output, input, opts=ReduceScatterOptions()):
        _check_op(opts.reduceOp)
        _copy([output], [input])
        return _done([output])

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=ReduceScatterOptions()):
        _check_op(opts.reduceOp)
        _copy(outputs, inputs)
        return _done(outputs)

    reduce_scatter_single = _reduce_scatter_base
    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    # -- gathers and scatters: the rank's own tensor is the only piece
    def allgather(self, output_lists, inputs, opts=AllgatherOptions()):
        _copy(_single(output_lists), inputs)
        return _done(output_lists)

    def _allgather_base(self, output, input, opts=AllgatherOptions()):
        _copy([output], [input])
        return _done([output])

    def allgather_coalesced(self, output_lists, inputs, opts=AllgatherOptions()):
        _copy(_single(output_lists), inputs)
        return _done(output_lists)

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=AllgatherOptions()):
        _copy(outputs, inputs)
        return _done(outputs)

    all_gather_single = _allgather_base
    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def gather(self, output_lists, inputs, opts=GatherOptions()):
        _copy(_single(output_lists), inputs)
        return _done(output_lists)

    def scatter(self, outputs, input_lists, opts=ScatterOptions()):
        _copy(outputs, _single(input_lists))
        return _done(outputs)

    def alltoall(self, outputs, inputs, opts=AllToAllOptions()):
        _copy(outputs, inputs)
        return _done(outputs)

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=AllToAllOptions()):
        for splits in (output_split_sizes, input_split_sizes):
            if splits and (len(splits) != 1 or splits[0] != input.size(0)):
                raise ValueError(f"{BACKEND}: all-to-all splits {list(splits)} for one rank of {input.size(0)} rows")
        _copy([output], [input])
        return _done([output])

    all_to_all_single = alltoall_base

    # -- nothing to exchange
    def broadcast(self, tensors, opts=BroadcastOptions()):
        if opts.rootRank != 0:
            raise ValueError(f"{BACKEND}: broadcast from rank {opts.rootRank} in a world of one")
        return _done(tensors)

    def barrier(self, opts=BarrierOptions()):
        return _done(None)


def _create(store, rank: int, world_size: int, timeout) -> SoloGroup:
    if rank != 0 or world_size != 1:
        raise ValueError(f"the {BACKEND} process group has one rank, not rank {rank} of {world_size}")
    return SoloGroup()


def register() -> None:
    """Make ``init_process_group(backend="mdctr-solo")`` available (once per process)."""
    if BACKEND not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND, _create, devices=["cpu"])

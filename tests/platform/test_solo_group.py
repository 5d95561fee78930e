"""The one-rank process group: every collective torch.distributed offers gives the exact
one-rank result (a copy), unsupported reductions raise, and it listens on nothing."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mdctr.platform import distributed, solo_group


@pytest.fixture
def solo():
    """The default process group, a solo group (as :func:`distributed.launch` makes at world size 1)."""
    with distributed.process_group(0, 1, "gloo"):
        yield dist.group.WORLD


def test_world_size_1_on_cpu_is_the_solo_group(solo):
    assert isinstance(solo, solo_group.SoloGroup)
    assert dist.get_backend() == solo_group.BACKEND
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert solo.group_name  # torch named it: device meshes and functional collectives need one


def test_reductions_leave_the_tensor_as_it_is(solo):
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX, dist.ReduceOp.MIN):
        t = torch.tensor([1.5, -2.0, 3.0])
        dist.all_reduce(t, op=op)
        assert t.tolist() == [1.5, -2.0, 3.0]
    t = torch.arange(4.0)
    dist.reduce(t, dst=0)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    assert work.is_completed()


def test_a_reduction_that_is_not_the_identity_raises(solo):
    with pytest.raises(Exception, match="not supported"):
        dist.all_reduce(torch.ones(2), op=dist._make_nccl_premul_sum(2.0))


def test_gathers_scatters_and_all_to_all_copy(solo):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = [torch.zeros(2, 2)]
    dist.all_gather(out, x)
    assert torch.equal(out[0], x)
    flat = torch.zeros(2, 2)
    dist.all_gather_single(flat, x)
    assert torch.equal(flat, x)
    gathered = [torch.zeros(2, 2)]
    dist.gather(x, gathered, dst=0)
    assert torch.equal(gathered[0], x)
    got = torch.zeros(2, 2)
    dist.scatter(got, [x], src=0)
    assert torch.equal(got, x)
    got = torch.zeros(2, 2)
    dist.reduce_scatter_single(got, x)
    assert torch.equal(got, x)
    got = torch.zeros(2, 2)
    dist.reduce_scatter(got, [x])
    assert torch.equal(got, x)
    got = torch.zeros(2, 2)
    dist.all_to_all_single(got, x, output_split_sizes=[2], input_split_sizes=[2])
    assert torch.equal(got, x)
    outs = [torch.zeros(2, 2)]
    dist.all_to_all(outs, [x])
    assert torch.equal(outs[0], x)
    objs = [None]
    dist.all_gather_object(objs, {"epoch": 3})
    assert objs == [{"epoch": 3}]
    msg = ["from rank 0"]
    dist.broadcast_object_list(msg, src=0)
    assert msg == ["from rank 0"]
    dist.barrier()


def test_malformed_calls_raise(solo):
    with pytest.raises(Exception, match="splits"):
        dist.all_to_all_single(torch.zeros(4), torch.zeros(4), output_split_sizes=[2, 2], input_split_sizes=[2, 2])
    with pytest.raises(Exception, match="elements"):
        dist.all_gather_single(torch.zeros(3), torch.zeros(2))


def test_only_rank_0_of_1():
    with pytest.raises(ValueError, match="one rank"):
        solo_group._create(None, 1, 2, None)

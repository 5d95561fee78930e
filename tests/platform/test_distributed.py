"""Launching ranks: the rendezvous port taken between choosing and binding it, and how spawned
ranks end."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mdctr.platform import distributed


def record(rank: int, world: int, out_dir: str) -> None:
    Path(out_dir, f"rank{rank}").write_text(f"{dist.get_world_size()} {os.environ['MASTER_PORT']}")


@pytest.fixture
def taken_port():
    """A port another process listens on (as a Ray worker might, after free_port chose it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("world", [1, 2])
def test_launch_starts_again_on_a_fresh_port_when_the_port_is_taken(taken_port, world, tmp_path, monkeypatch,
                                                                     caplog):
    real, first = distributed.free_port, iter([taken_port])
    monkeypatch.setattr(distributed, "free_port", lambda: next(first, None) or real())
    distributed.launch(record, world, str(tmp_path))
    ranks = [Path(tmp_path, f"rank{r}").read_text().split() for r in range(world)]
    assert all(size == str(world) and port != str(taken_port) for size, port in ranks)
    assert len({port for _, port in ranks}) == 1
    assert f"rendezvous port {taken_port} was taken" in caplog.text


def test_launch_gives_up_after_its_attempts(taken_port, monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "free_port", lambda: taken_port)
    with pytest.raises(distributed.PortTakenError, match=f"port {taken_port} is taken"):
        distributed.launch(record, 1, str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_the_functions_own_errors_are_not_retried():
    calls = []

    def fails(rank, world):
        calls.append(rank)
        raise RuntimeError("EADDRINUSE, but from the job itself")

    with pytest.raises(RuntimeError, match="from the job itself"):
        distributed.launch(fails, 1)
    assert calls == [0]


def gather_last(rank: int, world: int, out_dir: str) -> None:
    """Ends right after a collective: the gloo work object that holds the tensors may outlive
    the rank's Python code (see distributed._spawned_worker)."""
    mine = torch.full((4096,), float(rank))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    Path(out_dir, f"rank{rank}").write_text(str(sum(float(p.sum()) for p in parts)))


def test_spawned_ranks_exit_cleanly_right_after_a_collective(tmp_path):
    for run in range(3):
        out = tmp_path / str(run)
        out.mkdir()
        distributed.launch(gather_last, 2, str(out))
        assert [float(Path(out, f"rank{r}").read_text()) for r in range(2)] == [4096.0, 4096.0]


def fails_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank one's own error")


def test_a_spawned_ranks_error_still_reaches_the_caller():
    with pytest.raises(mp.ProcessRaisedException, match="rank one's own error"):
        distributed.launch(fails_on_rank_one, 2)

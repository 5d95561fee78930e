"""Launching ranks when the rendezvous port is taken between choosing and binding it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist

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

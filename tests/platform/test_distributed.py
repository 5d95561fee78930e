"""Launching ranks: the file rendezvous (no TCP port), a caller's own process group, how
spawned ranks end and how their errors surface. What the ranks listen on:
tests/platform/test_listeners.py."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mdctr.core import io as core_io
from mdctr.platform import distributed


def record(rank: int, world: int, out_dir: str) -> None:
    t = torch.ones(1)
    dist.all_reduce(t)
    Path(out_dir, f"rank{rank}").write_text(f"{dist.get_world_size()} {int(t.item())}")


@pytest.fixture
def taken_port():
    """A port another process listens on (as a Ray worker might)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def rendezvous_dirs(monkeypatch):
    """The rendezvous directories :func:`distributed.launch` makes, checked private on creation."""
    made, real = [], core_io.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real(*args, **kwargs)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        made.append(Path(path))
        return path

    monkeypatch.setattr(core_io.tempfile, "mkdtemp", mkdtemp)
    return made


@pytest.mark.parametrize("world", [1, 2])
def test_launch_needs_no_rendezvous_port(taken_port, world, tmp_path, monkeypatch, rendezvous_dirs):
    """MASTER_ADDR/MASTER_PORT play no part: a taken port and an all-interfaces address there
    change nothing (the TCP rendezvous and its port race are gone). The rendezvous directory
    is a hidden sibling of the job's output, and a killed launch's is removed by the next."""
    monkeypatch.setenv("MASTER_ADDR", "0.0.0.0")
    monkeypatch.setenv("MASTER_PORT", str(taken_port))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    killed = tmp_path / f".out.rendezvous-{proc.pid}-0000"
    killed.mkdir()
    distributed.launch(record, world, str(tmp_path), near=tmp_path / "out")
    assert all(d.parent == tmp_path and d.name.startswith(".out.rendezvous-") for d in rendezvous_dirs)
    assert killed.exists() == (world == 1)
    assert [Path(tmp_path, f"rank{r}").read_text() for r in range(world)] == [f"{world} {world}"] * world
    assert len(rendezvous_dirs) == (world > 1)  # world size 1 keeps its store in memory
    assert not any(d.exists() for d in rendezvous_dirs)  # removed once the ranks are done
    assert not dist.is_initialized()


def test_the_functions_own_errors_reach_the_caller_once():
    calls = []

    def fails(rank, world):
        calls.append(rank)
        raise RuntimeError("EADDRINUSE, but from the job itself")

    with pytest.raises(RuntimeError, match="from the job itself"):
        distributed.launch(fails, 1)
    assert calls == [0]
    assert not dist.is_initialized()


def test_launch_runs_on_the_callers_process_group(tmp_path, rendezvous_dirs):
    """Inside a process group made by someone else (Ray Train, torchrun), ``fn`` runs on it and
    the group is left alone."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = dist.group.WORLD
        distributed.launch(record, 2, str(tmp_path))  # the caller's world size wins
        assert dist.is_initialized() and dist.group.WORLD is world
    finally:
        dist.destroy_process_group()
    assert Path(tmp_path, "rank0").read_text() == "1 1"
    assert not rendezvous_dirs


def test_process_group_of_several_ranks_needs_a_rendezvous_file():
    with pytest.raises(ValueError, match="rendezvous file"):
        with distributed.process_group(0, 2, "gloo"):
            pass
    assert not dist.is_initialized()


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


BARS = """
from tqdm.auto import tqdm

from mdctr.platform import distributed


def bars(rank, world):
    for _ in tqdm(range(3), disable=None):
        pass


if __name__ == "__main__":
    distributed.launch(bars, 2)
    print("ok")
"""


def test_spawned_ranks_leave_no_semaphore_for_the_resource_tracker(tmp_path):
    """A rank exits without finalization; a progress bar it drew must not leave a
    multiprocessing semaphore that the parent's resource tracker reports as leaked when the
    parent exits (tqdm's default lock is one)."""
    script = tmp_path / "bars.py"
    script.write_text(BARS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "leaked semaphore" not in proc.stderr, proc.stderr


def fails_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank one's own error")


def test_a_spawned_ranks_error_still_reaches_the_caller(rendezvous_dirs):
    with pytest.raises(mp.ProcessRaisedException, match="rank one's own error"):
        distributed.launch(fails_on_rank_one, 2)
    assert len(rendezvous_dirs) == 1 and not rendezvous_dirs[0].exists()  # removed on failure too


def test_embedding_optimizers_fbgemm_cannot_run_on_cpu_are_refused():
    """fbgemm's CPU kernels have no Adam and silently skip weight decay: both are one
    ConfigError line naming the key on CPU; on GPU they pass, the weight-decay mode set."""
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from mdctr.core.errors import ConfigError
    from mdctr.platform.config import EmbeddingOptim
    from mdctr.platform.distributed import check_embedding_optim, sharders

    with pytest.raises(ConfigError, match="optim.embedding.type: fbgemm has no adam kernel on CPU"):
        check_embedding_optim(EmbeddingOptim(type="adam", lr=1e-3), "cpu")
    with pytest.raises(ConfigError, match="optim.embedding.weight_decay: .* do not apply weight decay"):
        check_embedding_optim(EmbeddingOptim(weight_decay=1e-5), "cpu")
    check_embedding_optim(EmbeddingOptim(), "cpu")
    check_embedding_optim(EmbeddingOptim(type="adam", weight_decay=1e-5), "cuda")
    with pytest.raises(ValueError, match="fbgemm's adagrad kernel has no weight decay"):
        EmbeddingOptim(type="adagrad", weight_decay=1e-5)

    def ebc_mode(cfg):
        (ebc,) = [s for s in sharders(cfg) if isinstance(s, EmbeddingBagCollectionSharder)]
        return (ebc.fused_params or {}).get("weight_decay_mode")

    assert ebc_mode(EmbeddingOptim()) is None
    assert ebc_mode(EmbeddingOptim(weight_decay=1e-5)) == WeightDecayMode.L2
    assert ebc_mode(EmbeddingOptim(type="adam", weight_decay=1e-5)) == WeightDecayMode.DECOUPLE

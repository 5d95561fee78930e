"""Temporary entries carry their writer's PID; the next writer removes those of dead ones."""

from __future__ import annotations

import os
import subprocess
import sys

from mdctr.core import io


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_sibling_is_private_stamped_and_removes_dead_writers_only(tmp_path):
    out = tmp_path / "run"
    dead = tmp_path / f".run.tmp-{_dead_pid()}-abcd1234"
    (dead / "part").mkdir(parents=True)
    alive = tmp_path / f".run.tmp-{os.getpid()}-feedbeef"  # this process: a live writer
    alive.mkdir()
    other = tmp_path / f".other.tmp-{_dead_pid()}-abcd1234"  # another target's: not ours to judge
    other.mkdir()
    unrelated = tmp_path / ".run.tmp-notapid"
    unrelated.mkdir()
    made = io.temp_sibling(out)
    assert made.parent == tmp_path and made.name.startswith(f".run.tmp-{os.getpid()}-")
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    assert not dead.exists()
    assert alive.exists() and other.exists() and unrelated.exists()


def test_writer_pid_parses_only_its_own_names():
    assert io.writer_pid(".x.tmp-123-ab", ".x.tmp-") == 123
    assert io.writer_pid(".x.tmp-123", ".x.tmp-") is None  # no token after the PID
    assert io.writer_pid(".x.tmp-0-ab", ".x.tmp-") is None
    assert io.writer_pid(".y.tmp-123-ab", ".x.tmp-") is None


def test_scratch_dir_lives_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MDCTR_STATE", str(tmp_path))
    stale = tmp_path / "scratch" / f"predict-{_dead_pid()}-0000"
    stale.mkdir(parents=True)
    made = io.scratch_dir("predict")
    assert made.parent == tmp_path / "scratch" and made.name.startswith(f"predict-{os.getpid()}-")
    assert not stale.exists()

"""Checkpoints are untrusted input: nothing in them runs, damaged bytes are caught before
use, and ``--resume`` steps back over a damaged epoch."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdctr.core.errors import ArtifactError
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.rundir import RunDir
from mdctr.platform.run import evaluate, train
from mdctr.platform.safe_dcp import write_checksums

MDCTR = str(Path(sys.executable).parent / "mdctr")


@pytest.fixture(scope="module")
def run(ml_gender, tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("safety") / "run"
    # a larger model at a higher lr: it peaks before its last epoch (best 3, last 4)
    cfg = make_config(ml_gender, model={"hidden": [256, 128], "embedding_dim": 32},
                      optim={"dense": {"lr": 0.003}, "embedding": {"lr": 0.2}}, train={"epochs": 5, "patience": 5})
    metrics = train(cfg, out)
    return out, metrics


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


class _Plant:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _mdctr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MDCTR, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_a_planted_metadata_payload_runs_nothing(run, tmp_path):
    run_dir = _copy(run[0], tmp_path)
    best = RunDir(run_dir).best_checkpoint()
    marker = tmp_path / "pwned"
    (best / ".metadata").write_bytes(pickle.dumps(_Plant(marker)))
    write_checksums(best)  # an attacker can rewrite the checksums too: the reader must still refuse
    with pytest.raises(ArtifactError, match="posix.system is not allowed in checkpoint metadata"):
        evaluate(run_dir)
    result = _mdctr("evaluate", "--run", str(run_dir))
    assert result.returncode == 2 and not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ".metadata" in lines[0] and "not allowed" in lines[0], result.stderr
    with pytest.raises(ArtifactError, match="not allowed"):
        ckpt.read_entries(best)
    assert not marker.exists()


def test_damaged_bytes_are_caught_before_use(run, tmp_path):
    run_dir = _copy(run[0], tmp_path)
    best = RunDir(run_dir).best_checkpoint()
    data = sorted(best.glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the tables
    data.write_bytes(bytes(raw))
    result = _mdctr("evaluate", "--run", str(run_dir))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"mdctr: error: {data}: checkpoint file is corrupt "
                                                  "(its SHA-256 differs from checksums.json)"]
    assert not (run_dir / "eval-test.json").exists()
    # a missing or extra file is caught too
    data.unlink()
    with pytest.raises(ArtifactError, match="checkpoint file is missing"):
        evaluate(run_dir)
    (best / CHECKSUMS_NAME).unlink()
    with pytest.raises(ArtifactError, match="has no checksums.json"):
        evaluate(run_dir)


CHECKSUMS_NAME = "checksums.json"


def test_resume_steps_back_over_a_damaged_last_epoch(run, tmp_path, caplog):
    """The last epoch's checkpoint is damaged: --resume continues from the best (the only
    earlier epoch kept) and, training being a function of (seed, epoch), ends exactly where
    the undamaged run ended."""
    src, metrics = run
    state = ckpt.read_state(src / "checkpoints")
    assert state.best_epoch < state.last_epoch, "the fixture run must end after its best epoch"
    run_dir = _copy(src, tmp_path)
    last = ckpt.epoch_dir(run_dir / "checkpoints", state.last_epoch)
    next(last.glob("*.distcp")).write_bytes(b"garbage")
    raw = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    raw["stopped"] = False  # as if the run had been killed after its last checkpoint
    (run_dir / "checkpoints" / "state.json").write_text(json.dumps(raw))
    (run_dir / "metrics.json").unlink()
    from mdctr.platform.config import load_train_config

    again = train(load_train_config(run_dir / "config.yaml"), run_dir, resume=True)
    assert again == metrics
    log = (run_dir / "train.log").read_text()
    assert f"the checkpoint of epoch {state.last_epoch} is damaged; resuming from epoch {state.best_epoch}" in log
    assert ckpt.intact(ckpt.epoch_dir(run_dir / "checkpoints", ckpt.read_state(run_dir / "checkpoints").last_epoch))

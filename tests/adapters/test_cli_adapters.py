"""``mdctr adapters ...`` as a user runs it: finetune (with its rows), list, merge, export,
and one-line errors with exit 2 that leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdctr.adapters.run import MLoRATrainConfig, train
from mdctr.domains.datasets import resolve_data

MDCTR = str(Path(sys.executable).parent / "mdctr")


def _mdctr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([MDCTR, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    data = resolve_data("movielens-100k:gender")
    root = tmp_path_factory.mktemp("cli-adapters")
    train(MLoRATrainConfig.model_validate({
        "data": str(data), "model": {"hidden": [64, 32]},
        "train": {"epochs": 1, "batch_size": 1024, "seed": 0, "domains": ["M"]},
        "adapters": {"mode": "two_phase", "alpha": 8},
    }), root / "base")
    return root, data


def test_finetune_list_merge_export(base):
    root, data = base
    proc = _mdctr("adapters", "finetune", "--base", "base", "--domain", "F", "--data", str(data),
                  "--out", "adapter-F", "--epochs", "1", "--rows", "all", "--seed", "3", cwd=root)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((root / "adapter-F" / "adapter.json").read_text())
    assert meta["rows"] == "all" and meta["row_counts"]["user_id"] > 200 and meta["seed"] == 3
    summary = proc.stdout.strip().splitlines()[-1]  # after the per-epoch log lines
    assert summary.startswith("adapter 'F': ") and "all rows: user_id " in summary and summary.endswith("-> adapter-F")
    listed = _mdctr("adapters", "list", "--run", "base", "--adapter", "adapter-F", cwd=root)
    assert listed.returncode == 0 and "adapter-F" in listed.stdout
    f_line = next(line for line in listed.stdout.splitlines() if "adapter-F" in line)
    assert f"all ({sum(meta['row_counts'].values()):,})" in f_line
    merged = _mdctr("adapters", "merge", "--run", "base", "--domain", "F", "--adapter", "adapter-F",
                    "--out", "merged-F", cwd=root)
    assert merged.returncode == 0, merged.stderr
    assert json.loads((root / "merged-F" / "merge.json").read_text())["max_abs_logit_gap"] <= 1e-5
    exported = _mdctr("adapters", "export", "--run", "base", "--adapter", "adapter-F", "--out", "serving", cwd=root)
    assert exported.returncode == 0, exported.stderr
    scripted = torch.jit.load(str(root / "serving" / "model.pt"))
    assert json.loads((root / "serving" / "model.json").read_text())["domains"] == ["F", "M"]
    assert scripted is not None


@pytest.mark.parametrize("args, fragment", [
    (("--rows", "some"), "--rows must be one of all, cold, none, got 'some'"),
    (("--domain", "X"), "domain 'X' is not in the data"),
])
def test_finetune_errors_are_one_line_and_leave_nothing(base, args, fragment):
    root, data = base
    cmd = ["adapters", "finetune", "--base", "base", "--domain", "F", "--data", str(data), "--out", "bad"]
    for flag, value in zip(args[::2], args[1::2]):
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = value
        else:
            cmd += [flag, value]
    proc = _mdctr(*cmd, cwd=root)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (root / "bad").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".bad")]

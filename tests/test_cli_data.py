"""``mdctr data ...`` as a user runs it: a subprocess, exit codes, one-line errors, atomic output.

Each run starts a fresh interpreter (importing torch/torchrec, ~5 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdctr.domains.spec import load_spec
from mdctr.domains.validate import validate_dataset

MDCTR = str(Path(sys.executable).parent / "mdctr")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([MDCTR, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mdctr: error: ")
    for f in fragments:
        assert f in lines[0]
    return lines[0]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_validate_ok(small_synth_dir, small_synth_cfg, tmp_path):
    proc = run("data", "validate", str(small_synth_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"synth-small: {small_synth_cfg.rows:,} rows")
    assert proc.stdout.rstrip().endswith(f"{small_synth_dir}: ok")
    spec = load_spec(small_synth_dir)
    for d in spec.domains:  # the per-domain table lists every domain with its row count
        assert any(line.split()[:4] == [d.name, d.role.value, str(d.rows), str(d.positives)]
                   for line in proc.stdout.splitlines()), d.name


def test_validate_bad_dataset(small_synth_dir, copy_dataset, tmp_path):
    d = copy_dataset(small_synth_dir)
    path = d / "part-00000.parquet"
    t = pq.read_table(path)
    label = t.column("label").to_pylist()
    label[10] = label[11] = None
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(label, pa.int8()))
    pq.write_table(t, path)
    before = sorted(p.name for p in d.iterdir())
    proc = run("data", "validate", str(d), cwd=tmp_path)
    line = assert_one_line_error(proc, str(path), "column 'label'", "null values (2 rows)")
    assert line == f"mdctr: error: {path}: column 'label': null values (2 rows)"
    assert sorted(p.name for p in d.iterdir()) == before


@pytest.mark.parametrize("text, fragment", [
    ("rows: 1000\nchunk_rows: 1000\nsignal: {shared: 1.0, wobble: 2}\n", "unknown key 'signal.wobble'"),
    ("rows: 1000\ndomains:\n  - {name: a\n  - {name: b}\n", "malformed YAML at line"),
], ids=["unknown-key", "malformed-yaml"])
def test_synth_bad_config(tmp_path, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "OUT"
    proc = run("data", "synth", "--config", str(config), "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, str(config), fragment)
    assert not out.exists()
    assert siblings(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_synth_bad_override(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("rows: 2000\nchunk_rows: 1000\n")
    out = tmp_path / "OUT"
    proc = run("data", "synth", "--config", str(config), "--out", str(out), "--rows", "0", cwd=tmp_path)
    assert_one_line_error(proc, f"{config} with --rows: 'rows':", "greater than or equal to 1")
    assert not out.exists() and siblings(out) == []


def test_synth_writes_dataset(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("name: cli-synth\nrows: 4000\nchunk_rows: 1000\nusers: 100\nitems: 50\n"
                      "domains: [{name: a}, {name: b, role: ad}]\n")
    out = tmp_path / "OUT"
    proc = run("data", "synth", "--config", str(config), "--out", str(out), "--seed", "9", "--rows", "3000",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec, checker = validate_dataset(out)
    assert spec.rows == checker.rows == 3000  # --rows overrides the config
    assert spec.source.params["seed"] == 9
    assert [(d.name, d.role.value) for d in spec.domains] == [("a", "organic"), ("b", "ad")]
    assert siblings(out) == []
    assert f"wrote {out}" in proc.stdout


@pytest.mark.slow
def test_prepare_refuses_non_empty_out_then_overwrites(tmp_path, ml_gender_spec):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "precious.txt").write_text("do not touch")
    proc = run("data", "prepare", "movielens-100k", "--split", "gender", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, str(out), "output exists and is not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "do not touch"
    assert siblings(out) == []

    proc = run("data", "prepare", "movielens-100k", "--split", "gender", "--out", str(out), "--overwrite",
               "--split-seed", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dataset.yaml", "part-00000.parquet"]
    spec, checker = validate_dataset(out)
    assert checker.rows == 100_000 and checker.domain_rows == {"F": 25_740, "M": 74_260}
    assert spec.split.random.seed == 4
    assert spec.fingerprint == ml_gender_spec.fingerprint
    assert siblings(out) == []
    assert proc.stdout.startswith("movielens-100k-gender: 100,000 rows, 55,375 positives, 2 domains")


def test_prepare_bad_split(tmp_path):
    out = tmp_path / "OUT"
    proc = run("data", "prepare", "movielens-100k", "--split", "colour", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "--split for movielens-100k must be one of gender, age, age3, occupation, ads")
    assert not out.exists() and siblings(out) == []

"""How ``mdctr`` exits: bad input is one line and status 2, a usage error is typer's message
and status 2, an interrupt is 130, anything else is a bug and keeps its traceback.

In-process through :func:`mdctr.cli.main`, then once each as a user runs it (a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdctr.cli import main

MDCTR = str(Path(sys.executable).parent / "mdctr")


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- in-process ----------------------------------------------------------------------------

def test_unknown_option_is_a_usage_error(capsys):
    assert main(["data", "synth", "--bogus"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err) == "mdctr: error: No such option: --bogus (Possible options: --out, --rows) " \
                            "(see 'mdctr data synth --help')"


def test_missing_option_is_a_usage_error(capsys):
    assert main(["data", "synth", "--out", "OUT"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) == "mdctr: error: Missing option '--config'. (see 'mdctr data synth --help')"


def test_missing_config_file_is_one_line(tmp_path, capsys):
    missing, out = tmp_path / "nope.yaml", tmp_path / "OUT"
    assert main(["data", "synth", "--config", str(missing), "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err) == f"mdctr: error: {missing}: file not found"
    assert not out.exists()


def test_bad_option_value_names_the_flag(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path), "--split", "nope"]) == 2
    assert one_line(capsys.readouterr().err) == "mdctr: error: --split must be train, valid, test or all, got 'nope'"


@pytest.mark.parametrize("args, names, fragment", [
    (["labels", "show", "nonexistent", "--store", "{store}"], "{store}", "no version 'nonexistent'"),
    (["labels", "show", "latest", "--store", "{store}"], "{store}", "no teacher-label version"),
    (["labels", "gc", "--keep", "-1", "--store", "{store}"], "--keep", "must be >= 0, got -1"),
    (["labels", "list", "--store", "{embeddings}"], "{embeddings}/manifest.json", "not a teacher-labels store"),
    (["data", "validate", "{missing}"], "{missing}", "not a dataset directory"),
    (["data", "prepare", "movielens-100k", "--split", "nope", "--out", "{store}"], "--split", "got 'nope'"),
], ids=["labels-show-unknown", "labels-show-empty", "labels-gc-keep", "labels-wrong-store", "data-validate",
        "data-prepare-split"])
def test_user_errors_are_one_line(tmp_path, capsys, args, names, fragment):
    """Bad input anywhere below the CLI: status 2 and one line naming the file or flag."""
    paths = {"store": tmp_path / "store", "embeddings": tmp_path / "embeddings", "missing": tmp_path / "nonexistent"}
    paths["embeddings"].mkdir()
    (paths["embeddings"] / "manifest.json").write_text(
        '{"format": "mdctr-store/1", "kind": "tpm-embeddings", "versions": []}')
    assert main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    line = one_line(err)
    assert line.startswith("mdctr: error: ") and names.format(**paths) in line and fragment in line, line
    assert "Traceback" not in err and not paths["store"].exists()


@pytest.mark.parametrize("exc", [RuntimeError, ValueError, FileNotFoundError])
def test_a_bug_propagates(monkeypatch, tmp_path, capsys, exc):
    import mdctr.domains.validate

    def boom(*args, **kwargs):
        raise exc("boom")

    monkeypatch.setattr(mdctr.domains.validate, "validate_dataset", boom)
    with pytest.raises(exc, match="boom"):
        main(["data", "validate", str(tmp_path)])
    assert "mdctr: error" not in capsys.readouterr().err


def test_interrupt(monkeypatch, tmp_path, capsys):
    import mdctr.domains.validate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mdctr.domains.validate, "validate_dataset", interrupted)
    assert main(["data", "validate", str(tmp_path)]) == 130
    assert one_line(capsys.readouterr().err) == "mdctr: interrupted"


def test_help_and_no_arguments(capsys):
    assert main(["--help"]) == 0
    assert "Usage: mdctr [OPTIONS] COMMAND" in capsys.readouterr().out
    assert main(["data"]) == 2  # no_args_is_help: the sub-app's help, status 2 as typer exits
    out, err = capsys.readouterr()
    assert "synth" in out + err and "Traceback" not in err


# -- as a user runs it ---------------------------------------------------------------------

def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_exit_codes_in_a_subprocess(tmp_path):
    proc = run([MDCTR, "data", "validate", "--bogus"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == "mdctr: error: No such option: --bogus (see 'mdctr data validate --help')"

    missing = tmp_path / "nope.yaml"
    proc = run([MDCTR, "data", "synth", "--config", str(missing), "--out", str(tmp_path / "OUT")], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == f"mdctr: error: {missing}: file not found"

    bug = ("import sys, mdctr.domains.validate as v\n"
           "def boom(*a, **k): raise RuntimeError('boom')\n"
           "v.validate_dataset = boom\n"
           "from mdctr.cli import main\n"
           "sys.exit(main(['data', 'validate', 'x']))\n")
    proc = run([sys.executable, "-c", bug], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError" in proc.stderr and "boom" in proc.stderr
    assert "mdctr: error" not in proc.stderr

    proc = run([sys.executable, "-m", "mdctr.cli", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mdctr [OPTIONS] COMMAND" in proc.stdout


def test_a_ray_uploaded_working_directory_is_pointed_out(tmp_path, monkeypatch, capsys):
    """Inside `ray job submit --working-dir`, relative outputs would vanish with the session."""
    from mdctr.cli import main

    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert main(["cluster", "--help"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mdctr: warning: running in a Ray job's uploaded working directory")
    monkeypatch.chdir(tmp_path)
    assert main(["cluster", "--help"]) == 0
    assert not capsys.readouterr().err

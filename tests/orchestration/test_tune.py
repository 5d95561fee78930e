"""``mdctr tune``: the space parser, the objective with ``optuna.trial.FixedTrial``, pruning,
a local study with a failing trial, a study on a real local Ray cluster with K = 2, and the
storage read back with plain Optuna."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FixedTrial, TrialState

from mdctr.adapters.run import load_config
from mdctr.core.errors import ConfigError
from mdctr.orchestration.tune import study as study_mod
from mdctr.orchestration.tune.objective import Objective
from mdctr.orchestration.tune.space import check_space, suggest

REPO = Path(__file__).resolve().parents[2]
BASE = """data: movielens-100k:gender
baseline: shared
model: {tower: mlp, embedding_dim: 8, hidden: [32, 16]}
train: {epochs: 2, batch_size: 2048, patience: 2}
"""
SPACE = """tune:
  trials: 3
  pruner: {type: none}
  space:
    optim.dense.lr: {float: [1.0e-4, 1.0e-2], log: true}
    model.hidden: {categorical: [[32, 16], [16]]}
"""


def _config(tmp_path: Path, tune: str = SPACE, base: str = BASE) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(base + tune)
    return path


@pytest.mark.parametrize("space, culprit", [
    ("optim.dense.lrr: {float: [0.001, 0.01]}", "tune.space.optim.dense.lrr"),
    ("model.hidden: {categorical: [abc]}", "tune.space.model.hidden"),
    ("train.batch_size: {float: [0.5, 2.5]}", "tune.space.train.batch_size"),
    ("data: {categorical: [x, y]}", "tune.space.data"),
])
def test_a_bad_path_or_value_is_one_line_naming_it(tmp_path, space, culprit):
    cfg = load_config(_config(tmp_path, f"tune:\n  space:\n    {space}\n"))
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")) as err:
        check_space(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("space, problem", [
    ("optim.dense.lr: {float: [0.01, 0.01]}", "empty range"),
    ("optim.dense.lr: {float: [0.0, 0.01], log: true}", "log range must be positive"),
    ("optim.dense.lr: {float: [0.001, 0.01], categorical: [1]}", "exactly one"),
    ("model.hidden: {categorical: []}", "no choices"),
])
def test_a_malformed_dimension_fails_when_the_config_loads(tmp_path, space, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(_config(tmp_path, f"tune:\n  space:\n    {space}\n"))
    assert "tune.space" in str(err.value) and "\n" not in str(err.value)


def test_suggest_maps_list_choices_through_their_json_text(tmp_path):
    space = check_space(load_config(_config(tmp_path)))
    params = suggest(FixedTrial({"optim.dense.lr": 0.003, "model.hidden": "[16]"}), space)
    assert params == {"optim.dense.lr": 0.003, "model.hidden": [16]}


def test_the_objective_trains_the_trial_without_test_rows(tmp_path):
    objective = Objective(load_config(_config(tmp_path)), tmp_path / "trials")
    value = objective(FixedTrial({"optim.dense.lr": 0.003, "model.hidden": "[16]"}))
    run = tmp_path / "trials" / "trial-0000"
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    assert value == best["valid_wauc"] and 0.7 < value < 0.85
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "valid" and metrics["valid_wauc"] == value  # no test rows were scored
    assert "not evaluated on test rows" in (run / "train.log").read_text()
    assert load_config(run / "config.yaml").model.hidden == [16]


class PruneAtOnce(FixedTrial):
    def should_prune(self) -> bool:
        return True


def test_a_trial_the_pruner_stops_ends_after_that_epoch(tmp_path):
    objective = Objective(load_config(_config(tmp_path)), tmp_path / "trials")
    trial = PruneAtOnce({"optim.dense.lr": 0.003, "model.hidden": "[16]"})
    with pytest.raises(optuna.TrialPruned, match="pruned after 1 epochs"):
        objective(trial)
    state = json.loads((tmp_path / "trials" / "trial-0000" / "checkpoints" / "state.json").read_text())
    assert state["last_epoch"] == 0 and trial.user_attrs["epochs"] == 1


def test_a_local_study_records_a_failed_trial_and_writes_a_best_config_that_trains(tmp_path, monkeypatch):
    from mdctr.adapters import run as adapters_run

    monkeypatch.setenv("MDCTR_STATE", str(tmp_path / "state"))
    real = adapters_run.train

    def flaky(cfg, out, **kw):
        if Path(out).name == "trial-0001":
            raise RuntimeError("planted trial failure")
        return real(cfg, out, **kw)

    monkeypatch.setattr(adapters_run, "train", flaky)
    config = _config(tmp_path)
    cfg = load_config(config)
    result = study_mod.tune(config, cfg, out=tmp_path / "out", study="local")
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "state" / "tune" / "local.journal")))
    study = optuna.load_study(study_name="local", storage=storage)  # plain Optuna reads it back
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "1 fail" in result.table and "trial 1 failed" in result.table
    monkeypatch.setattr(adapters_run, "train", real)
    best = load_config(result.best_config)
    assert best.tune is None and best.optim.dense.lr == study.best_params["optim.dense.lr"]
    metrics = adapters_run.train(result.best_config, tmp_path / "best-run")
    assert metrics["split"] == "test" and metrics["wauc"] > 0.7
    with pytest.raises(ConfigError, match="--resume"):
        study_mod.tune(config, cfg, out=tmp_path / "out", study="local")
    shown = study_mod.report("local", None)
    assert shown.table.splitlines()[0] == result.table.splitlines()[0]
    # a run killed mid-trial leaves it RUNNING in the journal; --resume marks it failed, says
    # why, and runs the trials the study still lacks
    study.ask()
    more = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": 5})})
    resumed = study_mod.tune(config, more, out=tmp_path / "out", study="local", resume=True)
    states = [t.state for t in optuna.load_study(study_name="local", storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "0 running" in resumed.table and "trial 3 failed: left running by a run that stopped" in resumed.table
    trials = optuna.load_study(study_name="local", storage=storage).trials
    assert trials[4].params != trials[0].params  # a resumed run samples anew, not the first run's start


def test_tune_show_without_a_study_reports_the_latest(tmp_path, monkeypatch, capsys):
    """No ``--study``: the newest journal file under the state directory, or in a shared
    ``--storage`` the study started last; none there is one line naming where it looked."""
    from mdctr.cli import main

    monkeypatch.setenv("MDCTR_STATE", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match="no study in .*state/tune"):
        study_mod.latest_study(None)
    for name in ("older", "newer"):  # one journal file each, written in this order
        storage = study_mod.storage_for(None, name)
        optuna.create_study(study_name=name, storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                       n_trials=1)
    journals = tmp_path / "state" / "tune"
    os.utime(journals / "older.journal", (1, 1))
    assert study_mod.latest_study(None) == "newer"
    os.utime(journals / "newer.journal", (0, 0))
    assert study_mod.latest_study(None) == "older"
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    with pytest.raises(ConfigError, match="no study in sqlite"):
        study_mod.latest_study(shared)
    for name in ("first", "second", "empty"):  # "empty" has no trial, so no start time
        study = optuna.create_study(study_name=name, storage=shared)
        if name != "empty":
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert study_mod.latest_study(shared) == "second"
    assert main(["tune", "show", "--storage", shared]) == 0
    assert capsys.readouterr().out.startswith("study second (sqlite:///")


@pytest.mark.slow
def test_a_study_on_ray_runs_two_trials_at_once_with_pruning(tmp_path, monkeypatch):
    monkeypatch.setenv("MDCTR_STATE", str(tmp_path / "state"))
    config = _config(tmp_path, SPACE.replace("trials: 3", "trials: 4").replace(
        "pruner: {type: none}", "pruner: {type: median, startup_trials: 1, warmup_epochs: 0}"),
        BASE.replace("epochs: 2", "epochs: 3"))
    cfg = load_config(config)
    result = study_mod.tune(config, cfg, out=tmp_path / "out", study="ray", parallel=2)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "state" / "tune" / "ray.journal")))
    trials = optuna.load_study(study_name="ray", storage=storage).trials
    states = [t.state for t in trials]
    assert len(trials) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
    assert states.count(TrialState.COMPLETE) >= 1
    for t in trials:  # every trial ran in its own run directory
        assert Path(t.user_attrs["run_dir"]).is_dir()
        assert len(t.intermediate_values) == t.user_attrs["epochs"]  # one report per epoch trained
    assert result.best_config.is_file()


def test_several_splits_score_a_trial_by_their_mean(tmp_path):
    config = _config(tmp_path, SPACE.replace("  trials: 3\n", "  trials: 3\n  split_seeds: [0, 1]\n"),
                     BASE.replace("epochs: 2", "epochs: 1"))
    objective = Objective(load_config(config), tmp_path / "trials")
    trial = FixedTrial({"optim.dense.lr": 0.003, "model.hidden": "[16]"})
    value = objective(trial)
    per_split = []
    for seed in (0, 1):
        run = tmp_path / "trials" / "trial-0000" / f"split-{seed}"
        assert load_config(run / "config.yaml").train.split_seed == seed
        per_split.append(json.loads((run / "metrics.json").read_text())["valid_wauc"])
    assert per_split[0] != per_split[1] and value == pytest.approx(sum(per_split) / 2)
    assert trial.user_attrs["split_values"] == {"0": per_split[0], "1": per_split[1]}
    assert trial.user_attrs["epochs"] == 2  # one pruning curve over both splits


def test_split_seeds_must_be_distinct(tmp_path):
    with pytest.raises(ConfigError, match="split_seeds"):
        load_config(_config(tmp_path, SPACE.replace("  trials: 3\n", "  trials: 3\n  split_seeds: [1, 1]\n")))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                                        if "tune:" in p.read_text()))
def test_shipped_search_spaces_fit_their_configs(path):
    """Every shipped config's space (``configs/zoo/`` per tower too) checks out, and each zoo
    config's file name starts with its tower's name."""
    cfg = load_config(REPO / path)
    space = check_space(cfg)
    assert cfg.tune.objective == "valid_wauc" and space
    if path.startswith("configs/zoo/"):
        assert Path(path).stem.startswith(f"movielens_gender_{cfg.model.tower}")
        assert cfg.tune.split_seeds == [0, 1, 2]

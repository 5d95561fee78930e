"""Training on real MovieLens-100K: metrics, checkpoints, baselines, towers, evaluate, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mdctr.core.errors import DataContractError, RunDirError
from mdctr.domains.splits import TEST, random_parts
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.run import evaluate, train


MDCTR = [sys.executable, "-m", "mdctr.cli"]


@pytest.fixture(scope="module")
def shared_run(ml_gender, tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("runs") / "shared"
    metrics = train(make_config(ml_gender), out)
    return out, metrics


def test_metrics_json_schema_and_quality(shared_run, ml_gender):
    out, metrics = shared_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert set(metrics) == {"split", "n", "auc", "logloss", "wauc", "domains"}
    assert metrics["split"] == "test"
    import pyarrow.parquet as pq

    ids = pq.read_table(ml_gender / "part-00000.parquet", columns=["example_id"]).column(0).to_numpy()
    assert metrics["n"] == int((random_parts(ids, load_split(ml_gender)) == TEST).sum())
    assert set(metrics["domains"]) == {"F", "M"}
    assert metrics["domains"]["F"]["n"] + metrics["domains"]["M"]["n"] == metrics["n"]
    weighted = sum(d["n"] * d["auc"] for d in metrics["domains"].values()) / metrics["n"]
    assert metrics["wauc"] == pytest.approx(weighted, abs=1e-5)
    assert 0.76 < metrics["auc"] < 0.82  # 3 short epochs of a small MLP on MovieLens-100K
    assert 0.45 < metrics["logloss"] < 0.62


def load_split(directory: Path):
    from mdctr.domains.spec import load_spec

    return load_spec(directory).split.random


def test_run_directory_and_checkpoints(shared_run):
    out, _ = shared_run
    for name in ("config.yaml", "dataset.yaml", "run.json", "history.json", "train.log"):
        assert (out / name).exists(), name
    state = ckpt.read_state(out / "checkpoints")
    assert state.last_epoch == 2 and 0 <= state.best_epoch <= 2
    assert [h["epoch"] for h in state.history] == [0, 1, 2]
    kept = sorted(p.name for p in (out / "checkpoints").glob("epoch-*"))
    assert kept == sorted({f"epoch-{state.last_epoch:04d}", f"epoch-{state.best_epoch:04d}"})
    assert state.best_wauc == max(h["valid_wauc"] for h in state.history)
    run = json.loads((out / "run.json").read_text())
    assert run["wall_seconds"] > 0 and len(run["config_fingerprint"]) == 16


def test_evaluate_reproduces_test_metrics(shared_run, tmp_path):
    out, metrics = shared_run
    again = evaluate(out, split="test", out=tmp_path / "m.json")
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    assert again["domains"]["F"]["auc"] == pytest.approx(metrics["domains"]["F"]["auc"], abs=1e-6)


def test_evaluate_on_other_domains_and_bad_data(shared_run, tmp_path):
    out, _ = shared_run
    from mdctr.domains.datasets import resolve_data

    age = evaluate(out, resolve_data("movielens-100k:age"), split="test", out=tmp_path / "age.json")
    assert set(age["domains"]) == {"under-18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert age["n"] == sum(d["n"] for d in age["domains"].values())
    from mdctr.domains.synthetic import SyntheticConfig, generate_synthetic

    synth = tmp_path / "synth"
    generate_synthetic(SyntheticConfig(rows=2000, users=50, items=40), synth, progress=False)
    with pytest.raises(DataContractError, match="differ from the run's"):
        evaluate(out, synth, out=tmp_path / "x.json")


def test_same_seed_same_metrics_and_split_seed_changes_test_set(ml_gender, shared_run, tmp_path, make_config):
    _, metrics = shared_run
    again = train(make_config(ml_gender), tmp_path / "again")
    assert again == metrics
    other = train(make_config(ml_gender, train={"epochs": 1, "split_seed": 1}), tmp_path / "s1")
    assert other["n"] != metrics["n"]


@pytest.mark.parametrize("baseline", ["shared_domain_feature", "separate"])
def test_baselines(ml_gender, tmp_path, baseline, make_config):
    m = train(make_config(ml_gender, baseline=baseline, train={"epochs": 2}), tmp_path / baseline)
    assert set(m["domains"]) == {"F", "M"}
    assert m["auc"] > 0.74
    if baseline == "separate":
        for d in ("F", "M"):
            state = ckpt.read_state(tmp_path / baseline / "checkpoints" / d)
            assert state is not None and state.best_epoch >= 0
    else:
        cfg = yaml.safe_load((tmp_path / baseline / "config.yaml").read_text())
        assert cfg["baseline"] == "shared_domain_feature"


@pytest.mark.parametrize("tower", ["dcnv2", "deepfm", "finalmlp"])
def test_other_towers_train(ml_gender, tmp_path, tower, make_config):
    m = train(make_config(ml_gender, model={"tower": tower}, train={"epochs": 2}), tmp_path / tower)
    assert m["auc"] > 0.75


def test_bad_input_leaves_no_run_directory(ml_gender, tmp_path, make_config):
    out = tmp_path / "run"
    with pytest.raises(DataContractError, match="not a dataset"):
        train(make_config(tmp_path / "missing"), out)
    assert not out.exists()
    with pytest.raises(ValueError, match="table_rows names fields"):
        train(make_config(ml_gender, model={"table_rows": {"nope": 4}}), out)
    assert not out.exists()
    (out / "keep").mkdir(parents=True)
    with pytest.raises(RunDirError, match="not empty"):
        train(make_config(ml_gender), out)
    assert [p.name for p in out.iterdir()] == ["keep"]


def test_resume_with_a_different_config_is_refused(shared_run, ml_gender, make_config):
    out, _ = shared_run
    with pytest.raises(RunDirError, match="differs"):
        train(make_config(ml_gender, train={"seed": 5}), out, resume=True)


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: movielens-100k:gender\ntrian: {}\n")
    proc = subprocess.run([*MDCTR, "train", "--config", str(bad), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"mdctr: error: {bad}: unknown key 'trian'"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(ml_gender, tmp_path, make_config):
    cfg = make_config(ml_gender, train={"epochs": 4, "patience": 4})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    full = train(cfg, tmp_path / "full")
    out = tmp_path / "killed"
    proc = subprocess.Popen([*MDCTR, "train", "--config", str(config), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = ckpt.read_state(out / "checkpoints") if (out / "checkpoints" / "state.json").exists() else None
        if state is not None and state.last_epoch >= 0:
            break
        if proc.poll() is not None:
            pytest.fail("training ended before it could be interrupted")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = ckpt.read_state(out / "checkpoints")
    assert state.last_epoch < 3 and not (out / "metrics.json").exists()
    resumed = train(config, out, resume=True)
    assert resumed["auc"] == pytest.approx(full["auc"], abs=1e-4)
    assert resumed["wauc"] == pytest.approx(full["wauc"], abs=1e-4)
    history = json.loads((out / "history.json").read_text())["history"]["all"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]


@pytest.mark.slow
def test_world_size_two_matches_world_size_one(ml_gender, tmp_path, shared_run, make_config):
    _, one = shared_run
    two = train(make_config(ml_gender), tmp_path / "ws2", world_size=2)
    assert abs(two["auc"] - one["auc"]) <= 0.003
    assert set(two["domains"]) == {"F", "M"}
    assert two["n"] == one["n"]


def test_keep_only_restores_the_best_epochs_weights_from_memory(ml_gender, tmp_path, make_config):
    """Fine-tuning a few weights: the best epoch's copy of just those entries is kept in
    memory (no checkpoint files) and is what the trainer ends with."""
    import torch

    from mdctr.domains.spec import load_spec
    from mdctr.platform.distributed import launch
    from mdctr.platform.job import Job
    from mdctr.platform.model import CTRModel, feature_layout
    from mdctr.platform.trainer import Trainer

    cfg = make_config(ml_gender, train={"epochs": 4, "patience": 4})
    layout = feature_layout(load_spec(ml_gender), cfg.model, cfg.baseline)
    tower = lambda name: name.startswith("tower.")  # noqa: E731
    out = {}

    def work(rank, world):
        model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
        model.embeddings_frozen = True  # only the tower moves
        job = Job(cfg, ml_gender, tmp_path / "ck", model=lambda cfg, layout: model, trainable=tower, keep_only=tower,
                  progress=False)
        trainer = Trainer(job, layout.reader(ml_gender), layout)
        scores, seen = iter([0.60, 0.90, 0.70, 0.80]), []  # epoch 1 is the best, epoch 3 the last
        real = trainer.evaluate

        def evaluate(split, *args, **kwargs):
            if split != "valid":
                return real(split, *args, **kwargs)
            seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items() if tower(k)})
            return {"auc": None, "wauc": next(scores), "logloss": None}

        trainer.evaluate = evaluate
        state = trainer.fit()
        out["state"] = state
        out["final"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if tower(k)}
        out["seen"] = seen
        with pytest.raises(ValueError, match="cannot resume"):
            trainer.fit(resume=True)

    launch(work, 1)
    state, seen, final = out["state"], out["seen"], out["final"]
    assert (state.best_epoch, state.last_epoch) == (1, 3)
    assert set(final) == {f"tower.mlp.{m}.{w}" for m in ("layers.0", "layers.1", "head") for w in ("weight", "bias")}
    for k, v in final.items():
        assert torch.equal(v, seen[1][k]), k  # the best epoch's weights are back ...
    assert any(not torch.equal(seen[3][k], seen[1][k]) for k in final)  # ... not the last epoch's
    assert not any(p.name.startswith("epoch-") for p in (tmp_path / "ck").iterdir())


@pytest.mark.parametrize("averaged_score", [0.95, 0.85])
def test_epoch_averaging_serves_the_mean_of_the_epochs_if_validation_agrees(ml_gender, tmp_path, make_config,
                                                                            averaged_score):
    """``train.average``: when training stops, the weights after epochs ``from_epoch``..last
    (tables and dense layers, as this rank holds them) are averaged, validated and
    checkpointed as one more epoch; that is the run's model if it beats the best epoch on
    validation (0.95 > 0.90), else the best epoch stays (0.85)."""
    import torch

    from mdctr.domains.spec import load_spec
    from mdctr.platform.distributed import launch
    from mdctr.platform.job import Job
    from mdctr.platform.model import feature_layout, table_entry
    from mdctr.platform.trainer import Trainer, local_entries

    cfg = make_config(ml_gender, train={"epochs": 4, "patience": 4, "average": {"from_epoch": 1}})
    layout = feature_layout(load_spec(ml_gender), cfg.model, cfg.baseline)
    out = {}

    def work(rank, world):
        trainer = Trainer(Job(cfg, ml_gender, tmp_path / "ck", progress=False), layout.reader(ml_gender), layout)
        scores, seen = iter([0.60, 0.90, 0.70, 0.80, averaged_score]), []
        real = trainer.evaluate

        def evaluate(split, *args, **kwargs):
            if split != "valid":
                return real(split, *args, **kwargs)
            seen.append({k: v.detach().clone() for k, v in local_entries(trainer.model).items()})
            return {"auc": None, "wauc": next(scores), "logloss": None}

        trainer.evaluate = evaluate
        out["state"] = trainer.fit()
        out["final"] = {k: v.detach().clone() for k, v in local_entries(trainer.model).items()}
        out["seen"] = seen
        out["resumed"] = trainer.fit(resume=True)  # a finished run: nothing is trained or averaged again

    launch(work, 1)
    state, seen, final = out["state"], out["seen"], out["final"]
    assert [h["epoch"] for h in state.history] == [0, 1, 2, 3, 4]
    assert state.history[-1]["averaged"] == [1, 2, 3] and state.history[-1]["train_loss"] is None
    assert state.last_epoch == 4 and state.stopped
    table = table_entry("item_id") + "#0"
    assert table in final and any(k.startswith("tower.") for k in final)
    mean = {k: torch.stack([seen[e][k] for e in (1, 2, 3)]).mean(0) for k in seen[1] if seen[1][k].is_floating_point()}
    for k, v in seen[4].items():  # what was validated as epoch 4: the mean of epochs 1-3
        assert torch.allclose(v, mean[k], atol=1e-6) if k in mean else torch.equal(v, seen[3][k]), k
    assert not torch.allclose(mean[table], seen[3][table])  # the tables moved between the averaged epochs
    kept = sorted(p.name for p in (tmp_path / "ck").glob("epoch-*"))
    if averaged_score > 0.90:
        assert (state.best_epoch, state.best_wauc) == (4, 0.95)
        assert all(torch.equal(final[k], seen[4][k]) for k in final)  # the average is the model ...
        assert kept == ["epoch-0004"]
    else:
        assert (state.best_epoch, state.best_wauc) == (1, 0.90)
        assert all(torch.equal(final[k], seen[1][k]) for k in final)  # ... or the best epoch stays
        assert kept == ["epoch-0001", "epoch-0004"]
    assert out["resumed"].history == state.history


def test_epoch_averaging_in_a_run_and_where_it_does_not_apply(ml_gender, tmp_path, make_config):
    """A run with ``train.average`` records the averaged epochs in its history, evaluates to
    its metrics, and a job that keeps weights in memory or selects per domain refuses it."""
    from mdctr.domains.spec import load_spec
    from mdctr.platform.job import Job
    from mdctr.platform.model import feature_layout
    from mdctr.platform.trainer import Trainer

    cfg = make_config(ml_gender, train={"epochs": 3, "patience": 3, "average": {}})
    assert cfg.train.average.from_epoch == 1 and make_config(ml_gender).train.average is None
    metrics = train(cfg, tmp_path / "avg")
    history = json.loads((tmp_path / "avg" / "history.json").read_text())
    rows = history["history"]["all"] if isinstance(history, dict) else history
    assert rows[-1]["averaged"] == [1, 2] and rows[-1]["valid_wauc"] > 0.7
    again = evaluate(tmp_path / "avg")
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    two = train(cfg, tmp_path / "avg-ws2", world_size=2)  # each rank averages its own shards
    history2 = json.loads((tmp_path / "avg-ws2" / "history.json").read_text())
    rows2 = history2["history"]["all"] if isinstance(history2, dict) else history2
    assert rows2[-1]["averaged"] == [1, 2] and abs(two["auc"] - metrics["auc"]) <= 0.003
    blind = make_config(ml_gender, train={"epochs": 2, "validation": False, "average": {"from_epoch": 0}})
    train(blind, tmp_path / "blind")  # no validation: the average is the model
    state = ckpt.read_state(tmp_path / "blind" / "checkpoints")
    assert (state.best_epoch, state.last_epoch) == (2, 2) and state.history[-1]["averaged"] == [0, 1]
    with pytest.raises(Exception, match="from_epoch"):
        make_config(ml_gender, train={"average": {"from_epoch": -1}})
    layout = feature_layout(load_spec(ml_gender), cfg.model, cfg.baseline)
    for kw in ({"keep_only": lambda k: True}, {"per_domain": lambda k, d: True, "frozen": lambda k: False}):
        with pytest.raises(ValueError, match="train.average"):
            Trainer(Job(cfg, ml_gender, tmp_path / "ck", progress=False, **kw), layout.reader(ml_gender), layout)


def test_hooks_see_every_epoch_and_can_stop_training(ml_gender, tmp_path, make_config):
    """``TrainerHooks.on_epoch_end`` gets each epoch's validation metrics and checkpoint, and
    returning True stops training there (what an Optuna pruner does); the run still ends on
    its best epoch."""
    from mdctr.platform.distributed import launch
    from mdctr.platform.job import Job, TrainerHooks, run_job
    from mdctr.platform.outputs import RunOutput

    class Recorder(TrainerHooks):
        def __init__(self):
            self.calls = []

        def on_epoch_end(self, epoch, metrics, checkpoint):
            self.calls.append((epoch, metrics["valid_wauc"], checkpoint is not None and checkpoint.is_dir()))
            return epoch == 2

    hooks = Recorder()
    cfg = make_config(ml_gender, train={"epochs": 6, "patience": 6})
    job = Job(cfg, ml_gender, tmp_path / "ck", validate_start=True, hooks=hooks, progress=False)
    launch(run_job, 1, job)
    assert [c[0] for c in hooks.calls] == [0, 1, 2]  # the start, then epochs until the hook said stop
    assert all(c[2] for c in hooks.calls) and all(0.7 < c[1] < 1 for c in hooks.calls[1:]), hooks.calls
    state = ckpt.read_state(tmp_path / "ck")
    assert state.last_epoch == 2 and state.stopped
    assert [h["valid_wauc"] for h in state.history] == [c[1] for c in hooks.calls]
    assert state.best_epoch == max(range(3), key=lambda e: hooks.calls[e][1])


def test_embedding_l2_penalises_the_batchs_pooled_embeddings(ml_gender, make_config, shared_run, tmp_path):
    """``train.embedding_l2``: the model leaves ``l2 * mean ||pooled||^2`` of a training batch
    for the loss (nothing in eval); training with it changes the metrics; 0 is the default."""
    import torch

    from mdctr.domains.spec import load_spec
    from mdctr.platform.model import CTRModel, feature_layout

    cfg = make_config(ml_gender, train={"embedding_l2": 0.5})
    layout = feature_layout(load_spec(ml_gender), cfg.model, cfg.baseline)
    model = CTRModel(layout, cfg.model, device="cpu")
    model.embedding_l2 = 0.5
    batch = next(layout.reader(ml_gender).batches("train", batch_size=64, shuffle=False))
    pooled = model.pooled(batch.sparse, batch.domain)
    assert model.penalty is not None
    assert torch.allclose(model.penalty, 0.5 * pooled.pow(2).sum(1).mean())
    model.penalty = None
    model.eval()
    model.pooled(batch.sparse, batch.domain)
    assert model.penalty is None

    assert make_config(ml_gender).train.embedding_l2 == 0.0
    strong = train(cfg, tmp_path / "l2")
    assert strong["wauc"] != shared_run[1]["wauc"] and strong["wauc"] > 0.7
    with pytest.raises(Exception, match="embedding_l2"):
        make_config(ml_gender, train={"embedding_l2": -1.0})


def _kernel_learning_rates(trainer) -> list[float]:
    """The learning rates fbgemm's table kernels will use (what the fused optimizer set)."""
    return [em._emb_module.get_learning_rate() for lookup in trainer.net.ebc._lookups for em in lookup._emb_modules]


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_lr_schedule_scales_dense_and_table_learning_rates(ml_gender, tmp_path, make_config, schedule):
    """``train.lr_schedule``: every learning rate (Adam's and the fbgemm table kernels') is
    its configured value times the schedule's scale; plateau halves it after each epoch that
    does not beat the best validation WAUC, cosine follows the warm-up and decay curve."""
    from mdctr.domains.spec import load_spec
    from mdctr.platform.distributed import launch
    from mdctr.platform.job import Job
    from mdctr.platform.model import feature_layout
    from mdctr.platform.schedule import lr_scale
    from mdctr.platform.trainer import Trainer

    sched = ({"decay": "plateau", "factor": 0.5} if schedule == "plateau"
             else {"warmup_epochs": 1, "decay": "cosine", "min_scale": 0.1})
    cfg = make_config(ml_gender, train={"epochs": 4, "patience": 4, "lr_schedule": sched},
                      optim={"embedding": {"lr": 0.04}, "dense": {"lr": 0.002}})
    layout = feature_layout(load_spec(ml_gender), cfg.model, cfg.baseline)
    out = {"dense": [], "tables": [], "steps": None}

    def work(rank, world):
        trainer = Trainer(Job(cfg, ml_gender, tmp_path / "ck", progress=False), layout.reader(ml_gender), layout)
        scores = iter([0.80, 0.70, 0.75, 0.90])
        trainer.evaluate = lambda split: {"auc": None, "wauc": next(scores), "logloss": None}
        real = trainer.train_epoch

        def train_epoch(epoch, **kw):
            loss = real(epoch, **kw)
            out["dense"].append(trainer.dense_opt.param_groups[0]["lr"])
            out["tables"].append(_kernel_learning_rates(trainer))
            return loss

        trainer.train_epoch = train_epoch
        trainer.fit()
        out["steps"] = trainer.schedule.steps_per_epoch

    launch(work, 1)
    if schedule == "plateau":  # the scale a training epoch ran with: cuts after epochs 1 and 2
        scales = [1.0, 1.0, 0.5, 0.25]
    else:
        scales = [lr_scale(cfg.train.lr_schedule, epoch=e, step=out["steps"] - 1, steps_per_epoch=out["steps"],
                           epochs=4, history=[]) for e in range(4)]
        assert scales[0] == 1.0 and 0.1 < scales[3] < scales[2] < scales[1] < 1.0
    assert out["dense"] == pytest.approx([0.002 * s for s in scales])
    assert all(rates and all(r == pytest.approx(0.04 * s) for r in rates) for rates, s in zip(out["tables"], scales))


def test_dropout_per_hidden_layer(ml_gender, make_config):
    from torch import nn

    from mdctr.platform.dropout import Dropout
    from mdctr.platform.towers import MLP

    mlp = MLP(8, [4, 4, 2], dropout=[0.1, 0.0, 0.3])
    assert [type(d) for d in mlp.dropouts] == [Dropout, nn.Identity, Dropout]
    assert [d.p for d in mlp.dropouts if isinstance(d, Dropout)] == [0.1, 0.3]
    assert all(d.p == 0.2 for d in MLP(8, [4, 4], dropout=0.2).dropouts)
    assert make_config(ml_gender, model={"hidden": [64, 32], "dropout": [0.2, 0.1]}).model.dropout == [0.2, 0.1]
    with pytest.raises(ValueError, match="model.dropout lists 1 rates for 2 hidden layers"):
        make_config(ml_gender, model={"hidden": [64, 32], "dropout": [0.2]})
    with pytest.raises(ValueError, match=r"model.dropout rates must be in \[0, 1\)"):
        make_config(ml_gender, model={"hidden": [64, 32], "dropout": [0.2, 1.0]})


def test_train_window_trains_and_tests_on_the_windows_rows_only(ml_gender, tmp_path, make_config):
    """``train.window`` narrows every part: a temporal split's test days lie inside a window
    that starts 4 weeks before them, and training reads only the window's train rows."""
    import numpy as np
    import pyarrow.parquet as pq

    from datetime import date

    from mdctr.core.timeutil import DAY, day_ts, iso_day
    from mdctr.domains.spec import load_spec

    t = load_spec(ml_gender).split.temporal
    ts = pq.read_table(ml_gender / "part-00000.parquet", columns=["ts"]).column(0).to_numpy()
    start = date.fromisoformat(iso_day(t.valid_start - 28 * DAY))
    cfg = make_config(ml_gender, train={"epochs": 1, "split_kind": "temporal", "window": {"start": start.isoformat()}})
    metrics = train(cfg, tmp_path / "w")
    assert metrics["n"] == int((ts >= t.test_start).sum())  # the whole test part is inside the window
    want = int(((ts >= day_ts(start)) & (ts < t.valid_start)).sum())
    assert 5_000 < want < 50_000
    assert f"training on {want} rows (train)" in (tmp_path / "w" / "train.log").read_text()

    over = make_config(ml_gender, train={"split_kind": "temporal", "window": {"start": "1999-01-01"}})
    with pytest.raises(DataContractError, match="train.window"):
        train(over, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_train_window_must_be_ordered(ml_gender, make_config):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must precede end"):
        make_config(ml_gender, train={"window": {"start": "1998-03-01", "end": "1998-03-01"}})

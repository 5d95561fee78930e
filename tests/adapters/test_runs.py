"""MLoRA runs on real MovieLens-100K: two-phase freezing, joint, onboarding, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from mdctr.adapters.model import AdapterConfig
from mdctr.adapters.onboard import FINETUNE_LR_SCALE, finetune, predict
from mdctr.adapters.run import MLoRATrainConfig, evaluate, train
from mdctr.adapters.serve import list_adapters, merge
from mdctr.domains.datasets import resolve_data
from mdctr.core.errors import ArtifactError
from mdctr.domains.batching import DatasetReader
from mdctr.domains.selection import Selection
from mdctr.platform import checkpoint as ckpt
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def data():
    return resolve_data("movielens-100k:gender")


def config(data, mode="two_phase", **train):
    return MLoRATrainConfig.model_validate({
        "data": str(data), "model": {"hidden": [64, 32]},
        "train": {"epochs": 2, "batch_size": 1024, "seed": 0, **train},
        "adapters": {"mode": mode, "alpha": 8},
    })


def load_dcp(directory: Path) -> dict[str, torch.Tensor]:
    return _load_state_dict_from_keys(checkpoint_id=str(directory))["model"]


@pytest.fixture(scope="module")
def two_phase(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlora") / "two_phase"
    # the backbone's pretraining averages its epochs (train.average); the adapter phase does not
    return out, train(config(data, average={"from_epoch": 0}), out)


def test_two_phase_freezes_tables_and_backbone_bit_identically(two_phase):
    out, metrics = two_phase
    assert set(metrics["domains"]) == {"F", "M"} and metrics["auc"] > 0.75
    run = json.loads((out / "run.json").read_text())
    assert run["backbone_unchanged"] is True
    pre = ckpt.read_state(out / "checkpoints" / "pretrain")
    post = ckpt.read_state(out / "checkpoints")
    assert pre.history[-1]["averaged"] == [0, 1]  # the pretraining's 2 epochs were averaged
    assert not any("averaged" in h for h in post.history)  # the adapter phase selects per domain
    before = load_dcp(ckpt.epoch_dir(out / "checkpoints" / "pretrain", pre.best_epoch))
    after = load_dcp(ckpt.epoch_dir(out / "checkpoints", post.best_epoch))
    backbone = [k for k in before if "lora_" not in k]
    assert any("embedding_bags" in k for k in backbone) and any("tower" in k for k in backbone)
    for k in backbone:
        assert torch.equal(before[k], after[k]), k
    assert post.history[0]["train_loss"] is None  # the zero-adapter start competed as epoch 0
    # per-domain selection: each domain's adapter is the one of its recorded epoch (kept on disk)
    selected = run["selected_epochs"]
    assert post.history[-1]["selected"] == selected and set(selected) == {"F", "M"}
    assert post.best_epoch == post.last_epoch == 3  # the start, 2 epochs, then the assembled model
    for domain, epoch in selected.items():
        chosen = load_dcp(ckpt.epoch_dir(out / "checkpoints", epoch))
        mine = [k for k in after if "lora_" in k and k.endswith(f".{domain}")]
        assert mine and all(torch.equal(after[k], chosen[k]) for k in mine), domain
        if epoch == 0:  # the untrained adapter: B and b zero, a no-op
            assert all(after[k].abs().sum() == 0 for k in mine if "lora_B" in k or "lora_bias" in k)
    trained = [h for h in post.history if h["train_loss"] is not None]
    assert len(trained) == 2 and all(set(h["valid_domain_auc"]) == {"F", "M"} for h in trained)
    # parameter accounting: hidden [64, 32] -> ranks 8 and 4
    per_domain = run["parameters"]["adapter_per_domain"]["F"]
    assert per_domain == (128 * 8 + 8 * 64 + 64) + (64 * 4 + 4 * 32 + 32)
    assert run["parameters"]["adapter_share_per_domain"]["F"] == pytest.approx(per_domain / run["parameters"]["backbone"], abs=1e-5)


def test_evaluate_two_phase_run_reproduces_metrics(two_phase, tmp_path):
    out, metrics = two_phase
    again = evaluate(out, split="test", out=tmp_path / "m.json")
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_joint_mode_trains(data, tmp_path, precision):
    """Also in mixed precision: the adapted layers step out of autocast (test_layer.py)."""
    m = train(config(data, mode="joint", precision=precision), tmp_path / "joint")
    assert m["auc"] > 0.75 and set(m["domains"]) == {"F", "M"}


def test_onboard_new_domain_leaves_other_domains_bit_identical(data, tmp_path):
    base = tmp_path / "base"
    train(config(data, domains=["M"], average={}), base)  # F held back; finetune does not average
    assert [r["domain"] for r in list_adapters(base)] == ["M"]
    before = predict(base, data, domains=["M"])
    meta = finetune(base, "F", data, tmp_path / "adapter-F", epochs=2, rows="cold")
    assert (tmp_path / "adapter-F" / "adapter.safetensors").exists()
    assert meta["domain"] == "F" and meta["rank"] == {"tower.mlp.layers.0": 8, "tower.mlp.layers.1": 4}
    assert meta["layer_shapes"] == {"tower.mlp.layers.0": [128, 64], "tower.mlp.layers.1": [64, 32]}
    assert meta["metrics"]["domains"]["F"]["auc"] > 0.6
    # F's users were never seen by the backbone: the adapter learned their rows (and only those)
    assert meta["row_counts"]["user_id"] > 200 and meta["row_counts"]["gender"] == 1
    tensors = load_file(str(tmp_path / "adapter-F" / "adapter.safetensors"))
    cold_users = tensors["rows.user_id.ids"]
    train_rows = DatasetReader(data).batches("train", Selection(domains=("M",)), batch_size=10**6, shuffle=False)
    m_users = set(next(train_rows).sparse["user_id"].values().tolist())
    assert not m_users & set(cold_users.tolist())
    assert tensors["rows.user_id.weight"].abs().sum() > 0
    assert meta["parameters"] == sum(t.numel() for k, t in tensors.items() if not k.endswith(".ids"))
    # reproducible: the new adapter's init is drawn from the seed, not the process's RNG state
    # (an unseeded init differs by ~0.5 here). Within 1e-6, not bit for bit: MKL's GEMM bits
    # depend on the operands' memory alignment, which differs between runs in one process.
    torch.rand(7)
    finetune(base, "F", data, tmp_path / "adapter-F-again", epochs=2, rows="cold")
    again = load_file(str(tmp_path / "adapter-F-again" / "adapter.safetensors"))
    assert again.keys() == tensors.keys()
    for k in tensors:
        torch.testing.assert_close(again[k], tensors[k], rtol=0, atol=1e-6)
    after = predict(base, data, adapters=[tmp_path / "adapter-F"], domains=["M"])
    assert torch.equal(before["logits"], after["logits"])
    with_f = predict(base, data, adapters=[tmp_path / "adapter-F"], domains=["F"])
    without_f = predict(base, data, domains=["F"])
    assert not torch.equal(with_f["logits"], without_f["logits"])  # the adapter does act on F
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert bce(with_f["logits"], with_f["labels"]) < bce(without_f["logits"], without_f["labels"])

    # a different backbone refuses the adapter
    other = tmp_path / "other"
    train(config(data, domains=["M"], seed=1), other)
    with pytest.raises(ArtifactError, match="was trained on backbone"):
        predict(other, data, adapters=[tmp_path / "adapter-F"], domains=["F"])

    # merged single-domain serving form equals the adapted model
    info = merge(base, "F", tmp_path / "merged-F", adapters=[tmp_path / "adapter-F"])
    assert info["max_abs_logit_gap"] <= 1e-5 and info["rows_checked"] > 0
    from mdctr.platform.run import evaluate as plain_evaluate

    merged = plain_evaluate(tmp_path / "merged-F", data, out=tmp_path / "merged.json")
    assert merged["domains"]["F"]["auc"] == pytest.approx(meta["metrics"]["domains"]["F"]["auc"], abs=1e-5)

    # exported artifacts: F merged (cold rows folded into its tables), and every domain routed
    from mdctr.adapters.export import export

    for domain in ("F", None):
        art = tmp_path / f"artifact-{domain}"
        export(base, art, domain=domain, adapters=[tmp_path / "adapter-F"])
        scripted = torch.jit.load(str(art / "model.pt"))
        domains = [domain] if domain else ["F", "M"]
        want = predict(base, data, adapters=[tmp_path / "adapter-F"], domains=domains)
        got = torch.cat([scripted(b.sparse.values(), b.sparse.lengths(), b.dense, b.domain)
                         for b in DatasetReader(data).batches("test", Selection(domains=tuple(domains)),
                                                             batch_size=4096, shuffle=False)])
        torch.testing.assert_close(got, want["logits"], rtol=0, atol=1e-5)

    # without own rows the adapter is the tower adapter alone (and does worse on F's new users)
    plain = finetune(base, "F", data, tmp_path / "adapter-F-plain", epochs=2, rows="none")
    assert plain["row_counts"] == {} and plain["parameters"] < meta["parameters"]
    every = finetune(base, "F", data, tmp_path / "adapter-F-all", epochs=1)  # the defaults
    assert every["rows"] == "all" and meta["rows"] == "cold"
    base_lr = config(data).optim.dense.lr
    assert every["lr"] == pytest.approx(base_lr * FINETUNE_LR_SCALE) and plain["lr"] == every["lr"]
    assert every["row_counts"]["item_id"] > meta["row_counts"]["item_id"]  # items M also rated get residuals too
    assert torch.equal(before["logits"], predict(base, data, adapters=[tmp_path / "adapter-F-all"], domains=["M"])["logits"])
    with pytest.raises(ValueError, match="rows must be one of"):
        finetune(base, "F", data, tmp_path / "adapter-F-bad", rows="some")


def test_adapter_config_is_validated():
    with pytest.raises(ValueError):
        AdapterConfig(mode="sideways")
    with pytest.raises(ValueError):
        AdapterConfig(alpha=0)
    for key, value in (("lr", 1e-4), ("epochs", 3), ("select", "global"), ("pretrain_epochs", 2)):
        with pytest.raises(ValueError, match=f"adapters.{key} applies to mode two_phase only"):
            AdapterConfig(mode="joint", **{key: value})
    AdapterConfig(**AdapterConfig(mode="joint").model_dump())  # a dumped joint config loads


def test_per_domain_selection_keeps_each_domains_best_adapter_epoch(data, tmp_path):
    """Each domain ends with its adapter from the epoch of its own best validation AUC (here
    F: epoch 2, M: the untrained start); training goes on while any domain improves; the
    assembled model is validated and checkpointed as the best epoch; the backbone is as it was."""
    from mdctr.adapters.model import is_domain_entry
    from mdctr.adapters.run import MLoRABuilder, is_backbone_entry
    from mdctr.domains.spec import load_spec
    from mdctr.platform.distributed import launch
    from mdctr.platform.job import Job
    from mdctr.platform.model import feature_layout
    from mdctr.platform.trainer import Trainer, frozen_entries, same_tensors

    cfg = config(data, epochs=6, patience=2)
    layout = feature_layout(load_spec(data), cfg.model, cfg.baseline)
    # (F, M) validation AUC at epochs 0 (start) .. 4; F improves until 2, M never beats the start;
    # no domain improves at epochs 3 and 4 -> patience 2 stops there; then the assembled model
    scores = iter([(0.70, 0.80), (0.71, 0.79), (0.74, 0.78), (0.73, 0.77), (0.72, 0.79), (0.74, 0.80)])
    out = {}

    def work(rank, world):
        job = Job(cfg, data, tmp_path / "ck", model=MLoRABuilder(freeze=True), frozen=is_backbone_entry,
                  per_domain=is_domain_entry, validate_start=True, group_domains=True, progress=False,
                  trainable=lambda n: "lora_" in n)
        trainer = Trainer(job, layout.reader(data), layout)
        real = trainer.evaluate

        def evaluate(split):
            if split != "valid":
                return real(split)
            f, m = next(scores)
            return {"auc": None, "wauc": (f + 3 * m) / 4, "logloss": None,
                    "domains": {"F": {"auc": f}, "M": {"auc": m}}}

        trainer.evaluate = evaluate
        before = frozen_entries(trainer.model, is_backbone_entry)
        out["state"] = trainer.fit(validate_start=True)
        out["final"] = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
        out["backbone_same"] = same_tensors(before, frozen_entries(trainer.model, is_backbone_entry))

    launch(work, 1)
    state = out["state"]
    assert [h["epoch"] for h in state.history] == [0, 1, 2, 3, 4, 5] and state.stopped
    assert state.history[-1]["selected"] == {"F": 2, "M": 0} and state.history[-1]["train_loss"] is None
    assert (state.best_epoch, state.last_epoch, state.best_wauc) == (5, 5, pytest.approx((0.74 + 3 * 0.80) / 4))
    assert out["backbone_same"]
    kept = sorted(p.name for p in (tmp_path / "ck").glob("epoch-*"))
    assert kept == ["epoch-0000", "epoch-0002", "epoch-0005"]  # each domain's best, and the assembled
    f2, start = load_dcp(tmp_path / "ck" / "epoch-0002"), load_dcp(tmp_path / "ck" / "epoch-0000")
    for k, v in out["final"].items():
        source = f2 if k.endswith(".F") else start
        assert torch.equal(v, source[k.replace("_dmp_wrapped_module.", "")] if k not in source else source[k]), k
    assert any(out["final"][k].abs().sum() > 0 for k in out["final"] if "lora_B" in k and k.endswith(".F"))
    assert all(out["final"][k].abs().sum() == 0 for k in out["final"] if "lora_B" in k and k.endswith(".M"))


def test_two_phase_says_when_every_domain_kept_the_shared_model(two_phase, tmp_path, caplog):
    """A two_phase run whose domains all kept the untrained adapter warns once, naming the
    ``joint`` mode; a run that kept one adapter does not."""
    import shutil

    from mdctr.adapters.run import _hint_if_no_adapter_kept

    out, _ = two_phase
    for selected, warned in (({"F": 0, "M": 0}, True), ({"F": 2, "M": 0}, False)):
        copy = tmp_path / f"run-{selected['F']}"
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
        run = json.loads((copy / "run.json").read_text())
        (copy / "run.json").write_text(json.dumps({**run, "selected_epochs": selected}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="mdctr.train"):
            _hint_if_no_adapter_kept(copy)
        hints = [r.getMessage() for r in caplog.records if "adapters.mode: joint" in r.getMessage()]
        assert len(hints) == (1 if warned else 0), selected


def test_per_domain_selection_margin_keeps_the_start_unless_the_gain_beats_the_noise():
    """``adapters.min_gain_se``: a domain's later epoch counts only if its validation AUC beats
    its start by more than that many standard errors (Hanley-McNeil, from its validation
    positives and negatives, recorded per epoch)."""
    from mdctr.platform.metrics import auc_standard_error
    from mdctr.platform.trainer import domain_bests

    se_big, se_small = auc_standard_error(0.78, 30, 25), auc_standard_error(0.78, 3000, 2500)
    assert se_big > 0.05 > 0.01 > se_small
    history = [{"epoch": e, "valid_domain_auc": {"tiny": t, "big": b},
                "valid_domain_se": {"tiny": se_big, "big": se_small}}
               for e, (t, b) in enumerate([(0.78, 0.78), (0.80, 0.785), (0.81, 0.79), (0.79, 0.80)])]
    assert domain_bests(history) == {"tiny": (2, 0.81), "big": (3, 0.80)}
    # one standard error: the tiny domain's +0.03 is noise, the big one's +0.02 is not
    assert domain_bests(history, 1.0) == {"tiny": (0, 0.78), "big": (3, 0.80)}
    assert domain_bests(history, 3.0) == {"tiny": (0, 0.78), "big": (3, 0.80)}
    assert domain_bests(history, 5.0) == {"tiny": (0, 0.78), "big": (0, 0.78)}
    # no standard error recorded (no positives known): with a margin, the start stays
    bare = [{k: v for k, v in h.items() if k != "valid_domain_se"} for h in history]
    assert domain_bests(bare, 1.0) == {"tiny": (0, 0.78), "big": (0, 0.78)}
    assert AdapterConfig().min_gain_se == 1.0


@pytest.mark.parametrize("domain", [None, "F"])
def test_exported_torchscript_matches_the_trained_model(two_phase, data, tmp_path, domain):
    from mdctr.adapters.export import export
    from mdctr.domains.batching import DatasetReader

    out, _ = two_phase
    meta = export(out, tmp_path / "artifact", domain=domain)
    scripted = torch.jit.load(str(tmp_path / "artifact" / "model.pt"))  # no mdctr code needed to run it
    assert meta["keys"][-1] == "genres" and meta["domains"] == ["F", "M"]
    want = predict(out, data, domains=[domain] if domain else None)
    reader = DatasetReader(data)
    got = torch.cat([scripted(b.sparse.values(), b.sparse.lengths(), b.dense, b.domain)
                     for b in reader.batches("test", Selection(domains=(domain,)) if domain else None,
                                             batch_size=4096, shuffle=False)])
    assert got.shape == want["logits"].shape
    torch.testing.assert_close(got, want["logits"], rtol=0, atol=1e-5)


def test_exported_finalmlp_with_its_own_settings_matches_the_trained_model(data, tmp_path):
    """The export builds the tower from every ``model:`` setting (here FinalMLP's heads and
    gating), so a non-default tower loads its weights and serves the trained logits."""
    from mdctr.adapters.export import export
    from mdctr.domains.batching import DatasetReader
    from mdctr.platform.config import TrainConfig
    from mdctr.platform.run import train as train_plain

    cfg = TrainConfig.model_validate({
        "data": str(data), "model": {"tower": "finalmlp", "hidden": [64, 32], "fusion_heads": 2,
                                     "feature_gating": False},
        "train": {"epochs": 1, "batch_size": 1024, "seed": 0}})
    train_plain(cfg, tmp_path / "run")
    export(tmp_path / "run", tmp_path / "artifact", domain="F")
    scripted = torch.jit.load(str(tmp_path / "artifact" / "model.pt"))
    want = predict(tmp_path / "run", data, domains=["F"])
    got = torch.cat([scripted(b.sparse.values(), b.sparse.lengths(), b.dense, b.domain)
                     for b in DatasetReader(data).batches("test", Selection(domains=("F",)), batch_size=4096,
                                                         shuffle=False)])
    torch.testing.assert_close(got, want["logits"], rtol=0, atol=1e-5)


def test_scripted_id_map_equals_numpy_rule():
    import numpy as np

    from mdctr.adapters.export import table_rows
    from mdctr.domains.ids import table_rows as numpy_rows

    ids = np.concatenate([np.arange(60), np.random.default_rng(0).integers(0, 2**62, 5000), [2**63 - 1]])
    for n in (1, 7, 944, 1_000_003):
        assert (table_rows(torch.tensor(ids), n).numpy() == numpy_rows(ids, n)).all()


@pytest.mark.slow
def test_world_size_two_trains_when_a_rank_batch_lacks_domains(tmp_path):
    """21 occupation domains, 32 rows per rank and step: most batches lack some domains. Every
    rank must still use every adapter (zero gradients for absent ones), or DDP's static graph
    fails."""
    data = resolve_data("movielens-100k:occupation")
    cfg = MLoRATrainConfig.model_validate({
        "data": str(data), "model": {"hidden": [64, 32]},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0}, "adapters": {"mode": "joint", "alpha": 8},
    })
    two = train(cfg, tmp_path / "ws2", world_size=2)
    assert len(two["domains"]) == 21 and two["auc"] > 0.75

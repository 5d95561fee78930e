"""Mixed precision (``train.precision: bfloat16``): what runs in bfloat16, what stays float32,
and a real run on MovieLens-100K against the same run in float32."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from mdctr.platform import checkpoint as ckpt
from mdctr.platform import precision
from mdctr.platform.distill import StudentLogits
from mdctr.platform.run import evaluate, train
from mdctr.platform.towers import build_tower


def test_the_forward_runs_bfloat16_and_the_weights_and_their_gradients_stay_float32():
    torch.manual_seed(0)
    tower = build_tower("finalmlp", in_features=12, num_fields=3, embedding_dim=4, hidden=[16, 8],
                        dropout=0.2, fusion_heads=2)
    x, emb = torch.randn(32, 12), torch.randn(32, 3, 4)
    with precision.autocast(torch.device("cpu"), "bfloat16"):
        logits = tower(x, emb)
    assert logits.dtype == torch.bfloat16
    out = precision.float32(logits)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in tower.parameters())
    with precision.autocast(torch.device("cpu"), "float32"):
        assert tower(x, emb).dtype == torch.float32
    with pytest.raises(ValueError, match="train.precision"):
        precision.autocast(torch.device("cpu"), "float16")


def test_float32_widens_tensors_and_named_tuples_and_keeps_the_rest():
    served, aux = torch.ones(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)
    out = precision.float32(StudentLogits(served, aux))
    assert isinstance(out, StudentLogits) and out.served.dtype == out.aux.dtype == torch.float32
    ids = torch.arange(3)
    assert precision.float32((served, ids))[1] is ids
    same, wide = torch.ones(2), torch.ones(2, dtype=torch.float64)
    assert precision.float32(same) is same and precision.float32(wide) is wide


def test_an_emulated_bfloat16_is_warned_about(monkeypatch):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mdctr")
    logger.addHandler(handler)
    try:
        monkeypatch.setattr(precision, "bf16_native", lambda device: False)
        precision.warn_if_emulated(torch.device("cpu"), "bfloat16")
        precision.warn_if_emulated(torch.device("cpu"), "float32")
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and "slower than float32" in records[0].getMessage()


def test_a_bfloat16_run_matches_float32_within_noise_and_serves_float32(ml_gender, tmp_path, make_config):
    over = dict(model={"tower": "finalmlp", "hidden": [64, 32], "dropout": 0.1, "fusion_heads": 2,
                       "feature_gating": False},
                train={"epochs": 2})
    m32 = train(make_config(ml_gender, **over), tmp_path / "fp32")
    over["train"] = {"epochs": 2, "precision": "bfloat16"}
    m16 = train(make_config(ml_gender, **over), tmp_path / "bf16")
    # the same seed and rows; only the forward's precision differs
    assert m16["auc"] != m32["auc"]
    assert m16["auc"] == pytest.approx(m32["auc"], abs=0.005)
    assert m16["logloss"] == pytest.approx(m32["logloss"], abs=0.005)
    h32 = json.loads((tmp_path / "fp32" / "history.json").read_text())["history"]["all"]
    h16 = json.loads((tmp_path / "bf16" / "history.json").read_text())["history"]["all"]
    assert h16[0]["train_loss"] == pytest.approx(h32[0]["train_loss"], rel=0.01)
    # the served weights are float32, and evaluating them (float32) gives the run's test metrics
    state = ckpt.read_state(tmp_path / "bf16" / "checkpoints")
    weights = _load_state_dict_from_keys(checkpoint_id=str(ckpt.epoch_dir(tmp_path / "bf16" / "checkpoints",
                                                                           state.best_epoch)))["model"]
    assert weights and all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    again = evaluate(tmp_path / "bf16", split="test", out=tmp_path / "m.json")
    assert again["auc"] == pytest.approx(m16["auc"], abs=1e-6)


def test_the_config_takes_float32_by_default_and_refuses_other_precisions(ml_gender, make_config):
    assert make_config(ml_gender).train.precision == "float32"
    assert make_config(ml_gender, train={"precision": "bfloat16"}).train.precision == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        make_config(ml_gender, train={"precision": "float16"})

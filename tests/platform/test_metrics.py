import numpy as np
import pytest
import torch

from mdctr.platform.metrics import compute_metrics


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Reference AUC: probability a random positive outranks a random negative (ties 1/2)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def test_auc_logloss_and_wauc_match_references():
    rng = np.random.default_rng(0)
    n = 3000
    domain = rng.integers(0, 3, n)
    labels = (rng.random(n) < 0.4).astype(np.float32)
    logits = (labels * (0.5 + domain) + rng.normal(size=n)).astype(np.float32)
    m = compute_metrics(torch.tensor(logits), torch.tensor(labels), torch.tensor(domain), ["a", "b", "c"], split="test")
    assert m["split"] == "test" and m["n"] == n
    assert m["auc"] == pytest.approx(mann_whitney_auc(logits, labels), abs=1e-6)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert m["logloss"] == pytest.approx(ll, abs=1e-6)
    weighted = 0.0
    for j, name in enumerate("abc"):
        sel = domain == j
        ref = mann_whitney_auc(logits[sel], labels[sel])
        assert m["domains"][name]["n"] == int(sel.sum())
        assert m["domains"][name]["auc"] == pytest.approx(ref, abs=1e-6)
        weighted += sel.sum() * ref
    assert m["wauc"] == pytest.approx(weighted / n, abs=1e-6)
    # domains with a stronger signal score higher
    assert m["domains"]["a"]["auc"] < m["domains"]["b"]["auc"] < m["domains"]["c"]["auc"]


def test_single_class_domain_has_no_auc_and_is_left_out_of_wauc():
    logits = torch.tensor([2.0, -1.0, 0.5, 1.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    domain = torch.tensor([0, 0, 1, 1, 1])
    m = compute_metrics(logits, labels, domain, ["x", "y", "empty"], split="valid")
    assert m["domains"]["y"]["auc"] is None
    assert m["wauc"] == pytest.approx(1.0)
    assert "empty" not in m["domains"]

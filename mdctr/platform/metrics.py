"""Overall and per-domain AUC / log loss and WAUC, in ``metrics.json``'s schema (DESIGN §6).

AUC is torchmetrics' exact binary AUROC; log loss is torch's BCE on logits. WAUC is the
per-domain AUC weighted by each domain's example count (domains whose labels are all one
class have no AUC and are left out of the weighting).

>>> import torch
>>> m = compute_metrics(torch.tensor([2., -1., 0.5, -2.]), torch.tensor([1., 0., 0., 1.]),
...                     torch.tensor([0, 0, 1, 1]), ["F", "M"], split="test")
>>> m["auc"], m["domains"]["F"]["auc"], m["domains"]["M"]["auc"], m["wauc"]
(0.5, 1.0, 0.0, 0.5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from mdctr.core.io import format_table


def _auc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0 or labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(torch.sigmoid(logits.double()), labels.long()))


def _logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return float(F.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC measured on ``positives`` and
    ``negatives`` examples: how far apart two AUCs on rows this few may be by chance.

    >>> round(auc_standard_error(0.78, 500, 400), 4), round(auc_standard_error(0.78, 50, 40), 4)
    (0.0151, 0.0481)
    """
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) \
        / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor,
                    domain_names: list[str], *, split: str) -> dict:
    """Metrics of one split: ``{"split", "n", "auc", "logloss", "wauc", "domains": {...}}``."""
    logits, labels, domain = logits.float().cpu(), labels.float().cpu(), domain.long().cpu()
    domains: dict[str, dict] = {}
    weighted, weight = 0.0, 0
    for j, name in enumerate(domain_names):
        sel = domain == j
        n = int(sel.sum())
        if n == 0:
            continue
        auc = _auc(logits[sel], labels[sel])
        domains[name] = {"n": n, "positives": int(labels[sel].sum()), "auc": _r(auc),
                         "logloss": _r(_logloss(logits[sel], labels[sel]))}
        if not math.isnan(auc):
            weighted += n * auc
            weight += n
    return {
        "split": split,
        "n": int(labels.numel()),
        "auc": _r(_auc(logits, labels)),
        "logloss": _r(_logloss(logits, labels)),
        "wauc": _r(weighted / weight) if weight else None,
        "domains": domains,
    }


def metrics_table(m: dict) -> str:
    rows = [{"domain": "(all)", "n": m["n"], "auc": m["auc"], "logloss": m["logloss"]}]
    rows += [{"domain": d, **v} for d, v in m["domains"].items()]
    return format_table(rows) + f"\nWAUC {m['wauc']}"


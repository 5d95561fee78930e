"""Towers: what sits on the pooled embeddings and dense features and returns one logit.

Shapes (B = batch, F = embedding fields, D = embedding dim, N = F * D + dense features)::

    tower(x: (B, N), emb: (B, F, D)) -> logits (B,)

Every tower ends in an :class:`MLP` whose hidden ``nn.Linear`` layers are
``tower.mlp.layers``; per-domain adapters (``mdctr.adapters``) attach there without the
tower knowing. Towers are chosen by name from :data:`TOWERS`.

>>> import torch
>>> t = build_tower("dcnv2", in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 4])
>>> t(torch.randn(5, 12), torch.randn(5, 3, 4)).shape
torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """``hidden`` Linear + activation (+ dropout) layers, then a Linear head to one logit."""

    def __init__(self, in_features: int, hidden: list[int], *, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        dims = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.dropout(self.act(layer(x)))
        return self.head(x).squeeze(-1)


class MLPTower(nn.Module):
    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float = 0.0, **_: int):
        super().__init__()
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class DCNv2Tower(nn.Module):
    """DCN-v2 (stacked): a low-rank cross network, then the deep MLP (Wang et al., 2021)."""

    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float = 0.0, cross_layers: int = 3, cross_rank: int = 32):
        super().__init__()
        self.cross = LowRankCrossNet(in_features, num_layers=cross_layers, low_rank=min(cross_rank, in_features))
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cross(x))


class DeepFMTower(nn.Module):
    """DeepFM: first-order linear term + pairwise FM over field embeddings + deep MLP."""

    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float = 0.0, **_: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
        return self.linear(x).squeeze(-1) + fm + self.mlp(x)


TOWERS: dict[str, type[nn.Module]] = {"mlp": MLPTower, "dcnv2": DCNv2Tower, "deepfm": DeepFMTower}


def build_tower(name: str, **kwargs) -> nn.Module:
    if name not in TOWERS:
        raise ValueError(f"model.tower must be one of {', '.join(TOWERS)}, got '{name}'")
    return TOWERS[name](**kwargs)

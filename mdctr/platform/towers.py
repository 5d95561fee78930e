"""Towers: what sits on the pooled embeddings and dense features and returns one logit.

Shapes (B = batch, F = embedding fields, D = embedding dim, N = F * D + dense features,
H = the tower's ``hidden_width``)::

    tower(x: (B, N), emb: (B, F, D)) -> logits (B,)
    tower(x, emb, return_hidden=True) -> (logits (B,), hidden (B, H))

What a tower must offer is written down in :class:`Tower`. Towers are chosen by name from
:data:`TOWERS`.

>>> import torch
>>> t = build_tower("dcnv2", in_features=12, num_fields=3, embedding_dim=4, hidden=[8, 4])
>>> t(torch.randn(5, 12), torch.randn(5, 3, 4)).shape
torch.Size([5])
>>> logits, hidden = t(torch.randn(5, 12), torch.randn(5, 3, 4), return_hidden=True)
>>> hidden.shape, isinstance(t, Tower)
(torch.Size([5, 4]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet

from mdctr.platform.dropout import Dropout

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class HiddenStack(nn.Module):
    """``hidden`` Linear + activation (+ dropout) layers and a Linear ``head`` from the last
    hidden layer to one logit. ``dropout``: one rate after every hidden layer, or a list with
    one rate per layer. ``last_hidden(x)`` -> (B, H).

    Not an :class:`MLP`: adapters (which attach to every ``MLP`` of a model) leave it alone.
    FinalMLP's second stream is one."""

    def __init__(self, in_features: int, hidden: list[int], *, activation: str = "relu",
                 dropout: float | list[float] = 0.0):
        super().__init__()
        dims = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = ACTIVATIONS[activation]()
        rates = list(dropout) if isinstance(dropout, (list, tuple)) else [dropout] * len(hidden)
        if len(rates) != len(hidden):
            raise ValueError(f"dropout lists {len(rates)} rates for {len(hidden)} hidden layers")
        self.dropouts = nn.ModuleList(Dropout(r) if r > 0 else nn.Identity() for r in rates)
        self.head = nn.Linear(dims[-1], 1)

    def last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        for layer, dropout in zip(self.layers, self.dropouts):
            x = dropout(self.act(layer(x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_hidden(x)


class MLP(HiddenStack):
    """``hidden`` Linear + activation (+ dropout) layers, then a Linear head to one logit.
    ``dropout``: one rate after every hidden layer, or a list with one rate per layer."""

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        x = self.last_hidden(x)
        logits = self.head(x).squeeze(-1)
        if not torch.jit.is_scripting():  # TorchScript exports serve logits only
            if return_hidden:
                return logits, x
        return logits


@runtime_checkable
class Tower(Protocol):
    """What every tower offers the rest of mdctr.

    - ``mlp``: an :class:`MLP` whose hidden ``nn.Linear`` layers (``mlp.layers``) are where
      per-domain adapters attach (``mdctr.adapters`` swaps them for adapted layers without
      the tower knowing) and whose ``mlp.head`` maps the last hidden layer to the logit
      (FinalMLP: to the logit's first-order term in that stream).
    - ``hidden_width``: the width H of the representation right below the logit.
    - ``forward(x, emb, return_hidden=False)``: logits (B,), or with ``return_hidden`` also
      that representation (B, H), on which a distillation student puts its auxiliary head:
      the MLP's last hidden layer (FinalMLP: both streams' side by side). Callers call the
      tower module (``tower(...)``), never a method of it, so forward hooks on the tower
      (the adapters' own embedding rows) always run. A scripted (TorchScript) tower returns
      logits only.
    """

    mlp: MLP
    hidden_width: int

    def __call__(self, x: torch.Tensor, emb: torch.Tensor, return_hidden: bool = False): ...


class MLPTower(nn.Module):
    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float | list[float] = 0.0, **_: int):
        super().__init__()
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)
        self.hidden_width = hidden[-1]

    def forward(self, x: torch.Tensor, emb: torch.Tensor, return_hidden: bool = False):
        return self.mlp(x, return_hidden)


class DCNv2Tower(nn.Module):
    """DCN-v2 (stacked): a low-rank cross network, then the deep MLP (Wang et al., 2021)."""

    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float | list[float] = 0.0, cross_layers: int = 3,
                 cross_rank: int = 32, **_: object):
        super().__init__()
        self.cross = LowRankCrossNet(in_features, num_layers=cross_layers, low_rank=min(cross_rank, in_features))
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)
        self.hidden_width = hidden[-1]

    def forward(self, x: torch.Tensor, emb: torch.Tensor, return_hidden: bool = False):
        return self.mlp(self.cross(x), return_hidden)


class DeepFMTower(nn.Module):
    """DeepFM: first-order linear term + pairwise FM over field embeddings + deep MLP."""

    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float | list[float] = 0.0, **_: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)
        self.hidden_width = hidden[-1]

    def forward(self, x: torch.Tensor, emb: torch.Tensor, return_hidden: bool = False):
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
        if not torch.jit.is_scripting():  # TorchScript exports serve logits only
            if return_hidden:
                deep, hidden = self.mlp(x, True)
                return self.linear(x).squeeze(-1) + fm + deep, hidden
        return self.linear(x).squeeze(-1) + fm + self.mlp(x)


class FeatureGate(nn.Module):
    """FinalMLP's stream-specific feature selection, the whole input as context:
    ``x * 2 * sigmoid(proj(x))`` elementwise, each gate in (0, 2)."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 * torch.sigmoid(self.proj(x)))


class FinalMLPTower(nn.Module):
    """FinalMLP (Mao et al., AAAI 2023): two MLP streams over the same input, each behind its
    own feature gate (``feature_gating``), fused by a multi-head bilinear layer.

    With h1 = ``mlp``'s and h2 = ``mlp2``'s last hidden layer (width H), each split into
    ``fusion_heads`` chunks of H / heads::

        logit = w1 . h1 + b1 + w2 . h2 + b2 + sum_k h1_k^T W_k h2_k

    ``w1, b1`` are ``mlp.head``, ``w2, b2`` ``mlp2.head`` (the two biases act as one), W_k
    ``bilinear[k]`` (as FuxiCTR's ``InteractionAggregation``). Stream 1 (``mlp``) is the
    tower's :class:`MLP`: adapters attach to its layers. Stream 2 is a :class:`HiddenStack`,
    which adapters leave alone. ``return_hidden`` returns ``[h1, h2]`` (B, 2H): the logit is
    a function of both, so a distillation student's auxiliary head sees both.
    """

    def __init__(self, in_features: int, num_fields: int, embedding_dim: int, hidden: list[int], *,
                 activation: str = "relu", dropout: float | list[float] = 0.0, fusion_heads: int = 1,
                 feature_gating: bool = True, **_: object):
        super().__init__()
        width = hidden[-1]
        if fusion_heads < 1 or width % fusion_heads:
            raise ValueError(f"model.fusion_heads ({fusion_heads}) must divide the last hidden width ({width})")
        self.mlp = MLP(in_features, hidden, activation=activation, dropout=dropout)
        self.mlp2 = HiddenStack(in_features, hidden, activation=activation, dropout=dropout)
        self.gate1: nn.Module = FeatureGate(in_features) if feature_gating else nn.Identity()
        self.gate2: nn.Module = FeatureGate(in_features) if feature_gating else nn.Identity()
        self.heads = fusion_heads
        self.hidden_width = 2 * width
        head_dim = width // fusion_heads
        self.bilinear = nn.Parameter(torch.empty(fusion_heads, head_dim, head_dim))
        # FuxiCTR's xavier_normal_ on its (heads * d * d, 1) weight
        nn.init.normal_(self.bilinear, std=math.sqrt(2.0 / (1 + fusion_heads * head_dim * head_dim)))

    def fuse(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """The multi-head bilinear fusion of the two streams' last hidden layers -> (B,)."""
        b = h1.shape[0]
        k1 = h1.reshape(b, self.heads, -1).transpose(0, 1)  # (heads, B, H / heads)
        k2 = h2.reshape(b, self.heads, -1)
        # one GEMM per head (batched), then a row-wise dot product: the einsum
        # "bhi,hij,bhj->b" as torch would run it (a batch of B tiny GEMMs last) costs 1.7x
        pairwise = (torch.bmm(k1, self.bilinear).transpose(0, 1) * k2).sum(dim=(1, 2))
        return self.mlp.head(h1).squeeze(-1) + self.mlp2.head(h2).squeeze(-1) + pairwise

    def forward(self, x: torch.Tensor, emb: torch.Tensor, return_hidden: bool = False):
        h1 = self.mlp.last_hidden(self.gate1(x))
        h2 = self.mlp2.last_hidden(self.gate2(x))
        logits = self.fuse(h1, h2)
        if not torch.jit.is_scripting():  # TorchScript exports serve logits only
            if return_hidden:
                return logits, torch.cat([h1, h2], dim=-1)
        return logits


TOWERS: dict[str, type[nn.Module]] = {"mlp": MLPTower, "dcnv2": DCNv2Tower, "deepfm": DeepFMTower,
                                       "finalmlp": FinalMLPTower}
"""Every entry builds a :class:`Tower`."""


def build_tower(name: str, **kwargs) -> nn.Module:
    if name not in TOWERS:
        raise ValueError(f"model.tower must be one of {', '.join(TOWERS)}, got '{name}'")
    return TOWERS[name](**kwargs)

"""Embedding-snapshot history as an extra tower input (E-CDCTR's TPM features).

For each example and each entity (user, item) the model receives the entity's vectors from
the last K snapshots of an :class:`~mdctr.platform.stores.embeddings.EmbeddingStore`.
:class:`SnapshotJoin` looks them up by raw id as batches stream and appends them to the
batch's dense tensor; :class:`HistoryCTRModel` splits them off again, replaces missing
vectors (ids a snapshot never saw, or fewer than K snapshots) by a learned default, runs a
small self-attention over the K vectors, mean-pools them and feeds the result to the tower
next to the pooled embeddings.

Dense layout after the join (B rows, E entities, K snapshots, D snapshot dim)::

    [ data dense (B, dense_dim) | for each entity: vectors (B, K*D), found (B, K) ]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mdctr.domains.batching import Batch
from mdctr.platform.config import ModelConfig, TrainConfig
from mdctr.platform.model import CTRModel, FeatureLayout
from mdctr.platform.stores.embeddings import EmbeddingStore


@dataclass(frozen=True)
class HistorySpec:
    """What the join appends: ``entities`` maps entity -> raw-id field; ``k`` snapshot slots
    of ``dim`` each."""

    entities: dict[str, str]
    k: int
    dim: int
    heads: int = 2

    @property
    def width(self) -> int:
        return len(self.entities) * self.k * (self.dim + 1)

    def to_dict(self) -> dict:
        return {"entities": dict(self.entities), "k": self.k, "dim": self.dim, "heads": self.heads}

    @classmethod
    def from_dict(cls, raw: dict) -> "HistorySpec":
        return cls(dict(raw["entities"]), int(raw["k"]), int(raw["dim"]), int(raw.get("heads", 2)))


class SnapshotJoin:
    """Batch transform: append the last-K snapshot vectors of each entity to ``batch.dense``.

    ``months`` (oldest first, at most ``spec.k``) are the snapshots to use; missing slots
    (fewer months than K) are left unfound. ``dense_dim`` data dense columns are kept.
    """

    def __init__(self, store: EmbeddingStore, months: list[str], spec: HistorySpec, dense_dim: int):
        if len(months) > spec.k:
            raise ValueError(f"{len(months)} snapshot months for {spec.k} slots")
        self.store, self.months, self.spec, self.dense_dim = store, list(months), spec, dense_dim

    def __call__(self, batch: Batch) -> Batch:
        b, k, d = len(batch), self.spec.k, self.spec.dim
        parts = [batch.dense[:, : self.dense_dim].numpy()]
        offset = k - len(self.months)  # the newest snapshot always sits in the last slot
        for entity, field in self.spec.entities.items():
            ids = batch.extra[field].numpy()
            vectors = np.zeros((b, k, d), dtype=np.float32)
            found = np.zeros((b, k), dtype=np.float32)
            for j, month in enumerate(self.months):
                vectors[:, offset + j], hit = self.store.lookup(month, entity, ids)
                found[:, offset + j] = hit
            parts += [vectors.reshape(b, k * d), found]
        dense = torch.from_numpy(np.concatenate(parts, axis=1))
        return dataclasses.replace(batch, dense=dense)


class HistoryPooling(nn.Module):
    """(B, K, D) vectors + (B, K) found mask -> (B, D): learned default for missing vectors,
    a slot (recency) embedding, one self-attention layer with a residual, mean over K."""

    def __init__(self, k: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"history dim {dim} is not divisible by {heads} attention heads")
        self.default = nn.Parameter(torch.zeros(dim))
        self.slot = nn.Parameter(torch.zeros(k, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, vectors: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        x = torch.where(found.unsqueeze(-1) > 0.5, vectors, self.default) + self.slot
        y, _ = self.attn(x, x, x, need_weights=False)
        return (x + y).mean(dim=1)


class HistoryCTRModel(CTRModel):
    """:class:`CTRModel` whose tower also takes the pooled snapshot history of each entity.

    ``layout`` is the data's layout; the tower's dense width grows by ``E * D``.
    """

    def __init__(self, layout: FeatureLayout, cfg: ModelConfig, history: HistorySpec,
                 device: torch.device | str = "meta", seed: int = 0):
        wide = dataclasses.replace(layout, dense_dim=layout.dense_dim + len(history.entities) * history.dim)
        super().__init__(wide, cfg, device=device, seed=seed)
        self.history = history
        self.data_dense = layout.dense_dim
        self.pool = nn.ModuleDict({e: HistoryPooling(history.k, history.dim, history.heads) for e in history.entities})

    def forward(self, sparse, dense: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        emb = self.pooled(sparse, domain)
        k, d = self.history.k, self.history.dim
        parts = [dense[:, : self.data_dense]]
        o = self.data_dense
        for entity in self.history.entities:
            vectors = dense[:, o: o + k * d].view(-1, k, d)
            found = dense[:, o + k * d: o + k * d + k]
            parts.append(self.pool[entity](vectors, found))
            o += k * (d + 1)
        return self.head(emb, torch.cat(parts, dim=1))


@dataclass(frozen=True)
class HistoryModelBuilder:
    """Model builder of a job: :class:`HistoryCTRModel` with ``history``."""

    history: HistorySpec

    def __call__(self, cfg: TrainConfig, layout: FeatureLayout) -> HistoryCTRModel:
        return HistoryCTRModel(layout, cfg.model, self.history, seed=cfg.train.seed)


@dataclass(frozen=True)
class SnapshotInput:
    """Transform builder of a job: :class:`SnapshotJoin` over the snapshot store at ``store``
    for ``months``; the reader carries the entities' raw ids."""

    store: Path
    months: tuple[str, ...]
    history: HistorySpec

    @property
    def raw_fields(self) -> tuple[str, ...]:
        return tuple(self.history.entities.values())

    def __call__(self, layout: FeatureLayout) -> SnapshotJoin:
        return SnapshotJoin(EmbeddingStore(self.store), list(self.months), self.history, layout.dense_dim)

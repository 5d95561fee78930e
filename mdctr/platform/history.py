"""Embedding-snapshot history as an extra tower input (E-CDCTR's TPM features).

For each example and each entity (user, item) the model receives the entity's vectors from
the last K snapshots of an :class:`~mdctr.platform.stores.embeddings.EmbeddingStore`.
:class:`SnapshotJoin` looks them up by raw id as batches stream and puts them into the
batch's named model inputs; :class:`HistoryCTRModel` replaces missing vectors (ids a
snapshot never saw, or fewer than K snapshots) by a learned default, runs a small
self-attention over the K vectors, mean-pools them and feeds the result to the tower next
to the pooled embeddings and the data's dense features.

Named inputs after the join (B rows, K snapshots, D snapshot dim), for each entity E::

    batch.inputs["history.E.vectors"]   float32 (B, K, D)
    batch.inputs["history.E.found"]     float32 (B, K)    1 where the snapshot had the id
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

    def to_dict(self) -> dict:
        return {"entities": dict(self.entities), "k": self.k, "dim": self.dim, "heads": self.heads}

    @classmethod
    def from_dict(cls, raw: dict) -> "HistorySpec":
        return cls(dict(raw["entities"]), int(raw["k"]), int(raw["dim"]), int(raw.get("heads", 2)))


def vectors_key(entity: str) -> str:
    return f"history.{entity}.vectors"


def found_key(entity: str) -> str:
    return f"history.{entity}.found"


class SnapshotJoin:
    """Batch transform: the last-K snapshot vectors of each entity, as named model inputs.

    ``months`` (oldest first, at most ``spec.k``) are the snapshots to use; missing slots
    (fewer months than K) are left unfound.
    """

    def __init__(self, store: EmbeddingStore, months: list[str], spec: HistorySpec):
        if len(months) > spec.k:
            raise ValueError(f"{len(months)} snapshot months for {spec.k} slots")
        self.store, self.months, self.spec = store, list(months), spec

    def __call__(self, batch: Batch) -> Batch:
        b, k, d = len(batch), self.spec.k, self.spec.dim
        inputs = dict(batch.inputs)
        offset = k - len(self.months)  # the newest snapshot always sits in the last slot
        for entity, field in self.spec.entities.items():
            ids = batch.extra[field].numpy()
            vectors = np.zeros((b, k, d), dtype=np.float32)
            found = np.zeros((b, k), dtype=np.float32)
            for j, month in enumerate(self.months):
                vectors[:, offset + j], hit = self.store.lookup(month, entity, ids)
                found[:, offset + j] = hit
            inputs[vectors_key(entity)] = torch.from_numpy(vectors)
            inputs[found_key(entity)] = torch.from_numpy(found)
        return dataclasses.replace(batch, inputs=inputs)


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

    def forward(self, sparse, dense: torch.Tensor, domain: torch.Tensor,
                inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if inputs is None or vectors_key(next(iter(self.history.entities))) not in inputs:
            raise ValueError("HistoryCTRModel needs the batch's snapshot history (a SnapshotJoin transform)")
        emb = self.pooled(sparse, domain)
        parts = [dense[:, : self.data_dense]]
        for entity in self.history.entities:
            parts.append(self.pool[entity](inputs[vectors_key(entity)], inputs[found_key(entity)]))
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
        return SnapshotJoin(EmbeddingStore(self.store), list(self.months), self.history)

"""The CTR backbone: features -> EmbeddingBagCollection -> concat dense -> tower -> logit.

``forward`` returns logits; losses live in the trainer. The embedding tables are built on
the meta device and materialised by ``DistributedModelParallel`` (:mod:`.distributed`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from mdctr.domains.batching import DatasetReader
from mdctr.domains.spec import DatasetSpec, FieldKind
from mdctr.platform.config import Baseline, ModelConfig
from mdctr.platform.towers import build_tower

DOMAIN_KEY = "__domain__"


@dataclass(frozen=True)
class FeatureLayout:
    """Which tables the model has and how big they are."""

    keys: list[str]  # KJT keys in order (the reader's keys, then the domain key if used)
    rows: dict[str, int]  # key -> table rows
    pooling: dict[str, PoolingType]
    dense_dim: int
    domain_names: list[str]

    @property
    def reader_table_sizes(self) -> dict[str, int]:
        return {k: v for k, v in self.rows.items() if k != DOMAIN_KEY}

    def reader(self, directory: str | Path, **kwargs) -> DatasetReader:
        """A reader of ``directory`` whose batches carry exactly this layout's fields."""
        return DatasetReader(directory, table_sizes=self.reader_table_sizes,
                             fields=[k for k in self.keys if k != DOMAIN_KEY], **kwargs)


def feature_layout(spec: DatasetSpec, cfg: ModelConfig, baseline: Baseline) -> FeatureLayout:
    keys, rows, pooling = [], {}, {}
    unknown = set(cfg.table_rows) - {x.name for x in spec.fields}
    if unknown:
        raise ValueError(f"model.table_rows names fields the dataset lacks: {sorted(unknown)}")
    embeddable = spec.sparse_fields + spec.multi_hot_fields
    missing = [f for f in cfg.fields or [] if f not in {x.name for x in embeddable}]
    if missing:
        raise ValueError(f"model.fields names '{missing[0]}', not a sparse or multi-hot field of the data")
    for f in embeddable:
        if cfg.fields is not None and f.name not in cfg.fields:
            continue
        keys.append(f.name)
        rows[f.name] = cfg.table_rows.get(f.name, min(int(f.cardinality or 1), cfg.max_table_rows))
        pooling[f.name] = PoolingType.MEAN if f.kind is FieldKind.multi_hot else PoolingType.SUM
    if baseline is Baseline.shared_domain_feature:
        keys.append(DOMAIN_KEY)
        rows[DOMAIN_KEY] = len(spec.domains)
        pooling[DOMAIN_KEY] = PoolingType.SUM
    dense_dim = len(spec.dense_fields) if cfg.use_dense else 0
    return FeatureLayout(keys, rows, pooling, dense_dim, spec.domain_names)


def tower_options(cfg: ModelConfig, *, dropout: bool = True) -> dict:
    """The ``model:`` settings a tower is built with (``dropout=False``: none, for serving)."""
    return dict(hidden=cfg.hidden, activation=cfg.activation, dropout=cfg.dropout if dropout else 0.0,
                cross_layers=cfg.cross_layers, cross_rank=cfg.cross_rank, fusion_heads=cfg.fusion_heads,
                feature_gating=cfg.feature_gating)


class SeededUniformInit:
    """Table init that does not depend on where the table lands: U(-1/sqrt(rows), 1/sqrt(rows))
    drawn from a generator seeded by (seed, table name), each shard taking its own slice. So
    world size 1 and 2 (and any sharding plan) start from the same weights."""

    def __init__(self, seed: int, name: str, rows: int, dim: int):
        self.seed = zlib.crc32(f"{seed}:{name}".encode())
        self.rows, self.dim = rows, dim

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        bound = 1.0 / math.sqrt(self.rows)
        full = torch.empty(self.rows, self.dim).uniform_(-bound, bound,
                                                         generator=torch.Generator().manual_seed(self.seed))
        with torch.no_grad():
            if hasattr(weight, "local_shards"):  # ShardedTensor: fill this rank's shards
                for shard in weight.local_shards():
                    (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(full[r0:r0 + nr, c0:c0 + nc])
            elif tuple(weight.shape) == (self.rows, self.dim):
                weight.copy_(full.to(weight.device, weight.dtype))
            elif weight.numel():  # a shard without offsets: seeded, but not placement-independent
                local = torch.empty(tuple(weight.shape)).uniform_(-bound, bound,
                                                                  generator=torch.Generator().manual_seed(self.seed))
                weight.copy_(local.to(weight.device, weight.dtype))
        return weight


def table_entry(key: str) -> str:
    """The state-dict key of a field's embedding table in :class:`CTRModel`."""
    return f"ebc.embedding_bags.t_{key}.weight"


def table_configs(layout: FeatureLayout, embedding_dim: int, seed: int = 0) -> list[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name=f"t_{k}", embedding_dim=embedding_dim, num_embeddings=layout.rows[k],
                           feature_names=[k], pooling=layout.pooling[k],
                           init_fn=SeededUniformInit(seed, f"t_{k}", layout.rows[k], embedding_dim))
        for k in layout.keys
    ]


class CTRModel(nn.Module):
    """Pooled embeddings of every field, concatenated with the dense features, into a tower.

    Args:
        layout: tables and dense width (:func:`feature_layout`).
        cfg: model section of the config.
        device: where the tables live before sharding (``meta``: DMP materialises them).
        seed: seeds the tables' initialisation (:class:`SeededUniformInit`).

    ``forward(sparse, dense, domain, inputs=None)``: ``sparse`` a KeyedJaggedTensor with the
    reader's keys (stride B), ``dense`` float (B, dense_dim), ``domain`` int64 (B,), ``inputs``
    the batch's named model inputs (``Batch.inputs``; models that need none ignore them) ->
    logits (B,).
    """

    def __init__(self, layout: FeatureLayout, cfg: ModelConfig, device: torch.device | str = "meta", seed: int = 0):
        super().__init__()
        self.layout = layout
        self.use_domain_feature = DOMAIN_KEY in layout.keys
        self.num_fields = len(layout.keys)
        self.embedding_dim = cfg.embedding_dim
        #: look the tables up without autograd: they get no gradient and never move, and the
        #: lookup's backward is skipped (fine-tuning only the dense side)
        self.embeddings_frozen = False
        #: set by the trainer (``train.embedding_l2``): in training, ``pooled`` leaves
        #: ``embedding_l2 * mean_b ||pooled_b||^2`` in ``penalty`` for the loss to add
        self.embedding_l2 = 0.0
        self.penalty: torch.Tensor | None = None
        self.ebc = EmbeddingBagCollection(tables=table_configs(layout, cfg.embedding_dim, seed),
                                          device=torch.device(device))
        in_features = self.num_fields * cfg.embedding_dim + layout.dense_dim
        self.tower = build_tower(cfg.tower, in_features=in_features, num_fields=self.num_fields,
                                 embedding_dim=cfg.embedding_dim, **tower_options(cfg))

    def pooled(self, sparse: KeyedJaggedTensor, domain: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings, (B, F * D), fields in ``layout.keys`` order."""
        if self.use_domain_feature:
            dom = KeyedJaggedTensor(keys=[DOMAIN_KEY], values=domain,
                                    lengths=torch.ones_like(domain), stride=domain.shape[0])
            sparse = KeyedJaggedTensor.concat([sparse, dom])
        if self.embeddings_frozen:
            with torch.no_grad():
                return self.ebc(sparse).values()
        pooled = self.ebc(sparse).values()
        if self.training and self.embedding_l2:
            self.penalty = self.embedding_l2 * pooled.pow(2).sum(dim=1).mean()
        return pooled

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor, domain: torch.Tensor,
                inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        emb = self.pooled(sparse, domain)
        return self.head(emb, dense)

    def head(self, emb: torch.Tensor, dense: torch.Tensor, return_hidden: bool = False):
        """The dense side: tower over [pooled embeddings, dense features] -> logits (B,)
        (and the tower's last hidden layer with ``return_hidden``)."""
        x = torch.cat([emb, dense], dim=1) if self.layout.dense_dim else emb
        return self.tower(x, emb.view(emb.shape[0], self.num_fields, self.embedding_dim), return_hidden=return_hidden)

"""Seeded synthetic multi-domain CTR data with a known ground-truth model.

For a row (user ``u``, item ``i``, domain ``d``, time ``t`` in [0, 1]) the true logit is::

    base + b_d                                     domain intercept
    + shared  * <U_u(t), V_i> / sqrt(k)            interest shared by every domain
    + domain  * <U_u(t) P_d, V_i> / sqrt(k)        domain-specific interest (P_d random k x k)
    + category * C[d, cat(i)]                      domain-specific category taste
    + tags     * mean_j T[tag_j(i)]                 shared multi-hot effect
    + extra    * sum_f E_f[id_f]                    context-id effects
    + dense    * (w + w_d) . x / sqrt(n_dense)      dense features

with ``U_u(t) = cos(a t) U_u + sin(a t) U'_u`` and ``a = drift * pi / 2`` (interests drift
over the time span). Labels are Bernoulli(sigmoid(logit)). Ids follow a power law; a share
``user_overlap`` of users (``item_overlap`` of items) is active in every domain, the rest in
one domain each. ``dataset.yaml`` records each domain's Bayes AUC: the AUC of the true
probabilities against the drawn labels, the ceiling any model can reach.

Rows are generated and written ``chunk_rows`` at a time, so memory does not grow with
``rows``; chunk ``c`` draws from its own ``default_rng([seed, c])`` and the output does not
depend on anything but the config.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from mdctr.core.config import StrictModel, load_model
from mdctr.domains.jagged import gather, offsets_from_lengths
from mdctr.domains.spec import (
    DatasetSpec, DomainSpec, FieldKind, FieldSpec, RandomSplit, Role, SourceSpec, SplitSpec,
    TemporalSplit,
)
from mdctr.core.io import atomic_dir
from mdctr.core.timeutil import DAY
from mdctr.domains.writer import DatasetWriter, build_table, list_array

AUC_BINS = 1 << 14


class SynthDomain(StrictModel):
    name: str = Field(min_length=1)
    role: Role = Role.organic
    share: float = Field(default=1.0, gt=0)


class ExtraField(StrictModel):
    name: str
    cardinality: int = Field(ge=1)


class Signal(StrictModel):
    base: float = -0.8
    domain_bias: float = Field(default=0.3, ge=0)
    shared: float = Field(default=1.2, ge=0)
    domain: float = Field(default=0.8, ge=0)
    category: float = Field(default=0.4, ge=0)
    tags: float = Field(default=0.3, ge=0)
    extra: float = Field(default=0.2, ge=0)
    dense: float = Field(default=0.3, ge=0)


class TimeSpan(StrictModel):
    start: date = date(2024, 1, 1)
    days: int = Field(default=180, ge=1)
    drift: float = Field(default=0.3, ge=0, le=2)


class SyntheticConfig(StrictModel):
    """``configs/synthetic.yaml``; every key is optional."""

    name: str = "synthetic"
    seed: int = Field(default=0, ge=0)
    rows: int = Field(default=200_000, ge=1)
    chunk_rows: int = Field(default=1_000_000, ge=1_000)
    users: int = Field(default=20_000, ge=1)
    items: int = Field(default=5_000, ge=1)
    categories: int = Field(default=50, ge=1)
    tags: int = Field(default=200, ge=0)
    max_tags_per_item: int = Field(default=4, ge=1)
    dense_fields: int = Field(default=2, ge=0)
    extra_fields: list[ExtraField] = []
    dim: int = Field(default=8, ge=1)
    zipf: float = Field(default=1.05, ge=0)
    user_overlap: float = Field(default=0.7, ge=0, le=1)
    item_overlap: float = Field(default=0.6, ge=0, le=1)
    domains: list[SynthDomain] = Field(
        default_factory=lambda: [SynthDomain(name=f"d{i}") for i in range(6)]
        + [SynthDomain(name="ad0", role=Role.ad, share=0.5), SynthDomain(name="ad1", role=Role.ad, share=0.5)]
    )
    signal: Signal = Signal()
    time: TimeSpan = TimeSpan()
    split: RandomSplit = RandomSplit()

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        names = [d.name for d in self.domains]
        if not names:
            raise ValueError("domains: at least one domain is needed")
        if len(set(names)) != len(names):
            raise ValueError("domains: names must be unique")
        reserved = {"user_id", "item_id", "category", "tags"} | {f"dense_{i}" for i in range(self.dense_fields)}
        for f in self.extra_fields:
            if f.name in reserved:
                raise ValueError(f"extra_fields: '{f.name}' clashes with a built-in field")
        return self


def load_synthetic_config(path: str | Path) -> SyntheticConfig:
    return load_model(path, SyntheticConfig)


class _Popularity:
    """Power-law draws over a subset of ids, most popular first."""

    def __init__(self, members: np.ndarray, zipf: float):
        weights = (np.arange(1, len(members) + 1, dtype=np.float64)) ** (-zipf)
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]
        self.members = members

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pos = np.searchsorted(self.cdf, rng.random(n), side="right")
        return self.members[np.minimum(pos, len(self.members) - 1)]


class GroundTruth:
    """The generating model's parameters, drawn once from ``seed``."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 1 << 30])
        k, n_dom = cfg.dim, len(cfg.domains)
        self.U = rng.standard_normal((cfg.users, k), dtype=np.float32)
        self.U2 = rng.standard_normal((cfg.users, k), dtype=np.float32)
        self.V = rng.standard_normal((cfg.items, k), dtype=np.float32)
        q = [np.linalg.qr(rng.standard_normal((k, k)))[0] for _ in range(n_dom)]
        self.P = np.stack(q).astype(np.float32)
        self.b_dom = (rng.standard_normal(n_dom) * cfg.signal.domain_bias).astype(np.float32)
        self.item_cat = rng.integers(0, cfg.categories, cfg.items)
        self.C = rng.standard_normal((n_dom, cfg.categories)).astype(np.float32)
        if cfg.tags:
            n_tags = rng.integers(1, cfg.max_tags_per_item + 1, cfg.items)
            self.tag_offsets = offsets_from_lengths(n_tags)
            self.tag_values = rng.integers(0, cfg.tags, int(self.tag_offsets[-1]))
            self.T = rng.standard_normal(cfg.tags).astype(np.float32)
        self.E = [rng.standard_normal(f.cardinality).astype(np.float32) for f in cfg.extra_fields]
        self.w = rng.standard_normal(cfg.dense_fields).astype(np.float32)
        self.w_dom = (rng.standard_normal((n_dom, cfg.dense_fields)) * 0.7).astype(np.float32)
        # raw ids: popularity rank -> id, so popular ids are spread over the id space
        self.user_ids = rng.permutation(cfg.users) + 1
        self.item_ids = rng.permutation(cfg.items) + 1
        self.extra_ids = [rng.permutation(f.cardinality) + 1 for f in cfg.extra_fields]
        self.users_of = self._memberships(rng, cfg.users, cfg.user_overlap, n_dom)
        self.items_of = self._memberships(rng, cfg.items, cfg.item_overlap, n_dom)
        self.extra_pop = [_Popularity(np.arange(f.cardinality), cfg.zipf) for f in cfg.extra_fields]
        shares = np.array([d.share for d in cfg.domains])
        self.domain_p = shares / shares.sum()

    def _memberships(self, rng, n: int, overlap: float, n_dom: int) -> list[_Popularity]:
        shared = rng.random(n) < overlap
        owner = rng.integers(0, n_dom, n)
        ranks = np.arange(n)
        return [_Popularity(ranks[shared | (owner == d)] if (shared | (owner == d)).any() else ranks,
                            self.cfg.zipf) for d in range(n_dom)]

    def chunk(self, c: int, start_row: int, n: int) -> tuple[dict, np.ndarray, np.ndarray]:
        """Columns for rows ``start_row .. start_row + n``, plus domain index and true p."""
        cfg, s = self.cfg, self.cfg.signal
        rng = np.random.default_rng([cfg.seed, c])
        dom = rng.choice(len(cfg.domains), size=n, p=self.domain_p)
        u = np.empty(n, dtype=np.int64)
        i = np.empty(n, dtype=np.int64)
        for d in range(len(cfg.domains)):
            rows = np.flatnonzero(dom == d)
            u[rows] = self.users_of[d].draw(rng, len(rows))
            i[rows] = self.items_of[d].draw(rng, len(rows))
        t = (start_row + np.sort(rng.random(n)) * n) / cfg.rows  # increasing in [0, 1)
        a = cfg.time.drift * math.pi / 2
        Ut = (np.cos(a * t)[:, None] * self.U[u] + np.sin(a * t)[:, None] * self.U2[u]).astype(np.float32)
        Vi = self.V[i]
        inv = 1.0 / math.sqrt(cfg.dim)
        logit = np.full(n, s.base, dtype=np.float32) + self.b_dom[dom]
        logit += s.shared * inv * np.einsum("nk,nk->n", Ut, Vi)
        for d in range(len(cfg.domains)):
            rows = np.flatnonzero(dom == d)
            logit[rows] += s.domain * inv * np.einsum("nk,nk->n", Ut[rows] @ self.P[d], Vi[rows])
        cat = self.item_cat[i]
        logit += s.category * self.C[dom, cat]
        columns: dict = {}
        if cfg.tags:
            lengths, tag_vals = gather(self.tag_offsets, self.tag_values, i)
            row_of = np.repeat(np.arange(n), lengths)
            logit += s.tags * np.bincount(row_of, weights=self.T[tag_vals], minlength=n).astype(np.float32) / lengths
            columns["tags"] = list_array(offsets_from_lengths(lengths), tag_vals)
        for field, E, pop, ids in zip(cfg.extra_fields, self.E, self.extra_pop, self.extra_ids):
            rank = pop.draw(rng, n)
            logit += s.extra * E[rank]
            columns[field.name] = ids[rank]
        if cfg.dense_fields:
            x = rng.standard_normal((n, cfg.dense_fields), dtype=np.float32)
            w = self.w[None, :] + self.w_dom[dom]
            logit += s.dense * np.einsum("nk,nk->n", x, w) / math.sqrt(cfg.dense_fields)
            for j in range(cfg.dense_fields):
                columns[f"dense_{j}"] = x[:, j].copy()
        p = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
        label = (rng.random(n) < p).astype(np.int8)
        t0 = int(datetime.combine(cfg.time.start, datetime.min.time(), tzinfo=timezone.utc).timestamp())
        names = np.array([d.name for d in cfg.domains], dtype=object)
        columns.update({
            "example_id": np.arange(start_row, start_row + n, dtype=np.int64),
            "ts": t0 + (t * cfg.time.days * DAY).astype(np.int64),
            "domain": pa.array(names[dom], pa.string()),
            "label": label,
            "user_id": self.user_ids[u],
            "item_id": self.item_ids[i],
            "category": cat.astype(np.int64) + 1,
        })
        return columns, dom, p


def synthetic_fields(cfg: SyntheticConfig) -> list[FieldSpec]:
    fields = [
        FieldSpec(name="user_id", kind=FieldKind.sparse, cardinality=cfg.users + 1),
        FieldSpec(name="item_id", kind=FieldKind.sparse, cardinality=cfg.items + 1),
        FieldSpec(name="category", kind=FieldKind.sparse, cardinality=cfg.categories + 1),
    ]
    fields += [FieldSpec(name=f.name, kind=FieldKind.sparse, cardinality=f.cardinality + 1) for f in cfg.extra_fields]
    if cfg.tags:
        fields.append(FieldSpec(name="tags", kind=FieldKind.multi_hot, cardinality=cfg.tags,
                                max_len=cfg.max_tags_per_item))
    fields += [FieldSpec(name=f"dense_{j}", kind=FieldKind.dense) for j in range(cfg.dense_fields)]
    return fields


def binned_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-bin positive/negative counts over increasing score bins (ties count 1/2)."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def generate_synthetic(cfg: SyntheticConfig, out: str | Path, *, overwrite: bool = False,
                       progress: bool = True) -> DatasetSpec:
    """Write the synthetic dataset of ``cfg`` to ``out`` (atomically, in chunks)."""
    truth = GroundTruth(cfg)
    n_dom = len(cfg.domains)
    pos = np.zeros((n_dom, AUC_BINS), dtype=np.int64)
    neg = np.zeros((n_dom, AUC_BINS), dtype=np.int64)
    t0 = int(datetime.combine(cfg.time.start, datetime.min.time(), tzinfo=timezone.utc).timestamp())
    span = cfg.time.days * DAY
    test_days = max(1, cfg.time.days // 10)
    spec = DatasetSpec(
        name=cfg.name, rows=0, files=["pending"], fields=synthetic_fields(cfg),
        domains=[DomainSpec(name=d.name, role=d.role) for d in cfg.domains],
        split=SplitSpec(random=cfg.split, temporal=TemporalSplit(
            valid_start=t0 + span - 2 * test_days * DAY, test_start=t0 + span - test_days * DAY)),
        source=SourceSpec(kind="synthetic", origin="mdctr.domains.synthetic",
                          params={"seed": cfg.seed, "config": cfg.model_dump_json()}),
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = DatasetWriter(tmp, spec)
        n_chunks = -(-cfg.rows // cfg.chunk_rows)
        bar = tqdm(total=cfg.rows, unit="rows", desc="synth", disable=not progress, unit_scale=True)
        for c in range(n_chunks):
            start = c * cfg.chunk_rows
            n = min(cfg.chunk_rows, cfg.rows - start)
            columns, dom, p = truth.chunk(c, start, n)
            label = columns["label"].astype(bool)
            bins = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
            flat = dom * AUC_BINS + bins
            pos += np.bincount(flat[label], minlength=n_dom * AUC_BINS).reshape(n_dom, AUC_BINS)
            neg += np.bincount(flat[~label], minlength=n_dom * AUC_BINS).reshape(n_dom, AUC_BINS)
            writer.write(build_table(spec, columns))
            bar.update(n)
        bar.close()
        writer.spec = spec.model_copy(update={"domains": [
            d.model_copy(update={"bayes_auc": round(binned_auc(pos[j], neg[j]), 5)})
            for j, d in enumerate(spec.domains)
        ]})
        return writer.close()

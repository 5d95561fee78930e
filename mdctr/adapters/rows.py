"""A domain adapter's own embedding rows, used for that domain's examples only.

A new domain usually brings ids no other domain has (its own items, its own users). The
frozen backbone never trained their table rows, so they still hold their initial values
and a tower adapter alone cannot tell those users or items apart. Fine-tuning
(``mdctr adapters finetune --rows``) therefore also gives the domain rows of its own:

- ``all`` (default): every row its training data uses, as a domain-specific residual
  (closest to having trained the domain in from the start);
- ``cold``: only the rows of its training data whose backbone weights are still
  bit-identical to the seeded initialisation (:class:`mdctr.platform.model.SeededUniformInit`,
  so "never trained" is a fact read off the checkpoint, for any embedding optimizer): a
  smaller adapter that leaves the rows other domains trained to the tower adapter.

For that domain's examples a looked-up row is ``backbone[row] + own[row]`` (``own`` starts
at zero, so a fresh adapter changes nothing); every other domain, and every other row, is
untouched, which keeps other domains' predictions bit-identical. Pooling follows the
field's table (sum, or mean over the bag).

A backbone whose untrained rows do not hold its own seeded init (e.g. tables copied from a
run trained with another seed) yields no cold rows: the adapter is then the tower adapter
alone, as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from mdctr.core.native import kernels
from mdctr.domains.batching import DatasetReader
from mdctr.domains.selection import Selection
from mdctr.platform.model import DOMAIN_KEY, FeatureLayout, SeededUniformInit

ROWS = "lora_rows"  # the model attribute (a ModuleDict by domain); "lora_" marks adapter weights


class DomainRows(nn.Module):
    """One domain's own rows: per field, sorted table rows (buffer) and their vectors."""

    def __init__(self, rows: dict[str, torch.Tensor], dim: int, mean: dict[str, bool]):
        super().__init__()
        self.fields = list(rows)
        self.mean = dict(mean)
        for f, r in rows.items():
            if r.numel() and not bool((r[1:] > r[:-1]).all()):
                raise ValueError(f"rows of field '{f}' must be sorted and unique")
            self.register_buffer(f"rows_{f}", r.to(torch.int64))
        self.weight = nn.ParameterDict({f: nn.Parameter(torch.zeros(len(r), dim)) for f, r in rows.items()})
        self.merged = False  # folded into the tables (single-domain serving): add nothing
        self._codes: tuple[tuple, torch.Tensor] | None = None  # codes() cache

    def rows(self, field: str) -> torch.Tensor:
        return getattr(self, f"rows_{field}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.weight.values())

    def pooled(self, field: str, values: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, dim) pooled own vectors of one field's bags; examples not in ``keep`` get 0."""
        if keep is None:
            keep = torch.ones(lengths.shape[0], dtype=torch.bool, device=lengths.device)
        return pool_rows(self.rows(field), self.weight[field], values, lengths, keep, self.mean[field])

    def codes(self, keys: list[str]) -> tuple[torch.Tensor, list[str]]:
        """All fields' rows in one sorted code space, ``slot * CODE_SHIFT + row`` with ``slot``
        the field's position in ``keys``, and the fields in that order (cached until the
        rows move or change in place)."""
        fields = sorted(self.fields, key=keys.index)
        device = self.rows(fields[0]).device if fields else torch.device("cpu")
        key = (tuple(keys), device, tuple(self.rows(f)._version for f in fields))
        if self._codes is None or self._codes[0] != key:
            codes = torch.cat([self.rows(f) + keys.index(f) * CODE_SHIFT for f in fields]) if fields else \
                torch.zeros(0, dtype=torch.int64)
            self._codes = (key, codes)
        return self._codes[1], fields

    def vectors(self, fields: list[str]) -> torch.Tensor:
        """The vectors of :meth:`codes`' rows, in its order."""
        return self.weight[fields[0]] if len(fields) == 1 else torch.cat([self.weight[f] for f in fields])


#: table rows are < 2**40; a field's slot times this, plus the row, codes (field, row) pairs
CODE_SHIFT = 1 << 40


def pool_rows(rows: torch.Tensor, vecs: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
              keep: torch.Tensor, mean: bool) -> torch.Tensor:
    """(B, dim): for each bag (``lengths`` over ``values``, table rows) of an example in
    ``keep``, the sum (``mean``: mean over the bag) of ``vecs`` of its values found in the
    sorted ``rows``. Scriptable: exported artifacts run it too.

    Misses are weighted by zero rather than filtered out: no data-dependent shapes, and the
    sum is the same (adding 0.0 leaves a float unchanged)."""
    b = lengths.shape[0]
    out = torch.zeros(b, vecs.shape[1], dtype=vecs.dtype, device=vecs.device)
    if rows.shape[0] == 0 or values.shape[0] == 0:
        return out
    bag = torch.repeat_interleave(torch.arange(b, device=values.device), lengths)
    pos = torch.clamp(torch.searchsorted(rows, values), max=rows.shape[0] - 1)
    w = ((rows[pos] == values) & keep[bag]).to(vecs.dtype)
    # index_select, not vecs[pos]: the same rows, but its backward is an index_add rather than
    # an accumulating index_put (forward and backward ~1.6x faster on CPU)
    out = out.index_add(0, bag, vecs.index_select(0, pos) * w.unsqueeze(1))
    if mean:
        out = out / torch.clamp(lengths, min=1).unsqueeze(1).to(out.dtype)
    return out


class _OwnRows(torch.autograd.Function):
    """:func:`pool_rows` (sum pooling) in the compiled kernel (``csrc/rows.cpp``): one pass
    over the ids each way instead of ~10 torch ops, the same bits."""

    @staticmethod
    def forward(ctx, rows, vecs, values, lengths, keep):
        out, pos = kernels.own_rows_forward(rows, vecs, values, lengths, keep)
        ctx.save_for_backward(pos, lengths)
        ctx.n_rows = rows.shape[0]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        pos, lengths = ctx.saved_tensors
        return None, kernels.own_rows_backward(grad, pos, lengths, ctx.n_rows), None, None, None


def pool_own_rows(rows: torch.Tensor, vecs: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                  keep: torch.Tensor | None) -> torch.Tensor:
    """:func:`pool_rows` with sum pooling (``keep`` None: every example): the compiled
    kernel for CPU tensors, else :func:`pool_rows` itself."""
    if kernels is not None and vecs.device.type == "cpu":
        return _OwnRows.apply(rows.contiguous(), vecs, values.to(torch.int64).contiguous(),
                              lengths.to(torch.int64).contiguous(),
                              keep if keep is not None else torch.zeros(0, dtype=torch.bool))
    if keep is None:
        keep = torch.ones(lengths.shape[0], dtype=torch.bool, device=lengths.device)
    return pool_rows(rows, vecs, values, lengths, keep, False)


def rows_delta(modules: dict[str, DomainRows], names: list[str], keys: list[str], dim: int, sparse: KeyedJaggedTensor,
               domain: torch.Tensor, single: int | None) -> torch.Tensor | None:
    """(B, len(keys) * dim) additions to the pooled embeddings, or None if nothing applies.

    Every field is looked up at once: the batch's ids become codes of one sorted code space
    (:meth:`DomainRows.codes`), so a step costs a handful of ops whatever the field count.
    """
    active: list[tuple[DomainRows, torch.Tensor | None]] = []
    for name, module in modules.items():
        if module.merged or name not in names or not module.fields:
            continue
        idx = names.index(name)
        if single is not None and single != idx:
            continue
        keep = None if single is not None else domain == idx
        if keep is not None and not bool(keep.any()):
            continue
        active.append((module, keep))
    if not active:
        return None
    kjt_keys, b = list(sparse.keys()), sparse.stride()
    values, lengths = sparse.values(), sparse.lengths()
    slots = [keys.index(k) if k in keys else -1 for k in kjt_keys]  # -1: no pooled columns, never matches
    field_code = torch.tensor(slots, dtype=torch.int64, device=values.device) * CODE_SHIFT
    codes = values.to(torch.int64) + torch.repeat_interleave(
        field_code, torch.tensor(sparse.length_per_key(), device=values.device))
    total = None
    for module, keep in active:
        own, fields = module.codes(keys)
        keep_bags = None if keep is None else keep.repeat(len(kjt_keys))  # bags are key-major: key j's are j*b ..
        part = pool_own_rows(own, module.vectors(fields), codes, lengths, keep_bags)
        total = part if total is None else total + part
    pooled = total.view(len(kjt_keys), b, -1)
    mean = [any(m.mean.get(k, False) and k in m.fields for m, _ in active) for k in kjt_keys]
    if any(mean):
        div = torch.where(torch.tensor(mean, device=values.device).unsqueeze(1),
                          lengths.view(len(kjt_keys), b).clamp(min=1), torch.ones_like(lengths).view(len(kjt_keys), b))
        pooled = pooled / div.unsqueeze(2).to(pooled.dtype)
    pooled = pooled.transpose(0, 1)  # (b, KJT keys, dim)
    if slots == list(range(len(keys))):
        return pooled.reshape(b, len(keys) * dim)
    delta = pooled.new_zeros(b, len(keys), dim)
    cols = [j for j, s in enumerate(slots) if s >= 0]
    delta[:, [slots[j] for j in cols]] = pooled[:, cols]
    return delta.reshape(b, len(keys) * dim)


def seen_rows(reader: DatasetReader, domain: str, keys: list[str], selection: Selection) -> dict[str, np.ndarray]:
    """Unique table rows of each field in ``domain``'s training rows of ``selection``."""
    seen: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in reader.batches("train", selection.with_domains([domain]), batch_size=65536, shuffle=False):
        for k in keys:
            seen[k].append(np.unique(batch.sparse[k].values().numpy()))
    return {k: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in seen.items()}


def find_cold_rows(tables: dict[str, torch.Tensor], layout: FeatureLayout, seed: int,
                   seen: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Of the rows ``seen`` in the new domain's data, those whose trained table rows still
    equal the seeded initialisation (``tables``: key -> full table of the backbone)."""
    out = {}
    for k, rows in seen.items():
        if k == DOMAIN_KEY or rows.size == 0:
            continue
        trained = tables[k].float().cpu()
        init = SeededUniformInit(seed, f"t_{k}", trained.shape[0], trained.shape[1])(torch.empty_like(trained))
        r = torch.from_numpy(rows.astype(np.int64))
        untouched = (trained[r] == init[r]).all(dim=1)
        if bool(untouched.any()):
            out[k] = r[untouched]
    return out


def row_modules(model: nn.Module) -> nn.ModuleDict:
    """The model's ``{domain: DomainRows}`` (created empty on first use)."""
    if not hasattr(model, ROWS):
        setattr(model, ROWS, nn.ModuleDict())
    return getattr(model, ROWS)


@torch.no_grad()
def fold_into_tables(model: nn.Module, module: DomainRows) -> None:
    """Add ``module``'s rows into the (sharded) tables of ``model`` in place and mark it merged:
    the single-domain serving form, exact for that domain only."""
    state = model.state_dict()
    for f in module.fields:
        table = state[f"ebc.embedding_bags.t_{f}.weight"]
        rows, vecs = module.rows(f), module.weight[f].detach()
        shards = [(s.tensor, s.metadata.shard_offsets, s.metadata.shard_sizes) for s in table.local_shards()] \
            if hasattr(table, "local_shards") else [(table, (0, 0), tuple(table.shape))]
        for t, (r0, c0), (nr, nc) in shards:
            sel = (rows >= r0) & (rows < r0 + nr)
            t[rows[sel] - r0] += vecs[sel][:, c0:c0 + nc].to(t.device, t.dtype)
    module.merged = True

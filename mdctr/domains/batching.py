"""Stream a dataset split as TorchRec batches, vectorised, shuffled, sharded by rank.

The reader works in *chunks* of whole row groups (at least ``chunk_rows`` rows): it reads a
chunk's columns, keeps the rows of the wanted split/domains/time window, maps ids to table
rows (:mod:`mdctr.domains.ids`), permutes the chunk once, and then cuts batches as
contiguous slices. The next chunk is prepared on a background thread while the current one
is served, and small datasets keep their decoded row groups in memory across epochs. With ``shuffle`` the row-group order and each chunk are permuted by
``rng([seed, epoch])``, so a dataset smaller than a chunk is fully shuffled and a larger
one is block-shuffled with bounded memory. No step loops over rows in Python.

Sharding: every rank reads the same chunks in the same order and takes its own
``batch_size`` slice of each global batch of ``batch_size * world_size`` rows, so all ranks
yield the same number of batches (what collective training needs). The last, short global
batch is split evenly (``drop_last=False``) or dropped.

Shapes (B = rows in the batch, F = sparse + multi-hot fields, D = dense fields)::

    Batch.sparse      KeyedJaggedTensor, keys = field names, stride B
    Batch.dense       float32 (B, D)
    Batch.labels      float32 (B,)
    Batch.domain      int64   (B,)   index into dataset.yaml's domain list
    Batch.example_id  int64   (B,)
    Batch.extra       {field: (B,)}  raw ids of the reader's ``raw_fields`` (for joins by id)
    Batch.inputs      {name: (B, ...)}  named model inputs joined by batch transforms, passed
                      to the model (e.g. snapshot history ``history.user.vectors`` (B, K, D))
    Batch.targets     {name: (B,)}  extra training targets joined by batch transforms, read by
                      the loss only (e.g. ``teacher_logit``, ``has_teacher``)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mdctr.core.errors import DataContractError
from mdctr.domains.ids import table_rows
from mdctr.domains.jagged import gather, offsets_from_lengths
from mdctr.domains.selection import Selection
from mdctr.domains.spec import DatasetSpec, load_spec
from mdctr.domains.splits import PART_INDEX, SplitKind, SplitName, random_parts, temporal_parts


@dataclass
class Batch:
    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    domain: torch.Tensor
    example_id: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            sparse=self.sparse.to(device=torch.device(device), non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            domain=self.domain.to(device, non_blocking=non_blocking),
            example_id=self.example_id.to(device, non_blocking=non_blocking),
            extra={k: v.to(device, non_blocking=non_blocking) for k, v in self.extra.items()},
            inputs={k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
            targets={k: v.to(device, non_blocking=non_blocking) for k, v in self.targets.items()},
        )


@dataclass
class _Chunk:
    """A chunk's selected rows as numpy arrays, in output order."""

    ids: np.ndarray  # (n, S + R) int64, table rows of the single-valued fields, then R raw ids
    mh: list[tuple[np.ndarray, np.ndarray]]  # per multi-hot field: offsets (n+1), values
    dense: np.ndarray  # (n, D) float32
    labels: np.ndarray  # (n,) float32
    domain: np.ndarray  # (n,) int64
    example_id: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> "_Chunk":
        mh = []
        for off, val in self.mh:
            lengths, v = gather(off, val, rows)
            mh.append((offsets_from_lengths(lengths), v))
        return _Chunk(self.ids[rows], mh, self.dense[rows], self.labels[rows], self.domain[rows],
                      self.example_id[rows])

    def copy(self) -> "_Chunk":
        return _Chunk(self.ids.copy(), [(off.copy(), val.copy()) for off, val in self.mh], self.dense.copy(),
                      self.labels.copy(), self.domain.copy(), self.example_id.copy())

    def slice(self, lo: int, hi: int) -> "_Chunk":
        mh = [(off[lo:hi + 1] - off[lo], val[off[lo]:off[hi]]) for off, val in self.mh]
        return _Chunk(self.ids[lo:hi], mh, self.dense[lo:hi], self.labels[lo:hi], self.domain[lo:hi],
                      self.example_id[lo:hi])

    @staticmethod
    def concat(parts: list["_Chunk"]) -> "_Chunk":
        if len(parts) == 1:
            return parts[0]
        mh = []
        for j in range(len(parts[0].mh)):
            lengths = np.concatenate([np.diff(p.mh[j][0]) for p in parts])
            mh.append((offsets_from_lengths(lengths), np.concatenate([p.mh[j][1] for p in parts])))
        return _Chunk(
            np.concatenate([p.ids for p in parts]), mh, np.concatenate([p.dense for p in parts]),
            np.concatenate([p.labels for p in parts]), np.concatenate([p.domain for p in parts]),
            np.concatenate([p.example_id for p in parts]),
        )


class DatasetReader:
    """Reads one dataset directory (validated spec, Parquet row groups) into :class:`Batch` es.

    Args:
        directory: dataset directory (``dataset.yaml`` + Parquet).
        table_sizes: rows of each field's embedding table; ids are mapped with
            :func:`mdctr.domains.ids.table_rows`. Defaults to each field's cardinality.
        chunk_rows: rows read and shuffled together.
        cache_rows: datasets with at most this many rows keep their row groups in memory,
            read once (Parquet decoding) for every selection (split, domains, time window),
            and each selection's decoded rows, so later epochs skip decoding and id mapping.
        background: read and decode the next chunk on a background thread.
        fields: the sparse and multi-hot fields batches carry (default: all of them).
        raw_fields: single-valued fields whose raw ids batches also carry in ``Batch.extra``
            (for lookups keyed by id, such as embedding snapshots).

    Example::

        reader = DatasetReader("data/ml-gender")
        for batch in reader.batches("train", Selection(domains=("F",)), batch_size=4096, seed=0, epoch=0):
            logits = model(batch.sparse, batch.dense, batch.domain, batch.inputs)
    """

    def __init__(self, directory: str | Path, *, table_sizes: dict[str, int] | None = None,
                 chunk_rows: int = 1 << 20, cache_rows: int = 4 << 20, background: bool = True,
                 fields: list[str] | None = None, raw_fields: list[str] | None = None):
        self.directory = Path(directory)
        self.spec: DatasetSpec = load_spec(self.directory)
        self.chunk_rows = chunk_rows
        self.background = background
        self._cache: dict[tuple, _Chunk] = {}
        self._tables: dict[int, pa.Table] = {}  # row group k as read, when cacheable
        names = [f.name for f in self.spec.sparse_fields + self.spec.multi_hot_fields]
        for what, wanted in (("fields", fields), ("raw_fields", raw_fields)):
            missing = [f for f in wanted or [] if f not in names]
            if missing:
                raise DataContractError(f"{what} names '{missing[0]}', not a sparse or multi-hot field of the data",
                                        file=self.directory / "dataset.yaml")
        keep = set(fields) if fields is not None else set(names)
        self.sparse_names = [f.name for f in self.spec.sparse_fields if f.name in keep]
        self.mh_names = [f.name for f in self.spec.multi_hot_fields if f.name in keep]
        self.raw_names = list(raw_fields or [])
        bad = [f for f in self.raw_names if f not in {x.name for x in self.spec.sparse_fields}]
        if bad:
            raise DataContractError(f"raw_fields names '{bad[0]}', which is not single-valued",
                                    file=self.directory / "dataset.yaml")
        self.dense_names = [f.name for f in self.spec.dense_fields]
        sizes = {f.name: f.cardinality for f in self.spec.fields if f.cardinality}
        unknown = set(table_sizes or {}) - set(sizes)
        if unknown:
            raise DataContractError(f"table_sizes names fields the dataset lacks: {sorted(unknown)}",
                                    file=self.directory / "dataset.yaml")
        sizes.update(table_sizes or {})
        self.table_sizes: dict[str, int] = sizes
        self._domains = pa.array(self.spec.domain_names, pa.string())
        self._row_groups: list[tuple[Path, int, int]] = []
        for name in self.spec.files:
            path = self.directory / name
            try:
                meta = pq.ParquetFile(path).metadata
            except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
                raise DataContractError(f"cannot open data file ({exc})", file=path) from None
            for g in range(meta.num_row_groups):
                self._row_groups.append((path, g, meta.row_group(g).num_rows))
        # small datasets keep their decoded rows in memory across epochs
        self._cacheable = sum(n for _, _, n in self._row_groups) <= cache_rows

    @property
    def keys(self) -> list[str]:
        return self.sparse_names + self.mh_names

    # -- selection ---------------------------------------------------------------------------
    def _mask(self, t: pa.Table, split: SplitName | None, split_kind: SplitKind, split_seed: int | None,
              domains: np.ndarray | None, ts_range: tuple[int | None, int | None] | None) -> np.ndarray:
        n = t.num_rows
        keep = np.ones(n, dtype=bool)
        if split is not None:
            if split_kind == "random":
                parts = random_parts(t.column("example_id").to_numpy(), self.spec.split.random, split_seed)
            else:
                if self.spec.split.temporal is None:
                    raise DataContractError("dataset has no temporal split", file=self.directory / "dataset.yaml")
                parts = temporal_parts(t.column("ts").to_numpy(), self.spec.split.temporal)
            keep &= parts == PART_INDEX[split]
        if domains is not None:
            keep &= np.isin(self._domain_index(t), domains)
        if ts_range is not None:
            ts = t.column("ts").to_numpy()
            lo, hi = ts_range
            if lo is not None:
                keep &= ts >= lo
            if hi is not None:
                keep &= ts < hi
        return keep

    def _domain_index(self, t: pa.Table) -> np.ndarray:
        return pc.index_in(t.column("domain"), value_set=self._domains).to_numpy(zero_copy_only=False).astype(np.int64)

    def _read_group(self, k: int, mask_args: tuple) -> _Chunk:
        """Row group ``k``'s selected rows, decoded (cached when the dataset is small)."""
        key = (k, mask_args[0], mask_args[1], mask_args[2],
               None if mask_args[3] is None else tuple(mask_args[3].tolist()), mask_args[4])
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        t = self._tables.get(k)
        if t is None:
            path, g, _ = self._row_groups[k]
            t = pq.ParquetFile(path).read_row_group(g)
            if self._cacheable:  # valid, test and other domains' selections reuse it
                self._tables[k] = t
        keep = self._mask(t, *mask_args)
        if not keep.all():
            t = t.filter(pa.array(keep))
        n = t.num_rows
        ns = len(self.sparse_names)
        ids = np.empty((n, ns + len(self.raw_names)), dtype=np.int64)
        for j, name in enumerate(self.sparse_names):
            ids[:, j] = table_rows(t.column(name).to_numpy(), self.table_sizes[name])
        for j, name in enumerate(self.raw_names):
            ids[:, ns + j] = t.column(name).to_numpy()
        mh = []
        for name in self.mh_names:
            col = t.column(name).combine_chunks()
            off = col.offsets.to_numpy().astype(np.int64)
            vals = col.values.to_numpy()[off[0]:off[-1]]
            mh.append((off - off[0], table_rows(vals, self.table_sizes[name])))
        dense = np.empty((n, len(self.dense_names)), dtype=np.float32)
        for j, name in enumerate(self.dense_names):
            dense[:, j] = t.column(name).to_numpy()
        chunk = _Chunk(ids, mh, dense, t.column("label").to_numpy().astype(np.float32),
                       self._domain_index(t), t.column("example_id").to_numpy().copy())
        if self._cacheable:
            self._cache[key] = chunk
        return chunk

    def _chunks(self, rng: np.random.Generator | None, mask_args: tuple) -> Iterator[_Chunk]:
        """Chunks of >= ``chunk_rows`` rows (whole row groups), permuted when ``rng`` is given."""
        order = list(range(len(self._row_groups)))
        if rng is not None:
            order = rng.permutation(len(order)).tolist()
        parts: list[_Chunk] = []
        rows = 0
        for i, k in enumerate(order):
            parts.append(self._read_group(k, mask_args))
            rows += self._row_groups[k][2]
            if rows >= self.chunk_rows or i == len(order) - 1:
                chunk = _Chunk.concat(parts)
                if rng is not None:
                    chunk = chunk.take(rng.permutation(len(chunk)))
                elif len(parts) == 1 and self._cacheable:
                    chunk = chunk.copy()  # batches share memory with it: keep the cache out of reach
                yield chunk
                parts, rows = [], 0

    # -- batches -----------------------------------------------------------------------------
    def batches(
        self,
        split: SplitName | None = "train",
        selection: Selection | None = None,
        *,
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        group_domains: bool = False,
    ) -> Iterator[Batch]:
        """Yield this rank's batches of ``split`` (``None``: every row) of ``selection``.

        ``group_domains``: order each batch's rows by domain (stable), so per-domain work
        downstream (adapters) can use contiguous slices.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        mask_args = self._mask_args(split, selection or Selection())
        rng = np.random.default_rng([seed, epoch]) if shuffle else None
        g = batch_size * world_size
        carry: _Chunk | None = None
        # chunks are read, decoded and permuted on a background thread, one ahead
        for chunk in prefetch(self._chunks(rng, mask_args), 1 if self.background else 0):
            if carry is not None and len(carry):
                chunk = _Chunk.concat([carry, chunk])
            full = len(chunk) // g * g
            for lo in range(0, full, g):
                part = chunk.slice(lo + rank * batch_size, lo + (rank + 1) * batch_size)
                yield self._to_batch(part.take(np.argsort(part.domain, kind="stable")) if group_domains else part)
            carry = chunk.slice(full, len(chunk))
        if carry is not None and len(carry) and not drop_last:
            bounds = np.linspace(0, len(carry), world_size + 1).astype(np.int64)
            part = carry.slice(int(bounds[rank]), int(bounds[rank + 1]))
            yield self._to_batch(part.take(np.argsort(part.domain, kind="stable")) if group_domains else part)

    def _to_batch(self, c: _Chunk) -> Batch:
        b = len(c)
        ns = len(self.sparse_names)
        values = [c.ids[:, :ns].T.reshape(-1)]
        lengths = [np.ones(b * len(self.sparse_names), dtype=np.int64)]
        for off, val in c.mh:
            values.append(val)
            lengths.append(np.diff(off))
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=b,
        )
        raw = {name: torch.from_numpy(np.ascontiguousarray(c.ids[:, ns + j])) for j, name in enumerate(self.raw_names)}
        return Batch(kjt, torch.from_numpy(c.dense), torch.from_numpy(c.labels), torch.from_numpy(c.domain),
                     torch.from_numpy(c.example_id), raw)

    def _mask_args(self, split: SplitName | None, sel: Selection) -> tuple:
        dom_idx = None
        if sel.domains is not None:
            missing = [d for d in sel.domains if d not in self.spec.domain_names]
            if missing:
                raise DataContractError(f"domain '{missing[0]}' is not declared in dataset.yaml",
                                        file=self.directory / "dataset.yaml")
            dom_idx = np.array([self.spec.domain_index(d) for d in sel.domains])
        return split, sel.split_kind, sel.split_seed, dom_idx, sel.window

    def num_rows(self, split: SplitName | None = "train", selection: Selection | None = None) -> int:
        """Rows of ``split`` of ``selection`` (reads only the key columns)."""
        mask_args = self._mask_args(split, selection or Selection())
        total = 0
        for name in self.spec.files:
            t = pq.read_table(self.directory / name, columns=["example_id", "ts", "domain"])
            total += int(self._mask(t, *mask_args).sum())
        return total


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Produce ``batches`` on a background thread, ``depth`` ahead (numpy/Arrow release the GIL)."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="mdctr-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)

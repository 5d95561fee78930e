"""Batch lookup of int64 keys: where each query id sits in a store's key array.

Two layouts, chosen by how dense the keys are:

- dense keys (``max - min < DENSE_SPAN * n``, e.g. example ids, user ids): a direct-address
  table of positions (int32), so a lookup is one gather per query;
- sparse keys: binary search over the sorted keys, with the queries sorted first so the
  search walks memory in order (a batch of random queries into 10M keys would otherwise
  miss the cache at every level).
"""

from __future__ import annotations

import numpy as np

DENSE_SPAN = 4  # a direct table may be at most this many times the number of keys


class IdIndex:
    """Positions of ``keys`` (unique int64, any order)."""

    def __init__(self, keys: np.ndarray):
        keys = np.asarray(keys, dtype=np.int64)
        self.n = len(keys)
        self._table: np.ndarray | None = None
        if self.n and self.n < 2**31:
            lo, hi = int(keys.min()), int(keys.max())
            if hi - lo < DENSE_SPAN * self.n:
                self._lo = lo
                self._table = np.full(hi - lo + 1, -1, dtype=np.int32)
                self._table[keys - lo] = np.arange(self.n, dtype=np.int32)
                return
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def find(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions (B,) int64, found (B,) bool)``; positions of missing ids are 0."""
        q = np.asarray(query, dtype=np.int64)
        if self.n == 0:
            return np.zeros(len(q), np.int64), np.zeros(len(q), bool)
        if self._table is not None:
            off = q - self._lo
            inside = (off >= 0) & (off < len(self._table))
            pos = np.where(inside, self._table[np.where(inside, off, 0)], -1)
            found = pos >= 0
            return np.where(found, pos, 0).astype(np.int64), found
        qo = np.argsort(q, kind="stable")
        at = np.searchsorted(self._sorted, q[qo])
        at = np.minimum(at, self.n - 1)
        hit = self._sorted[at] == q[qo]
        pos = np.zeros(len(q), np.int64)
        found = np.zeros(len(q), bool)
        pos[qo] = np.where(hit, self._order[at], 0)
        found[qo] = hit
        return pos, found

"""Vectorised helpers for jagged (CSR) arrays: ``offsets`` (n+1) and flat ``values``.

>>> import numpy as np
>>> offsets, values = np.array([0, 2, 2, 5]), np.array([10, 11, 20, 21, 22])
>>> gather(offsets, values, np.array([2, 0, 1]))
(array([3, 2, 0]), array([20, 21, 22, 10, 11]))
"""

from __future__ import annotations

import numpy as np


def gather(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of a jagged array as (lengths, flat values), with no per-row Python."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return lengths, values[:0]
    # position k of the output belongs to output row r(k); its source is starts[r] + (k - out_start[r])
    out_starts = np.cumsum(lengths) - lengths
    src = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)
    return lengths, values[src]


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out

"""The stable id -> table-row map used for every embedding table.

``row(id, n) = id`` when ``0 <= id < n``, else ``splitmix64(id) mod n``.

It depends only on the id and the table size ``n`` (never on which ids a dataset holds),
so the same raw id lands on the same row in every dataset, window and run: a model trained
on one month's data reads the next month's ids consistently. Ids below ``n`` never collide;
ids beyond it are spread uniformly by the splitmix64 finaliser.

>>> import numpy as np
>>> table_rows(np.array([0, 5, 9, 10, 1_000_003]), 10).tolist()
[0, 5, 9, 6, 4]
"""

from __future__ import annotations

import numpy as np

from mdctr.domains.splits import splitmix64


def table_rows(ids: np.ndarray, n: int) -> np.ndarray:
    """Map raw ids (int64, >= 0) to rows of a table of ``n`` rows."""
    if n < 1:
        raise ValueError(f"table size must be >= 1, got {n}")
    ids = np.asarray(ids, dtype=np.int64)
    out = ids.copy()
    big = ids >= n
    if big.any():
        out[big] = (splitmix64(ids[big].astype(np.uint64)) % np.uint64(n)).astype(np.int64)
    return out

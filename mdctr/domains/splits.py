"""Train/valid/test assignment: seeded random (by hash of ``example_id``) or temporal.

The random split needs no stored column and no global shuffle: an example's part is a
pure function of ``(example_id, seed)``, so it streams over any number of files, is the
same on every rank, and a different seed gives a different split.

>>> import numpy as np
>>> from mdctr.domains.spec import RandomSplit
>>> parts = random_parts(np.arange(100_000), RandomSplit(seed=0))
>>> [round(float((parts == p).mean()), 2) for p in (TRAIN, VALID, TEST)]
[0.8, 0.1, 0.1]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mdctr.domains.spec import RandomSplit, TemporalSplit

TRAIN, VALID, TEST = 0, 1, 2
PART_INDEX = {"train": TRAIN, "valid": VALID, "test": TEST}
SplitName = Literal["train", "valid", "test"]
SplitKind = Literal["random", "temporal"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    z = x.astype(np.uint64, copy=True)
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def unit_hash(example_id: np.ndarray, seed: int) -> np.ndarray:
    """A uniform float in [0, 1) per id, fixed for a (id, seed) pair."""
    salt = splitmix64(np.array([seed], dtype=np.uint64))[0]
    h = splitmix64(example_id.astype(np.uint64) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def random_parts(example_id: np.ndarray, split: RandomSplit, seed: int | None = None) -> np.ndarray:
    """Part index (TRAIN/VALID/TEST, int8) per example; ``seed`` overrides ``split.seed``."""
    u = unit_hash(example_id, split.seed if seed is None else seed)
    parts = np.full(len(u), TEST, dtype=np.int8)
    parts[u < split.train + split.valid] = VALID
    parts[u < split.train] = TRAIN
    return parts


def temporal_parts(ts: np.ndarray, split: TemporalSplit) -> np.ndarray:
    parts = np.full(len(ts), VALID, dtype=np.int8)
    parts[ts < split.valid_start] = TRAIN
    parts[ts >= split.test_start] = TEST
    return parts

"""Which rows a job reads: one value shared by the reader, the trainer and every job.

>>> s = Selection(split_seed=1, domains=("F",))
>>> s.with_window(0, 86_400).window, s.split_kind
((0, 86400), 'random')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mdctr.domains.splits import SplitKind


@dataclass(frozen=True)
class Selection:
    """The rows of a dataset a job works on (the split part itself, train/valid/test, is
    chosen per read).

    Args:
        split_kind: ``random`` (a hash of ``(example_id, split_seed)``) or ``temporal``.
        split_seed: seed of the random split (``None``: the dataset's own).
        domains: only these domains (``None``: every domain of the data).
        window: only rows with ``lo <= ts < hi`` (either end may be ``None``).
    """

    split_kind: SplitKind = "random"
    split_seed: int | None = None
    domains: tuple[str, ...] | None = None
    window: tuple[int | None, int | None] | None = None

    def __post_init__(self) -> None:
        if self.domains is not None and not isinstance(self.domains, tuple):
            object.__setattr__(self, "domains", tuple(self.domains))

    def with_domains(self, domains: list[str] | tuple[str, ...] | None) -> "Selection":
        return dataclasses.replace(self, domains=None if domains is None else tuple(domains))

    def with_window(self, lo: int | None, hi: int | None) -> "Selection":
        return dataclasses.replace(self, window=(lo, hi))

"""Errors raised for bad input: each renders as one line naming the file and column."""

from __future__ import annotations

from pathlib import Path


class DataContractError(ValueError):
    """A dataset or config breaks the data contract (DESIGN.md §2).

    The message is one line: ``FILE: column 'COL': WHAT (N rows)``, so the CLI can print it
    as-is and exit non-zero.

    >>> str(DataContractError("label has values outside {0, 1}", file="d/part-00000.parquet",
    ...                       column="label", rows=3))
    "d/part-00000.parquet: column 'label': label has values outside {0, 1} (3 rows)"
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        column: str | None = None,
        rows: int | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.column = column
        self.rows = rows
        parts = []
        if self.file:
            parts.append(f"{self.file}:")
        if column:
            parts.append(f"column '{column}':")
        parts.append(message)
        text = " ".join(parts)
        if rows is not None:
            text += f" ({rows} row{'s' if rows != 1 else ''})"
        super().__init__(text)

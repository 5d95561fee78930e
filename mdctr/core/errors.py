"""The project-wide errors. Everything a user can get wrong is an :class:`InputError`.

``mdctr`` prints an :class:`InputError` as one line and exits with status 2; any other
exception is a bug and keeps its traceback (exit 1). Each error renders as one line that
names what was wrong: ``FILE: column 'COL': WHAT (N rows)``.

>>> str(DataContractError("label has values outside {0, 1}", file="d/part-00000.parquet",
...                       column="label", rows=3))
"d/part-00000.parquet: column 'label': label has values outside {0, 1} (3 rows)"
>>> isinstance(ConfigError("x"), InputError), isinstance(RunDirError("x"), ArtifactError)
(True, True)
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input a user can fix: a file, a flag, a config key, an artifact.

    Args:
        message: what is wrong, one line.
        file: the file or directory it is about (printed first).
        column: the column or key within it.
        rows: how many rows are affected.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, column: str | None = None,
                 rows: int | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.column = column
        self.rows = rows
        parts = []
        if self.file:
            parts.append(f"{self.file}:")
        if column:
            parts.append(f"column '{column}':")
        parts.append(" ".join(str(message).split("\n")))
        text = " ".join(parts)
        if rows is not None:
            text += f" ({rows} row{'s' if rows != 1 else ''})"
        super().__init__(text)


class DataContractError(InputError):
    """A dataset breaks the data contract (DESIGN.md §2)."""


class ConfigError(InputError):
    """A config file, a config value or a command-line option is invalid."""


class ArtifactError(InputError):
    """An artifact (run, stage version, adapter, store version) is missing, incomplete,
    of the wrong kind or does not fit what it is used with."""


class RunDirError(ArtifactError):
    """A run directory is not one, is not finished, or cannot be written."""

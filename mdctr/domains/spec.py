"""The dataset spec: what ``dataset.yaml`` holds (DESIGN.md §2).

A dataset is a directory of Parquet files plus ``dataset.yaml``::

    name: movielens-100k-gender
    rows: 100000
    files: [part-00000.parquet]
    fields:
      - {name: user_id, kind: sparse, cardinality: 944}
      - {name: genres, kind: multi_hot, cardinality: 20, max_len: 6}
    domains:
      - {name: F, role: organic, rows: 25740, positives: 13555}
    split:
      random: {seed: 0, train: 0.8, valid: 0.1}
      temporal: {valid_start: 889574400, test_start: 890179200}

``files`` are named relative to the directory and must stay inside it (no absolute
paths, no ``..``).

Cardinality of an id field is ``max raw id + 1``: the platform hashes raw ids into its
tables, so the value sizes a table, it does not bound the ids.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mdctr.core.config import StrictModel, dump_model, load_model
from mdctr.core.errors import DataContractError

SPEC_FILE = "dataset.yaml"
FORMAT_VERSION = 1

#: Columns every dataset has, with their Arrow type names.
BASE_COLUMNS: dict[str, str] = {
    "example_id": "int64",
    "ts": "int64",
    "domain": "string",
    "label": "int8",
}


class FieldKind(str, Enum):
    sparse = "sparse"
    multi_hot = "multi_hot"
    dense = "dense"


class Role(str, Enum):
    organic = "organic"
    ad = "ad"


class FieldSpec(StrictModel):
    name: str
    kind: FieldKind
    #: max raw id + 1, for sparse and multi-hot fields
    cardinality: int | None = Field(default=None, ge=1)
    #: longest list, for multi-hot fields
    max_len: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "FieldSpec":
        if self.name in BASE_COLUMNS:
            raise ValueError(f"field name '{self.name}' is a reserved column")
        if self.kind is not FieldKind.dense and self.cardinality is None:
            raise ValueError(f"field '{self.name}': {self.kind.value} fields need a cardinality")
        return self


class DomainSpec(StrictModel):
    name: str = Field(min_length=1)
    role: Role = Role.organic
    rows: int | None = Field(default=None, ge=0)
    positives: int | None = Field(default=None, ge=0)
    #: AUC of the generating model's own probabilities (synthetic data only)
    bayes_auc: float | None = None


class RandomSplit(StrictModel):
    """Seeded random split: an example's part is a hash of (example_id, seed)."""

    seed: int = 0
    train: float = Field(default=0.8, gt=0, lt=1)
    valid: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self) -> "RandomSplit":
        if self.train + self.valid >= 1:
            raise ValueError("split.random: train + valid must leave a test share (< 1)")
        return self


class TemporalSplit(StrictModel):
    """Time split: ``ts < valid_start`` trains, ``ts >= test_start`` tests, between validates."""

    valid_start: int
    test_start: int

    @model_validator(mode="after")
    def _order(self) -> "TemporalSplit":
        if self.test_start < self.valid_start:
            raise ValueError("split.temporal: test_start must not precede valid_start")
        return self


class SplitSpec(StrictModel):
    random: RandomSplit = RandomSplit()
    temporal: TemporalSplit | None = None


class SourceSpec(StrictModel):
    kind: Literal["movielens-100k", "synthetic", "parquet"]
    origin: str | None = None
    checksums: dict[str, str] = {}
    params: dict[str, str | int | float | bool | None] = {}


class DatasetSpec(StrictModel):
    format_version: int = FORMAT_VERSION
    name: str
    rows: int = Field(ge=0)
    files: list[str] = Field(min_length=1)
    fields: list[FieldSpec] = Field(min_length=1)
    domains: list[DomainSpec] = Field(min_length=1)
    split: SplitSpec = SplitSpec()
    source: SourceSpec
    time_range: tuple[int, int] | None = None
    #: sha256 over the data files, in order
    fingerprint: str | None = None
    notes: dict[str, str | int | float | list[str] | list[int]] = {}

    @field_validator("format_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {v} (this mdctr reads {FORMAT_VERSION})")
        return v

    @field_validator("files")
    @classmethod
    def _inside(cls, files: list[str]) -> list[str]:
        """Data files are named relative to the dataset directory and stay inside it."""
        for name in files:
            p = PurePosixPath(name)
            if (not name or p.is_absolute() or PureWindowsPath(name).drive or ".." in p.parts or "\\" in name):
                raise ValueError(f"data file {name!r} is outside the dataset directory (files are named "
                                 f"relative to it, without '..')")
        return files

    @model_validator(mode="after")
    def _unique(self) -> "DatasetSpec":
        for what, names in (
            ("field", [f.name for f in self.fields]),
            ("domain", [d.name for d in self.domains]),
        ):
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"duplicate {what} '{n}'")
                seen.add(n)
        return self

    # -- views ---------------------------------------------------------------------------
    def fields_of(self, kind: FieldKind) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind is kind]

    @property
    def sparse_fields(self) -> list[FieldSpec]:
        return self.fields_of(FieldKind.sparse)

    @property
    def multi_hot_fields(self) -> list[FieldSpec]:
        return self.fields_of(FieldKind.multi_hot)

    @property
    def dense_fields(self) -> list[FieldSpec]:
        return self.fields_of(FieldKind.dense)

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def domain_index(self, name: str) -> int:
        return self.domain_names.index(name)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def expected_columns(self) -> dict[str, str]:
        """Column name -> Arrow type name the Parquet files must have."""
        cols = dict(BASE_COLUMNS)
        for f in self.fields:
            cols[f.name] = {
                FieldKind.sparse: "int64",
                FieldKind.multi_hot: "list<int64>",
                FieldKind.dense: "float32",
            }[f.kind]
        return cols


def load_spec(directory: str | Path) -> DatasetSpec:
    """Read ``DIR/dataset.yaml``; errors name the file."""
    return load_model(Path(directory) / SPEC_FILE, DatasetSpec, error=DataContractError)


def save_spec(spec: DatasetSpec, directory: str | Path) -> None:
    dump_model(spec, Path(directory) / SPEC_FILE)

"""Write datasets atomically: chunks are checked as they are written, the directory appears
at ``--out`` only when complete, and a failure leaves nothing there."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mdctr.core.errors import DataContractError

from mdctr.domains.spec import DatasetSpec, FieldKind, save_spec
from mdctr.domains.validate import DatasetChecker

ROW_GROUP_ROWS = 256 * 1024


def arrow_type(kind: FieldKind) -> pa.DataType:
    return {
        FieldKind.sparse: pa.int64(),
        FieldKind.multi_hot: pa.list_(pa.int64()),
        FieldKind.dense: pa.float32(),
    }[kind]


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A ``list<int64>`` column from CSR ``offsets`` (n+1, int32/int64) and flat ``values``."""
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32, copy=False)), pa.array(values.astype(np.int64, copy=False))
    )


def build_table(spec: DatasetSpec, columns: dict[str, np.ndarray | pa.Array]) -> pa.Table:
    """Assemble an Arrow table in the spec's column order and types."""
    arrays: dict[str, pa.Array] = {
        "example_id": pa.array(columns["example_id"], pa.int64()),
        "ts": pa.array(columns["ts"], pa.int64()),
        "domain": columns["domain"] if isinstance(columns["domain"], pa.Array)
        else pa.array(columns["domain"], pa.string()),
        "label": pa.array(columns["label"], pa.int8()),
    }
    for f in spec.fields:
        col = columns[f.name]
        arrays[f.name] = col if isinstance(col, pa.Array) else pa.array(col, arrow_type(f.kind))
    return pa.table(arrays)


def file_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class DatasetWriter:
    """Writes checked chunks to ``DIR/part-NNNNN.parquet`` and, on :meth:`close`,
    ``dataset.yaml`` with the counted rows, domain sizes, time range and fingerprint.

    ``spec`` is the dataset's spec without counts; :meth:`close` returns the completed one.
    """

    def __init__(self, directory: Path, spec: DatasetSpec, *, rows_per_file: int = 4 * 1024 * 1024):
        self.directory = Path(directory)
        self.spec = spec
        self.rows_per_file = rows_per_file
        self.checker = DatasetChecker(spec)
        self._files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def _open_next(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"part-{len(self._files):05d}.parquet"
        self._files.append(name)
        self._writer = pq.ParquetWriter(self.directory / name, schema, compression="zstd")
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        current = self._files[-1] if self._files else "part-00000.parquet"
        self.checker.add(table, self.directory / current)
        if self._writer is None or self._rows_in_file >= self.rows_per_file:
            self._open_next(table.schema)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._rows_in_file += table.num_rows

    def close(self) -> DatasetSpec:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.checker.finish(self.directory)
        c = self.checker
        domains = [
            d.model_copy(update={"rows": c.domain_rows.get(d.name, 0),
                                 "positives": c.domain_positives.get(d.name, 0)})
            for d in self.spec.domains
        ]
        paths = [self.directory / f for f in self._files]
        spec = self.spec.model_copy(update={
            "rows": c.rows,
            "files": self._files,
            "domains": domains,
            "time_range": (c.ts_min, c.ts_max),
            "fingerprint": file_fingerprint(paths),
        })
        spec = DatasetSpec.model_validate(spec.model_dump())
        save_spec(spec, self.directory)
        return spec

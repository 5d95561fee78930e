"""Check data against the contract (DESIGN.md §2).

One set of checks serves ``mdctr data validate``, the readers and the writers of
``prepare``/``synth``: :func:`check_table` checks one Arrow table (a file or a chunk),
:class:`DatasetChecker` adds the checks that span files (duplicate ``example_id``, empty
dataset, counts against ``dataset.yaml``); :func:`validate_dataset` also checks the
per-domain row and positive counts and the recorded ``fingerprint`` (SHA-256 of the data
files' bytes, in order) against the files. Every failure is a :class:`DataContractError`
whose message is one line naming the file and column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mdctr.core.errors import DataContractError
from mdctr.domains.spec import DatasetSpec, FieldKind, load_spec

_READ_ROWS = 1 << 20


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_large_string(t) or pa.types.is_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return {"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(t), str(t))


def check_table(table: pa.Table | pa.RecordBatch, spec: DatasetSpec, file: str | Path) -> None:
    """Raise :class:`DataContractError` if ``table`` breaks the contract of ``spec``."""
    names = set(table.schema.names)
    for col, want in spec.expected_columns().items():
        if col not in names:
            raise DataContractError("missing column", file=file, column=col)
        got = _type_name(table.schema.field(col).type)
        if got != want:
            raise DataContractError(f"has type {got}, expected {want}", file=file, column=col)
    for col in spec.expected_columns():
        nulls = table.column(col).null_count
        if nulls:
            raise DataContractError("null values", file=file, column=col, rows=nulls)

    label = table.column("label")
    bad = len(label) - pc.sum(pc.is_in(label, pa.array([0, 1], pa.int8()))).as_py() if len(label) else 0
    if bad:
        raise DataContractError("values outside {0, 1}", file=file, column="label", rows=bad)

    declared = pa.array(spec.domain_names, pa.string())
    domain = table.column("domain")
    unknown = pc.invert(pc.is_in(domain, declared))
    n_unknown = pc.sum(unknown).as_py() or 0
    if n_unknown:
        example = pc.filter(domain, unknown)[0].as_py()
        raise DataContractError(
            f"domain '{example}' is not declared in dataset.yaml", file=file, column="domain",
            rows=n_unknown,
        )

    for f in spec.fields:
        col = table.column(f.name)
        if f.kind is FieldKind.dense:
            values = col.to_numpy()
            n_bad = int(np.count_nonzero(~np.isfinite(values)))
            if n_bad:
                raise DataContractError("NaN or infinite values", file=file, column=f.name, rows=n_bad)
            continue
        if f.kind is FieldKind.multi_hot:
            flat = pc.list_flatten(col)
            if flat.null_count:
                raise DataContractError("null inside a list", file=file, column=f.name,
                                        rows=flat.null_count)
            neg_mask = pc.less(flat, 0)
            if pc.any(neg_mask).as_py():
                parent = pc.list_parent_indices(col)
                neg_rows = len(pc.unique(pc.filter(parent, neg_mask)))
                raise DataContractError("negative ids", file=file, column=f.name, rows=neg_rows)
            continue
        n_neg = pc.sum(pc.less(col, 0)).as_py() or 0
        if n_neg:
            raise DataContractError("negative ids", file=file, column=f.name, rows=n_neg)

    ts = table.column("ts")
    n_neg_ts = pc.sum(pc.less(ts, 0)).as_py() or 0
    if n_neg_ts:
        raise DataContractError("negative timestamps", file=file, column="ts", rows=n_neg_ts)


@dataclass
class DatasetChecker:
    """Accumulates the checks that span files; feed it every table, then :meth:`finish`."""

    spec: DatasetSpec
    rows: int = 0
    _ids: list[np.ndarray] = field(default_factory=list)
    domain_rows: dict[str, int] = field(default_factory=dict)
    domain_positives: dict[str, int] = field(default_factory=dict)
    ts_min: int | None = None
    ts_max: int | None = None

    def add(self, table: pa.Table | pa.RecordBatch, file: str | Path) -> None:
        check_table(table, self.spec, file)
        n = table.num_rows
        if n == 0:
            return
        self.rows += n
        self._ids.append(table.column("example_id").to_numpy())
        counts = pc.value_counts(table.column("domain"))
        for item in counts.to_pylist():
            self.domain_rows[item["values"]] = self.domain_rows.get(item["values"], 0) + item["counts"]
        positives = pa.table(
            {"domain": table.column("domain"), "label": pc.cast(table.column("label"), pa.int64())}
        ).group_by("domain").aggregate([("label", "sum")])
        for d, s in zip(positives.column("domain").to_pylist(), positives.column("label_sum").to_pylist()):
            self.domain_positives[d] = self.domain_positives.get(d, 0) + s
        lo, hi = pc.min_max(table.column("ts")).values()
        self.ts_min = lo.as_py() if self.ts_min is None else min(self.ts_min, lo.as_py())
        self.ts_max = hi.as_py() if self.ts_max is None else max(self.ts_max, hi.as_py())

    def finish(self, where: str | Path) -> None:
        if self.rows == 0:
            raise DataContractError("empty dataset: no rows in any data file", file=where)
        ids = np.sort(np.concatenate(self._ids))
        dup = ids[1:] == ids[:-1]
        n_dup = int(np.count_nonzero(dup))
        if n_dup:
            first = int(ids[1:][dup][0])
            raise DataContractError(
                f"duplicate example_id (first: {first})", file=where, column="example_id", rows=n_dup
            )
        self._ids = [ids]


def iter_file_batches(path: Path, columns: list[str] | None = None, batch_rows: int = _READ_ROWS):
    """Record batches of one Parquet file, ``batch_rows`` at a time."""
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataContractError("data file listed in dataset.yaml is missing", file=path) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataContractError(f"not a readable Parquet file ({exc})", file=path) from None
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def validate_dataset(directory: str | Path) -> tuple[DatasetSpec, DatasetChecker]:
    """Check every file of a dataset directory; return its spec and what was counted.

    Raises :class:`DataContractError` on the first problem.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataContractError("not a dataset directory", file=directory)
    spec = load_spec(directory)
    checker = DatasetChecker(spec)
    for name in spec.files:
        path = directory / name
        saw_any = False
        for batch in iter_file_batches(path):
            saw_any = True
            checker.add(batch, path)
        if not saw_any:  # a file with no row groups still has to have the right schema
            checker.add(pq.read_table(path), path)
    checker.finish(directory)
    if checker.rows != spec.rows:
        raise DataContractError(
            f"dataset.yaml says rows: {spec.rows}, the data files hold {checker.rows}",
            file=directory / "dataset.yaml",
        )
    for d in spec.domains:
        for what, recorded, counted in (("rows", d.rows, checker.domain_rows),
                                        ("positives", d.positives, checker.domain_positives)):
            if recorded is not None and counted.get(d.name, 0) != recorded:
                raise DataContractError(
                    f"domain '{d.name}': dataset.yaml says {what}: {recorded}, "
                    f"the data files hold {counted.get(d.name, 0)}",
                    file=directory / "dataset.yaml",
                )
    if spec.fingerprint is not None:
        got = data_fingerprint([directory / name for name in spec.files])
        if got != spec.fingerprint:
            raise DataContractError(
                f"fingerprint: dataset.yaml says {spec.fingerprint[:16]}..., the data files hash to {got[:16]}... "
                f"(the files changed after dataset.yaml was written)",
                file=directory / "dataset.yaml",
            )
    return spec, checker


def data_fingerprint(paths: list[Path]) -> str:
    """SHA-256 over the bytes of the data files, in order (what the dataset writer records
    as ``fingerprint``)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()

"""Bad input: every break of the data contract is one DataContractError naming file and column.

Each case starts from a valid small synthetic dataset (sparse, multi-hot ``tags``, dense
``dense_0``/``dense_1``, extra id field ``city``), rewrites a Parquet file or dataset.yaml
with the problem injected, and checks the error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from mdctr.core.errors import DataContractError
from mdctr.domains.spec import load_spec
from mdctr.domains.validate import validate_dataset
from mdctr.core.io import atomic_dir
from mdctr.domains.writer import DatasetWriter

PART = "part-00000.parquet"


def set_column(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), pa.field(name, arr.type), arr)


def edit_rows(t: pa.Table, name: str, rows: list[int], value) -> pa.Table:
    """Column ``name`` with ``value`` written into ``rows`` (as Python objects)."""
    col = t.column(name).to_pylist()
    for r in rows:
        col[r] = value(col[r]) if callable(value) else value
    return set_column(t, name, pa.array(col, t.schema.field(name).type))


def rewrite(directory: Path, fn: Callable[[pa.Table], pa.Table], name: str = PART) -> Path:
    path = directory / name
    pq.write_table(fn(pq.read_table(path)), path)
    return path


def edit_yaml(directory: Path, fn: Callable[[dict], None]) -> None:
    path = directory / "dataset.yaml"
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def check_error(info: pytest.ExceptionInfo, file: Path, column: str | None, rows: int | None, match: str):
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    assert err.file == str(file) and msg.startswith(f"{file}: ")
    if column is not None:
        assert err.column == column and f"column '{column}'" in msg
    if rows is not None:
        assert err.rows == rows and msg.endswith(f"({rows} row{'s' if rows != 1 else ''})")
    assert match in msg


def test_valid_dataset_passes(small_synth_dir, small_synth_cfg):
    spec, checker = validate_dataset(small_synth_dir)
    assert spec.rows == checker.rows == small_synth_cfg.rows
    assert checker.domain_rows == {d.name: d.rows for d in spec.domains}
    assert checker.domain_positives == {d.name: d.positives for d in spec.domains}
    assert (checker.ts_min, checker.ts_max) == spec.time_range


BAD_TABLES = [
    # id, column, injected problem, rows affected (None: not counted), message fragment
    ("missing-column", "item_id", lambda t: t.drop_columns(["item_id"]), None, "missing column"),
    ("wrong-dtype-sparse", "user_id", lambda t: set_column(t, "user_id", pc.cast(t.column("user_id"), pa.int32())),
     None, "has type int32, expected int64"),
    ("wrong-dtype-label", "label", lambda t: set_column(t, "label", pc.cast(t.column("label"), pa.int64())),
     None, "has type int64, expected int8"),
    ("wrong-dtype-dense", "dense_0", lambda t: set_column(t, "dense_0", pc.cast(t.column("dense_0"), pa.float64())),
     None, "has type float64, expected float32"),
    ("wrong-dtype-multi-hot", "tags",
     lambda t: set_column(t, "tags", pc.cast(t.column("tags"), pa.list_(pa.int32()))),
     None, "has type list<int32>, expected list<int64>"),
    ("null-label", "label", lambda t: edit_rows(t, "label", [0, 17, 2999], None), 3, "null values"),
    ("label-not-binary", "label", lambda t: edit_rows(t, "label", [1, 2, 3, 400], 2), 4, "values outside {0, 1}"),
    ("nan-dense", "dense_1", lambda t: edit_rows(t, "dense_1", [5, 6], float("nan")), 2, "NaN or infinite"),
    ("inf-dense", "dense_0", lambda t: edit_rows(t, "dense_0", [2500], float("-inf")), 1, "NaN or infinite"),
    ("negative-sparse-id", "city", lambda t: edit_rows(t, "city", [0, 10, 20, 30, 40], -1), 5, "negative ids"),
    ("negative-id-in-list", "tags", lambda t: edit_rows(t, "tags", [7, 1999], lambda v: v + [-3]), 2,
     "negative ids"),
    ("null-in-list", "tags", lambda t: edit_rows(t, "tags", [8], lambda v: [None] + v), 1, "null inside a list"),
    ("undeclared-domain", "domain", lambda t: edit_rows(t, "domain", list(range(100, 107)), "zz"), 7,
     "domain 'zz' is not declared in dataset.yaml"),
    ("negative-ts", "ts", lambda t: edit_rows(t, "ts", [3], -10), 1, "negative timestamps"),
]


@pytest.mark.parametrize("column, inject, rows, match", [c[1:] for c in BAD_TABLES], ids=[c[0] for c in BAD_TABLES])
def test_bad_table(small_synth_dir, copy_dataset, column, inject, rows, match):
    d = copy_dataset(small_synth_dir)
    path = rewrite(d, inject)
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, path, column, rows, match)


def test_duplicate_example_id_across_files(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    t = pq.read_table(d / PART)
    first, second = t.slice(0, 1500), t.slice(1500)
    ids = second.column("example_id").to_numpy().copy()
    ids[[0, 10, 20, 30, 40]] = [0, 1, 2, 3, 4]  # ids already used in the first file
    second = set_column(second, "example_id", pa.array(ids, pa.int64()))
    pq.write_table(first, d / PART)
    pq.write_table(second, d / "part-00001.parquet")
    edit_yaml(d, lambda y: y.update(files=[PART, "part-00001.parquet"]))
    # each file alone is fine
    assert len(np.unique(first.column("example_id"))) == 1500 and len(np.unique(ids)) == 1500
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d, "example_id", 5, "duplicate example_id (first: 0)")


def test_duplicate_example_id_within_file(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    rewrite(d, lambda t: edit_rows(t, "example_id", [2998, 2999], 42))
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d, "example_id", 2, "duplicate example_id (first: 42)")


def test_empty_dataset(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    rewrite(d, lambda t: t.slice(0, 0))

    def zero(y: dict) -> None:
        y["rows"] = 0
        for dom in y["domains"]:
            dom.update(rows=0, positives=0)

    edit_yaml(d, zero)
    assert pq.read_metadata(d / PART).num_rows == 0
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d, None, None, "empty dataset: no rows in any data file")


def test_empty_file_with_wrong_schema(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    path = rewrite(d, lambda t: t.slice(0, 0).drop_columns(["dense_1"]))
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, path, "dense_1", None, "missing column")


def test_row_count_mismatch(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    rewrite(d, lambda t: t.slice(0, 2990))
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None, "dataset.yaml says rows: 3000, the data files hold 2990")


def test_domain_count_mismatch(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    spec = load_spec(d)
    edit_yaml(d, lambda y: y["domains"][0].update(rows=spec.domains[0].rows + 1))
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None,
                f"domain '{spec.domains[0].name}': dataset.yaml says rows: {spec.domains[0].rows + 1}")


def test_missing_and_unreadable_data_file(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    (d / PART).unlink()
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / PART, None, None, "data file listed in dataset.yaml is missing")
    (d / PART).write_bytes(b"this is not parquet")
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / PART, None, None, "not a readable Parquet file")


@pytest.mark.parametrize("text, match", [
    ("name: [unclosed\nrows: 3\n", "malformed YAML at line"),
    ("name: a\n  rows: : 3\n", "malformed YAML"),
    ("just a string\n", "expected a mapping at the top level, got str"),
], ids=["unclosed-list", "bad-indent", "not-a-mapping"])
def test_malformed_dataset_yaml(small_synth_dir, copy_dataset, text, match):
    d = copy_dataset(small_synth_dir)
    (d / "dataset.yaml").write_text(text)
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None, match)


@pytest.mark.parametrize("edit, match", [
    (lambda y: y.update(colour="red"), "unknown key 'colour'"),
    (lambda y: y["fields"][0].update(size=3), "unknown key 'fields.0.size'"),
    (lambda y: y["split"]["random"].update(sede=1), "unknown key 'split.random.sede'"),
    (lambda y: y.pop("source"), "missing key 'source'"),
    (lambda y: y["fields"][1].update(kind="sparce"), "'fields.1.kind'"),
    (lambda y: y["domains"][0].update(role="banner"), "'domains.0.role'"),
    (lambda y: y.update(format_version=2), "unsupported format_version 2"),
    (lambda y: y["domains"][1].update(name=y["domains"][0]["name"]), "duplicate domain"),
    (lambda y: y["fields"][0].pop("cardinality"), "need a cardinality"),
    (lambda y: y["fields"][0].update(name="label"), "reserved column"),
], ids=["unknown-top", "unknown-field-key", "unknown-split-key", "missing-source", "bad-kind", "bad-role",
        "format-version", "duplicate-domain", "no-cardinality", "reserved-name"])
def test_bad_dataset_yaml_content(small_synth_dir, copy_dataset, edit, match):
    d = copy_dataset(small_synth_dir)
    edit_yaml(d, edit)
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None, match)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataContractError) as info:
        validate_dataset(tmp_path / "nope")
    check_error(info, tmp_path / "nope", None, None, "not a dataset directory")
    with pytest.raises(DataContractError) as info:
        validate_dataset(tmp_path)
    check_error(info, tmp_path / "dataset.yaml", None, None, "file not found")


def test_writer_rejects_bad_chunk_and_leaves_nothing(tmp_path, small_synth_dir):
    """The writers check every chunk: a bad one aborts and ``--out`` never appears."""
    spec = load_spec(small_synth_dir)
    good = pq.read_table(small_synth_dir / PART)
    bad = edit_rows(good.slice(1000, 1000), "label", [3], 5)
    out = tmp_path / "out"
    with pytest.raises(DataContractError) as info:
        with atomic_dir(out) as tmp:
            writer = DatasetWriter(tmp, spec)
            writer.write(good.slice(0, 1000))
            writer.write(bad)
    assert info.value.column == "label" and info.value.rows == 1
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_existing_output_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    # an empty existing directory may be written without --overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "x").write_text("x")
    assert [p.name for p in empty.iterdir()] == ["x"]


# -- data files stay inside the dataset; counts and fingerprint match the files ----------------------


@pytest.mark.parametrize("entry", ["../outside/part-00000.parquet", "ABS", "sub/../../outside/part-00000.parquet",
                                   "..", ""], ids=["parent", "absolute", "dotdot-inside", "parent-dir", "empty"])
def test_data_files_outside_the_dataset_are_refused(small_synth_dir, copy_dataset, tmp_path, entry):
    d = copy_dataset(small_synth_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (d / PART).rename(outside / PART)  # a valid file: only its place is wrong
    entry = entry.replace("ABS", str(outside / PART))
    edit_yaml(d, lambda y: y.update(files=[entry]))
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None,
                f"'files': data file {entry!r} is outside the dataset directory")
    with pytest.raises(DataContractError, match="outside the dataset directory"):
        load_spec(d)  # every reader of dataset.yaml refuses it


def test_data_files_in_a_subdirectory_are_fine(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    (d / "parts").mkdir()
    (d / PART).rename(d / "parts" / PART)
    edit_yaml(d, lambda y: y.update(files=[f"parts/{PART}"]))
    assert validate_dataset(d)[0].files == [f"parts/{PART}"]


def _flip_labels(t: pa.Table, domain: str, up: int, down: int) -> pa.Table:
    """Flip ``up`` negatives to positives and ``down`` positives to negatives in ``domain``."""
    label = t.column("label").to_numpy().copy()
    dom = np.asarray(t.column("domain").to_pylist())
    neg, pos = np.flatnonzero((dom == domain) & (label == 0)), np.flatnonzero((dom == domain) & (label == 1))
    label[neg[:up]], label[pos[:down]] = 1, 0
    return set_column(t, "label", pa.array(label, pa.int8()))


def _rewrite_same_rows(d: Path) -> None:
    pq.write_table(pq.read_table(d / PART), d / PART, compression="gzip")


CHANGED = [
    # id, change (dataset dir, first domain name), expected message (name: first domain, spec: the original)
    ("one-label-flipped", lambda d, name: rewrite(d, lambda t: _flip_labels(t, name, 1, 0)),
     lambda name, spec: f"domain '{name}': dataset.yaml says positives: {spec.domains[0].positives}, "
                        f"the data files hold {spec.domains[0].positives + 1}"),
    ("labels-swapped", lambda d, name: rewrite(d, lambda t: _flip_labels(t, name, 3, 3)),
     lambda name, spec: f"fingerprint: dataset.yaml says {spec.fingerprint[:16]}..."),
    ("same-rows-rewritten", lambda d, name: _rewrite_same_rows(d),
     lambda name, spec: "the files changed after dataset.yaml was written"),
    ("yaml-positives", lambda d, name: edit_yaml(d, lambda y: y["domains"][0].update(positives=0)),
     lambda name, spec: f"domain '{name}': dataset.yaml says positives: 0, the data files hold "
                        f"{spec.domains[0].positives}"),
    ("yaml-fingerprint", lambda d, name: edit_yaml(d, lambda y: y.update(fingerprint="0" * 64)),
     lambda name, spec: "fingerprint: dataset.yaml says 0000000000000000..., the data files hash to "
                        f"{spec.fingerprint[:16]}..."),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in CHANGED], ids=[c[0] for c in CHANGED])
def test_data_changed_after_dataset_yaml_was_written(small_synth_dir, copy_dataset, change, message):
    d = copy_dataset(small_synth_dir)
    spec = load_spec(d)
    change(d, spec.domains[0].name)
    with pytest.raises(DataContractError) as info:
        validate_dataset(d)
    check_error(info, d / "dataset.yaml", None, None, message(spec.domains[0].name, spec))


def test_a_dataset_without_a_fingerprint_is_checked_by_counts_only(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    edit_yaml(d, lambda y: y.pop("fingerprint"))
    _rewrite_same_rows(d)
    assert validate_dataset(d)[0].fingerprint is None


def test_fingerprint_is_the_writers(small_synth_dir):
    from mdctr.domains.validate import data_fingerprint
    from mdctr.domains.writer import file_fingerprint

    spec = load_spec(small_synth_dir)
    paths = [small_synth_dir / f for f in spec.files]
    assert data_fingerprint(paths) == file_fingerprint(paths) == spec.fingerprint


def test_cli_validate_of_changed_labels_is_one_line(small_synth_dir, copy_dataset, capsys):
    from mdctr.cli import main

    d = copy_dataset(small_synth_dir)
    name = load_spec(d).domains[0].name
    rewrite(d, lambda t: _flip_labels(t, name, 2, 2))
    assert main(["data", "validate", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mdctr: error: {d / 'dataset.yaml'}: fingerprint: ")

"""Train/valid/test splits (random by hash, temporal) and the id -> table-row map."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mdctr.domains.batching import DatasetReader
from mdctr.core.errors import DataContractError
from mdctr.domains.ids import table_rows
from mdctr.domains.selection import Selection
from mdctr.domains.spec import DatasetSpec, RandomSplit, TemporalSplit
from mdctr.domains.splits import (
    TEST, TRAIN, VALID, random_parts, splitmix64, temporal_parts, unit_hash,
)

N = 100_000


def ids_of(reader: DatasetReader, split, selection: Selection | None = None) -> np.ndarray:
    return np.concatenate([b.example_id.numpy() for b in reader.batches(split, selection, batch_size=8192,
                                                                       shuffle=False)])


# -- hashing -----------------------------------------------------------------------------

def test_splitmix64_reference_values():
    # SplitMix64 (Vigna) seeded with 0 outputs 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, ...
    # splitmix64(x) is the output for state x, i.e. for seed 0 the k-th output is at x = k * golden
    golden = 0x9E3779B97F4A7C15
    out = splitmix64(np.array([0, golden, 2 * golden % 2**64], dtype=np.uint64))
    assert [hex(int(v)) for v in out] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4", "0x6c45d188009454f"]


def test_unit_hash_uniform():
    u = unit_hash(np.arange(N), seed=5)
    assert u.min() >= 0 and u.max() < 1
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(hist - N / 10) < 0.05 * N / 10)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbouring ids are unrelated
    np.testing.assert_array_equal(u, unit_hash(np.arange(N), seed=5))


# -- random split on MovieLens ---------------------------------------------------------------

def test_random_fractions(ml_gender_df, ml_gender_spec):
    ids = ml_gender_df["example_id"].to_numpy()
    for seed in (0, 1, 2):
        parts = random_parts(ids, ml_gender_spec.split.random, seed)
        fr = [float((parts == p).mean()) for p in (TRAIN, VALID, TEST)]
        assert fr == pytest.approx([0.8, 0.1, 0.1], abs=0.01), seed
        assert set(np.unique(parts).tolist()) == {TRAIN, VALID, TEST}


def test_random_fractions_follow_spec():
    parts = random_parts(np.arange(N), RandomSplit(seed=0, train=0.6, valid=0.3))
    fr = [float((parts == p).mean()) for p in (TRAIN, VALID, TEST)]
    assert fr == pytest.approx([0.6, 0.3, 0.1], abs=0.01)


def test_random_seed_changes_split(ml_gender_df, ml_gender_spec):
    ids = ml_gender_df["example_id"].to_numpy()
    rs = ml_gender_spec.split.random
    a, b = random_parts(ids, rs, 0) == TRAIN, random_parts(ids, rs, 1) == TRAIN
    np.testing.assert_array_equal(a, random_parts(ids, rs, 0) == TRAIN)  # same seed, same split
    np.testing.assert_array_equal(random_parts(ids, rs), random_parts(ids, rs, rs.seed))
    assert (a != b).sum() > 10_000
    # independent seeds: P(train under both) = 0.8 * 0.8
    assert (a & b).mean() == pytest.approx(0.64, abs=0.01)


def test_reader_uses_recorded_seed(ml_prepare):
    d0, d7 = ml_prepare("gender", 0), ml_prepare("gender", 7)
    r0, r7 = DatasetReader(d0), DatasetReader(d7)
    all_ids = np.arange(N)
    want7 = np.flatnonzero(random_parts(all_ids, RandomSplit(seed=7)) == TRAIN)
    got7 = np.sort(ids_of(r7, "train"))
    np.testing.assert_array_equal(got7, want7)
    # --split-seed 7 at prepare time == split_seed=7 at read time
    np.testing.assert_array_equal(np.sort(ids_of(r0, "train", Selection(split_seed=7))), want7)
    assert not np.array_equal(np.sort(ids_of(r0, "train")), want7)


def test_parts_disjoint_and_cover(ml_gender_dir):
    reader = DatasetReader(ml_gender_dir)
    parts = {s: ids_of(reader, s) for s in ("train", "valid", "test")}
    sizes = {s: len(v) for s, v in parts.items()}
    for s, v in parts.items():
        assert len(np.unique(v)) == len(v), s
        assert reader.num_rows(s) == len(v)
    assert sum(sizes.values()) == N
    union = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(union), np.arange(N))
    assert len(np.intersect1d(parts["train"], parts["valid"])) == 0
    assert len(np.intersect1d(parts["train"], parts["test"])) == 0
    assert len(np.intersect1d(parts["valid"], parts["test"])) == 0
    assert reader.num_rows(None) == N


# -- temporal split ----------------------------------------------------------------------

def test_temporal_split_order(ml_gender_dir, ml_gender_spec, ml_gender_df):
    t = ml_gender_spec.split.temporal
    reader = DatasetReader(ml_gender_dir)
    ts = {}
    for s in ("train", "valid", "test"):
        ids = ids_of(reader, s, Selection(split_kind="temporal"))
        ts[s] = ml_gender_df.loc[ids, "ts"].to_numpy()
        assert len(ts[s]) > 1000, s
    assert ts["train"].max() < t.valid_start <= ts["valid"].min()
    assert ts["valid"].max() < t.test_start <= ts["test"].min()
    assert sum(len(v) for v in ts.values()) == N
    # the same as the pure function on the column
    parts = temporal_parts(ml_gender_df["ts"].to_numpy(), t)
    assert [(parts == p).sum() for p in (TRAIN, VALID, TEST)] == [len(ts[s]) for s in ("train", "valid", "test")]


def test_temporal_parts_boundaries():
    split = TemporalSplit(valid_start=100, test_start=200)
    parts = temporal_parts(np.array([0, 99, 100, 150, 199, 200, 10_000]), split)
    assert parts.tolist() == [TRAIN, TRAIN, VALID, VALID, VALID, TEST, TEST]


def test_temporal_split_missing(small_synth_dir, copy_dataset):
    d = copy_dataset(small_synth_dir)
    data = yaml.safe_load((d / "dataset.yaml").read_text())
    del data["split"]["temporal"]
    (d / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(DataContractError, match="no temporal split"):
        next(DatasetReader(d).batches("train", Selection(split_kind="temporal")))


def test_split_spec_validation():
    with pytest.raises(ValueError, match="train \\+ valid"):
        RandomSplit(train=0.9, valid=0.1)
    with pytest.raises(ValueError, match="test_start must not precede"):
        TemporalSplit(valid_start=10, test_start=5)
    with pytest.raises(ValueError):
        RandomSplit(train=0.0)
    assert DatasetSpec.model_fields["split"].default.random == RandomSplit(seed=0, train=0.8, valid=0.1)


# -- id -> table row ----------------------------------------------------------------------

def test_table_rows():
    n = 1000
    small = np.arange(n)
    np.testing.assert_array_equal(table_rows(small, n), small)  # ids below n never move
    big = np.arange(n, n + 200_000, dtype=np.int64)
    rows = table_rows(big, n)
    assert rows.min() >= 0 and rows.max() < n
    counts = np.bincount(rows, minlength=n)
    assert counts.min() > 100 and counts.max() < 300  # ~200 each: spread uniformly
    # depends only on (id, n): the same id maps the same way alone or among others
    assert table_rows(np.array([n + 12345]), n)[0] == rows[12345]
    np.testing.assert_array_equal(table_rows(np.array([0, 5, 9, 10, 1_000_003]), 10), [0, 5, 9, 6, 4])
    with pytest.raises(ValueError):
        table_rows(small, 0)

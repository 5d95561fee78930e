"""Batching into TorchRec KeyedJaggedTensors: coverage, contents, shuffling, sharding, filters."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mdctr.domains.batching import Batch, DatasetReader, prefetch
from mdctr.core.errors import DataContractError
from mdctr.domains.ids import table_rows
from mdctr.domains.selection import Selection
from mdctr.domains.sources import GENRES
from mdctr.domains.splits import TRAIN, random_parts

SPARSE = ["user_id", "item_id", "age", "occupation", "gender", "zip_prefix", "release_year"]
BS = 4096


def jagged_rows(kjt: KeyedJaggedTensor, key: str) -> list[list[int]]:
    jt = kjt[key]
    off = jt.offsets().tolist()
    vals = jt.values().tolist()
    return [vals[off[i]:off[i + 1]] for i in range(len(off) - 1)]


def all_ids(batches) -> np.ndarray:
    return np.concatenate([b.example_id.numpy() for b in batches])


@pytest.fixture(scope="module")
def reader(ml_gender_dir) -> DatasetReader:
    return DatasetReader(ml_gender_dir)


@pytest.fixture(scope="module")
def train_ids(ml_gender_spec) -> np.ndarray:
    """The train part of the gender split, computed from the hash split directly."""
    ids = np.arange(ml_gender_spec.rows)
    return np.flatnonzero(random_parts(ids, ml_gender_spec.split.random) == TRAIN)


@pytest.fixture(scope="module")
def epoch0(reader) -> list[Batch]:
    return list(reader.batches("train", batch_size=BS, seed=0, epoch=0))


# -- one epoch ---------------------------------------------------------------------------------

def test_epoch_yields_every_train_row_once(epoch0, train_ids, reader):
    ids = all_ids(epoch0)
    assert len(ids) == len(train_ids) == reader.num_rows("train")
    np.testing.assert_array_equal(np.sort(ids), train_ids)
    n = len(train_ids)
    assert [len(b) for b in epoch0] == [BS] * (n // BS) + [n % BS]


def test_batch_shapes(epoch0, reader):
    for b in epoch0:
        n = len(b)
        assert isinstance(b.sparse, KeyedJaggedTensor)
        assert b.sparse.keys() == SPARSE + ["genres"] == reader.keys
        assert b.sparse.stride() == n
        assert b.dense.shape == (n, 0) and b.dense.dtype == torch.float32
        assert b.labels.shape == (n,) and b.labels.dtype == torch.float32
        assert b.domain.shape == (n,) and b.domain.dtype == torch.int64
        assert b.example_id.dtype == torch.int64
        lengths = b.sparse.length_per_key()
        assert lengths[:7] == [n] * 7  # single-valued fields: one value per row
        for key in SPARSE:
            assert torch.all(b.sparse[key].lengths() == 1), key
        g = b.sparse["genres"].lengths()
        assert int(g.min()) >= 1 and int(g.max()) <= 6 and int(g.sum()) == lengths[7]


def test_batch_contents_match_parquet(epoch0, ml_gender_df):
    df = ml_gender_df
    for b in epoch0[:3] + epoch0[-1:]:
        ids = b.example_id.numpy()
        rows = df.loc[ids]
        np.testing.assert_array_equal(b.labels.numpy(), rows["label"].to_numpy().astype(np.float32))
        np.testing.assert_array_equal(b.domain.numpy(), (rows["domain"] == "M").to_numpy().astype(np.int64))
        for key in SPARSE:  # cardinality = max id + 1, so table rows are the raw ids
            np.testing.assert_array_equal(b.sparse[key].values().numpy(), rows[key].to_numpy(), err_msg=key)
        assert jagged_rows(b.sparse, "genres") == [list(g) for g in rows["genres"]]


def test_genres_match_source_items(epoch0, ml_raw):
    items = ml_raw.items.set_index("item_id")["genres"]
    b = epoch0[1]
    item_ids = b.sparse["item_id"].values().tolist()
    got = jagged_rows(b.sparse, "genres")
    for k in range(0, len(b), 37):
        assert [GENRES[j] for j in got[k]] == items[item_ids[k]], k


# -- shuffling ---------------------------------------------------------------------------------

def test_shuffle_orders(reader, epoch0, train_ids):
    ids0 = all_ids(epoch0)
    again = all_ids(reader.batches("train", batch_size=BS, seed=0, epoch=0))
    np.testing.assert_array_equal(ids0, again)  # same seed and epoch: same order
    ids1 = all_ids(reader.batches("train", batch_size=BS, seed=0, epoch=1))
    other_seed = all_ids(reader.batches("train", batch_size=BS, seed=1, epoch=0))
    for ids in (ids1, other_seed):
        np.testing.assert_array_equal(np.sort(ids), train_ids)
        assert (ids != ids0).mean() > 0.99
    # a dataset within one chunk is fully shuffled: no trace of file order
    assert abs(np.corrcoef(np.arange(len(ids0)), ids0)[0, 1]) < 0.02
    plain = all_ids(reader.batches("train", batch_size=BS, shuffle=False))
    np.testing.assert_array_equal(plain, train_ids)  # file order


def test_same_seed_same_batches(reader, epoch0):
    again = list(reader.batches("train", batch_size=BS, seed=0, epoch=0))
    for a, b in zip(epoch0, again, strict=True):
        assert torch.equal(a.sparse.values(), b.sparse.values())
        assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
        assert torch.equal(a.labels, b.labels) and torch.equal(a.domain, b.domain)


# -- sharding and drop_last ----------------------------------------------------------------------

@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_two_ranks(reader, train_ids, drop_last):
    ranks = [list(reader.batches("train", batch_size=BS, rank=r, world_size=2, seed=3, epoch=2,
                                 drop_last=drop_last)) for r in (0, 1)]
    n = len(train_ids)
    full = n // (2 * BS)
    assert len(ranks[0]) == len(ranks[1]) == full + (0 if drop_last else 1)
    for r in ranks:
        assert [len(b) for b in r[:full]] == [BS] * full
    ids = [all_ids(r) for r in ranks]
    assert len(np.intersect1d(ids[0], ids[1])) == 0
    union = np.sort(np.concatenate(ids))
    if drop_last:
        assert len(union) == full * 2 * BS
        assert np.isin(union, train_ids).all()
    else:
        np.testing.assert_array_equal(union, train_ids)
        tail = n - full * 2 * BS
        assert sorted([len(ranks[0][-1]), len(ranks[1][-1])]) == [tail // 2, tail - tail // 2]
    # rank 0 and 1 take alternating halves of the single-process order
    single = all_ids(reader.batches("train", batch_size=2 * BS, seed=3, epoch=2))
    np.testing.assert_array_equal(ranks[0][0].example_id.numpy(), single[:BS])
    np.testing.assert_array_equal(ranks[1][0].example_id.numpy(), single[BS:2 * BS])


def test_drop_last(reader, train_ids):
    n = len(train_ids)
    kept = list(reader.batches("train", batch_size=BS, drop_last=True))
    assert [len(b) for b in kept] == [BS] * (n // BS)
    assert len(np.unique(all_ids(kept))) == n // BS * BS
    assert n % BS != 0  # otherwise this test would not test anything


def test_bad_arguments(reader):
    with pytest.raises(ValueError, match="batch_size"):
        next(reader.batches("train", batch_size=0))
    with pytest.raises(ValueError, match="rank"):
        next(reader.batches("train", rank=2, world_size=2))
    with pytest.raises(DataContractError, match="domain 'X' is not declared"):
        next(reader.batches("train", Selection(domains=("F", "X"))))
    with pytest.raises(DataContractError, match="table_sizes names fields the dataset lacks"):
        DatasetReader(reader.directory, table_sizes={"colour": 4})


# -- filters -------------------------------------------------------------------------------------

def test_domain_filter(reader, train_ids, ml_gender_df):
    batches = list(reader.batches("train", Selection(domains=("F",)), batch_size=BS))
    ids = all_ids(batches)
    assert all(torch.all(b.domain == 0) for b in batches)  # F is domain 0
    want = train_ids[ml_gender_df.loc[train_ids, "domain"].to_numpy() == "F"]
    np.testing.assert_array_equal(np.sort(ids), want)
    assert 0.2 < len(want) / len(train_ids) < 0.3
    assert reader.num_rows("train", Selection(domains=("F",))) == len(want)
    both = all_ids(reader.batches("train", Selection(domains=("M", "F")), batch_size=BS))
    np.testing.assert_array_equal(np.sort(both), train_ids)


def test_selections_of_a_small_dataset_read_each_row_group_once(ml_gender_dir, ml_gender_df, monkeypatch):
    import pyarrow.parquet as pq

    reads = []
    real = pq.ParquetFile.read_row_group

    def counted(self, g, *args, **kwargs):
        reads.append(g)
        return real(self, g, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    fresh = DatasetReader(ml_gender_dir)
    groups = len(fresh._row_groups)
    selections = [("train", None), ("valid", None), ("test", Selection(domains=("F",))), (None, None)]
    got = [all_ids(fresh.batches(split, sel, batch_size=BS, shuffle=False)) for split, sel in selections]
    assert len(reads) == groups  # once, whatever the split or domains
    # and the rows are those a reader without the cache selects
    uncached = DatasetReader(ml_gender_dir, cache_rows=0)
    for (split, sel), ids in zip(selections, got):
        np.testing.assert_array_equal(ids, all_ids(uncached.batches(split, sel, batch_size=BS, shuffle=False)))
    assert len(reads) == groups + len(selections) * groups  # the uncached one reads for each selection


def test_ts_range_filter(reader, ml_gender_df):
    lo, hi = 880_000_000, 885_000_000
    batches = list(reader.batches(None, Selection(window=(lo, hi)), batch_size=BS))
    ids = np.sort(all_ids(batches))
    ts = ml_gender_df["ts"].to_numpy()
    want = np.flatnonzero((ts >= lo) & (ts < hi))
    np.testing.assert_array_equal(ids, want)
    assert 10_000 < len(want) < 90_000
    open_lo = all_ids(reader.batches(None, Selection(window=(None, hi)), batch_size=BS))
    assert len(open_lo) == int((ts < hi).sum())
    open_hi = all_ids(reader.batches(None, Selection(window=(lo, None)), batch_size=BS))
    assert len(open_hi) == int((ts >= lo).sum())
    assert reader.num_rows(None, Selection(window=(lo, hi))) == len(want)
    assert list(reader.batches(None, Selection(window=(0, 1)))) == []


def test_table_sizes(ml_gender_dir, ml_gender_df):
    sizes = {"user_id": 100, "item_id": 50, "zip_prefix": 7}
    r = DatasetReader(ml_gender_dir, table_sizes=sizes)
    assert r.table_sizes["user_id"] == 100 and r.table_sizes["age"] == 7
    b = next(r.batches("train", batch_size=BS, seed=5))
    rows = ml_gender_df.loc[b.example_id.numpy()]
    for key, n in sizes.items():
        got = b.sparse[key].values().numpy()
        assert got.min() >= 0 and got.max() < n
        np.testing.assert_array_equal(got, table_rows(rows[key].to_numpy(), n), err_msg=key)
        assert len(np.unique(got)) > n // 2  # spread over the table
    # ids below the table size keep their value
    small = rows["user_id"].to_numpy() < 100
    np.testing.assert_array_equal(b.sparse["user_id"].values().numpy()[small], rows["user_id"].to_numpy()[small])
    # genres table of 5 rows: the multi-hot values are mapped too
    r5 = DatasetReader(ml_gender_dir, table_sizes={"genres": 5})
    b5 = next(r5.batches("train", batch_size=256, shuffle=False))
    want = [table_rows(np.array(g, dtype=np.int64), 5).tolist() for g in ml_gender_df.loc[b5.example_id.numpy(), "genres"]]
    assert jagged_rows(b5.sparse, "genres") == want


# -- many row groups: chunked reading and dense features -----------------------------------------

def test_multi_chunk_reading(small_synth_dir, small_synth_cfg):
    import pyarrow.parquet as pq

    spec_rows = small_synth_cfg.rows
    t = pq.read_table(small_synth_dir / "part-00000.parquet").to_pandas().set_index("example_id", drop=False)
    assert pq.ParquetFile(small_synth_dir / "part-00000.parquet").metadata.num_row_groups == 3
    r = DatasetReader(small_synth_dir, chunk_rows=1000)  # one row group per chunk
    want = np.flatnonzero(random_parts(np.arange(spec_rows), r.spec.split.random) == TRAIN)
    epochs = []
    for epoch in (0, 1):
        batches = list(r.batches("train", batch_size=700, seed=0, epoch=epoch))
        ids = all_ids(batches)
        np.testing.assert_array_equal(np.sort(ids), want)
        assert [len(b) for b in batches[:-1]] == [700] * (len(batches) - 1)  # batches span chunks
        epochs.append(ids)
        for b in batches[:2]:
            rows = t.loc[b.example_id.numpy()]
            assert b.sparse.keys() == ["user_id", "item_id", "category", "city", "tags"]
            np.testing.assert_array_equal(b.dense.numpy(), rows[["dense_0", "dense_1"]].to_numpy())
            assert jagged_rows(b.sparse, "tags") == [list(x) for x in rows["tags"]]
            np.testing.assert_array_equal(b.sparse["city"].values().numpy(), rows["city"].to_numpy())
            np.testing.assert_array_equal(b.labels.numpy(), rows["label"].to_numpy().astype(np.float32))
            names = [d.name for d in r.spec.domains]
            assert [names[i] for i in b.domain.tolist()] == rows["domain"].tolist()
    assert (epochs[0] != epochs[1]).mean() > 0.9
    # block shuffle: a chunk's rows stay together (one row group = 1000 consecutive ids)
    first = epochs[0][:500] // 1000
    assert len(np.unique(first)) == 1
    plain = all_ids(r.batches("train", batch_size=700, shuffle=False))
    np.testing.assert_array_equal(plain, want)


# -- prefetch ----------------------------------------------------------------------------------------

def test_prefetch_same_batches(reader, epoch0):
    got = list(prefetch(reader.batches("train", batch_size=BS, seed=0, epoch=0), depth=3))
    assert len(got) == len(epoch0)
    for a, b in zip(epoch0, got):
        assert torch.equal(a.example_id, b.example_id)
        assert torch.equal(a.sparse.values(), b.sparse.values())
        assert torch.equal(a.labels, b.labels)
    zero = list(prefetch(reader.batches("train", batch_size=BS, seed=0, epoch=0), depth=0))
    np.testing.assert_array_equal(all_ids(zero), all_ids(epoch0))


def test_prefetch_propagates_errors(epoch0):
    class Boom(RuntimeError):
        pass

    def producer():
        yield epoch0[0]
        yield epoch0[1]
        raise Boom("producer failed")

    seen = []
    with pytest.raises(Boom, match="producer failed"):
        for b in prefetch(producer(), depth=2):
            seen.append(b)
    assert [s is e for s, e in zip(seen, epoch0[:2])] == [True, True] and len(seen) == 2


def test_prefetch_stops_when_consumer_stops(epoch0):
    produced = []

    def producer():
        for b in epoch0 * 10:
            produced.append(b)
            yield b

    before = set(threading.enumerate())
    gen = prefetch(producer(), depth=2)
    assert next(gen) is epoch0[0]
    mine = [t for t in threading.enumerate() if t not in before and t.name == "mdctr-prefetch"]
    assert len(mine) == 1
    gen.close()
    mine[0].join(timeout=5)
    assert not mine[0].is_alive()
    assert len(produced) <= 5  # stopped early, not after the 10 epochs


# -- the decoded-row cache and the background reader ---------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_do_not_alias_the_cache(ml_gender_dir, shuffle):
    """A consumer that edits a batch in place must not change what later epochs read."""
    r = DatasetReader(ml_gender_dir)
    assert r._cacheable
    want = [(b.labels.clone(), b.domain.clone(), b.example_id.clone())
            for b in r.batches("train", batch_size=BS, shuffle=shuffle, epoch=0)]
    for b in r.batches("train", batch_size=BS, shuffle=shuffle, epoch=0):
        b.labels.fill_(7)
        b.domain.fill_(9)
        b.example_id.fill_(-1)
        b.dense.fill_(3)
    again = list(r.batches("train", batch_size=BS, shuffle=shuffle, epoch=0))
    assert len(again) == len(want)
    for b, (labels, domain, eid) in zip(again, want):
        assert torch.equal(b.labels, labels) and torch.equal(b.domain, domain)
        assert torch.equal(b.example_id, eid)


def test_cache_and_background_do_not_change_batches(small_synth_dir):
    def run(reader, sel=None, **kw):
        out = []
        for epoch in (0, 1):
            for b in reader.batches("train", sel, batch_size=300, seed=1, epoch=epoch, **kw):
                out.append((b.example_id.clone(), b.sparse.values().clone(), b.dense.clone()))
        return out

    plain = DatasetReader(small_synth_dir, chunk_rows=1000, cache_rows=0, background=False)
    fancy = DatasetReader(small_synth_dir, chunk_rows=1000)
    assert not plain._cacheable and fancy._cacheable
    for kw in ({}, {"shuffle": False}, {"sel": Selection(domains=("d1", "ad0"))},
               {"sel": Selection(window=(None, plain.spec.time_range[0] + 86_400 * 10))}):
        a, b = run(plain, **kw), run(fancy, **kw)
        assert len(a) == len(b) > 0, kw
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y)), kw
    assert len(fancy._cache) > 0 and plain._cache == {}


def test_batch_to(epoch0):
    b = epoch0[0].to("cpu")
    assert len(b) == BS and torch.equal(b.example_id, epoch0[0].example_id)
    assert b.sparse.keys() == epoch0[0].sparse.keys()

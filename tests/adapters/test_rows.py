"""Own rows (mdctr.adapters.rows): lookup, pooling, routing and which rows are cold."""

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor, PoolingType

from mdctr.adapters.rows import DomainRows, rows_delta, find_cold_rows
from mdctr.platform.model import FeatureLayout, SeededUniformInit


def module():
    m = DomainRows({"user": torch.tensor([2, 5, 9]), "tags": torch.tensor([1, 3])}, dim=2,
                 mean={"user": False, "tags": True})
    with torch.no_grad():
        m.weight["user"].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
        m.weight["tags"].copy_(torch.tensor([[4.0, 4.0], [8.0, 0.0]]))
    return m


def test_pooled_rows_sum_or_mean_over_the_bag_and_only_for_kept_examples():
    m = module()
    # user: one id per example; 7 is not a cold row
    got = m.pooled("user", torch.tensor([5, 7, 9]), torch.tensor([1, 1, 1]), keep=None)
    assert torch.equal(got, torch.tensor([[0.0, 1.0], [0.0, 0.0], [2.0, 2.0]]))
    got = m.pooled("user", torch.tensor([5, 7, 9]), torch.tensor([1, 1, 1]), keep=torch.tensor([True, True, False]))
    assert torch.equal(got, torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    # tags (mean pooling): bags [1, 3, 6], [], [3]
    got = m.pooled("tags", torch.tensor([1, 3, 6, 3]), torch.tensor([3, 0, 1]), keep=None)
    assert torch.allclose(got, torch.tensor([[12.0 / 3, 4.0 / 3], [0.0, 0.0], [8.0, 0.0]]))


def test_delta_lands_in_the_fields_columns_for_the_domains_rows_only():
    m = module()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "tags"], values=torch.tensor([2, 9, 3, 1]),
                                              lengths=torch.tensor([1, 1, 1, 1]))
    delta = rows_delta({"new": m}, ["old", "new"], ["tags", "user"], 2, kjt, torch.tensor([1, 0]), single=None)
    # row 0 is domain "new": user 2 -> [1, 0] in columns 2:4, tag 3 -> [8, 0] in 0:2; row 1 untouched
    assert torch.equal(delta, torch.tensor([[8.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert rows_delta({"new": m}, ["old", "new"], ["tags", "user"], 2, kjt, torch.tensor([0, 0]), single=0) is None
    m.merged = True  # folded into the tables: adds nothing
    assert rows_delta({"new": m}, ["old", "new"], ["tags", "user"], 2, kjt, torch.tensor([1, 1]), single=1) is None


def test_one_lookup_over_every_field_equals_pooling_each_field_per_domain():
    g = torch.Generator().manual_seed(0)
    mean = {"user": False, "item": False, "tags": True}
    mods = {d: DomainRows({"user": torch.randperm(50, generator=g)[:20].sort().values,
                           "tags": torch.randperm(30, generator=g)[:10].sort().values}, dim=3, mean=mean)
            for d in ("a", "c")}
    mods["c"] = DomainRows({"item": torch.arange(0, 40, 3)}, dim=3, mean=mean)  # another field set
    for m in mods.values():
        for w in m.weight.values():
            w.data.normal_(generator=g)
    b = 16
    lengths = {"user": torch.ones(b, dtype=torch.long), "item": torch.ones(b, dtype=torch.long),
               "tags": torch.randint(0, 4, (b,), generator=g)}
    values = {"user": torch.randint(0, 50, (b,), generator=g), "item": torch.randint(0, 40, (b,), generator=g),
              "tags": torch.randint(0, 30, (int(lengths["tags"].sum()),), generator=g)}
    kjt_keys = ["tags", "user", "item"]  # the batch's key order differs from the model's
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=kjt_keys, values=torch.cat([values[k] for k in kjt_keys]),
                                              lengths=torch.cat([lengths[k] for k in kjt_keys]))
    keys, names = ["user", "item", "tags", "extra"], ["a", "b", "c"]
    domain = torch.randint(0, 3, (b,), generator=g)
    got = rows_delta(mods, names, keys, 3, kjt, domain, single=None)
    want = torch.zeros(b, len(keys) * 3)
    for d, m in mods.items():
        for f in m.fields:
            i = keys.index(f)
            want[:, i * 3:(i + 1) * 3] += m.pooled(f, values[f], lengths[f], keep=domain == names.index(d))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got[:, 9:].abs().sum() == 0 and got[domain == 1].abs().sum() == 0  # "extra" and domain "b": nothing
    with torch.no_grad():  # rows changed in place (e.g. a state dict loaded into them): codes follow
        mods["c"].rows("item").add_(1)
    want_c = mods["c"].pooled("item", values["item"], lengths["item"], keep=None)
    only_c = rows_delta(mods, names, keys, 3, kjt, torch.full((b,), 2), single=2)
    torch.testing.assert_close(only_c[:, 3:6], want_c)
    assert only_c[:, :3].abs().sum() == 0 and only_c[:, 6:].abs().sum() == 0


def test_cold_rows_are_the_seen_rows_still_at_their_seeded_init():
    layout = FeatureLayout(["user"], {"user": 10}, {"user": PoolingType.SUM}, 0, ["a"])
    init = SeededUniformInit(7, "t_user", 10, 4)(torch.empty(10, 4))
    trained = init.clone()
    trained[[1, 4]] += 0.5  # rows the backbone trained
    cold = find_cold_rows({"user": trained}, layout, 7, {"user": np.array([1, 2, 4, 8])})
    assert cold["user"].tolist() == [2, 8]
    # another seed's init does not match: nothing is declared cold
    assert find_cold_rows({"user": trained}, layout, 8, {"user": np.array([1, 2, 4, 8])}) == {}


def test_rows_must_be_sorted_and_unique():
    with pytest.raises(ValueError, match="sorted and unique"):
        DomainRows({"user": torch.tensor([3, 1])}, dim=2, mean={"user": False})


def random_lookup(seed, n_rows=300, n_bags=700, dim=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(2000, generator=g)[:n_rows].sort().values
    vecs = torch.randn(n_rows, dim, generator=g, dtype=dtype)
    lengths = torch.randint(0, 4, (n_bags,), generator=g)  # empty bags too
    values = torch.randint(0, 2000, (int(lengths.sum()),), generator=g)  # most ids miss
    values[::3] = rows[torch.randint(0, n_rows, (len(values[::3]),), generator=g)]
    keep = torch.rand(n_bags, generator=g) < 0.7
    return rows, vecs, values, lengths, keep


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_keep", [False, True])
def test_compiled_own_rows_give_pool_rows_bits_and_gradients(seed, with_keep):
    from mdctr.core import native
    from mdctr.adapters.rows import pool_own_rows, pool_rows

    assert native.status() == "compiled"
    rows, vecs, values, lengths, keep = random_lookup(seed)
    keep = keep if with_keep else None
    a, b = vecs.clone().requires_grad_(), vecs.clone().requires_grad_()
    got = pool_own_rows(rows, a, values, lengths, keep)
    want = pool_rows(rows, b, values, lengths, keep if keep is not None else torch.ones_like(lengths, dtype=torch.bool),
                     False)
    assert torch.equal(got, want)
    assert got.abs().sum() > 0 and (want == 0).all(dim=1).any()  # hits and empty/missed/unkept bags
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed))
    got.backward(upstream)
    want.backward(upstream)
    assert torch.equal(a.grad, b.grad)


def test_compiled_own_rows_pass_gradcheck():
    from mdctr.adapters.rows import pool_own_rows

    rows, vecs, values, lengths, keep = random_lookup(3, n_rows=20, n_bags=30, dim=3, dtype=torch.float64)
    vecs.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: pool_own_rows(rows, v, values, lengths, keep), (vecs,))


def test_compiled_own_rows_reject_lengths_that_do_not_cover_the_values():
    from mdctr.adapters.rows import pool_own_rows

    rows, vecs, values, lengths, _ = random_lookup(4)
    with pytest.raises(RuntimeError, match="lengths must sum"):
        pool_own_rows(rows, vecs, values[:-1], lengths, None)

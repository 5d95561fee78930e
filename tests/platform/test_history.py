"""Snapshot history as a tower input: the join, the pooling, unknown ids."""

from __future__ import annotations

import numpy as np
import torch

from mdctr.domains.batching import Batch
from mdctr.platform.history import HistoryPooling, HistorySpec, SnapshotJoin
from mdctr.platform.stores.embeddings import EmbeddingStore


def _batch(users, items, dense_dim=2) -> Batch:
    b = len(users)
    return Batch(sparse=None, dense=torch.arange(b * dense_dim, dtype=torch.float32).view(b, dense_dim),
                 labels=torch.zeros(b), domain=torch.zeros(b, dtype=torch.long), example_id=torch.arange(b),
                 extra={"user_id": torch.tensor(users), "item_id": torch.tensor(items)})


def test_join_places_the_newest_snapshot_last_and_marks_unknown_ids(tmp_path):
    store = EmbeddingStore(tmp_path)
    for m, month in enumerate(["1997-11", "1997-12"]):
        store.write(month, {"user": (np.array([1, 2]), np.full((2, 4), m + 1.0)),
                            "item": (np.array([7]), np.full((1, 4), 10.0 + m))})
    spec = HistorySpec({"user": "user_id", "item": "item_id"}, k=3, dim=4)
    batch = _batch([1, 9], [7, 7])
    out = SnapshotJoin(store, ["1997-11", "1997-12"], spec)(batch)
    # named model inputs; the data's dense features are untouched
    assert set(out.inputs) == {"history.user.vectors", "history.user.found", "history.item.vectors",
                               "history.item.found"}
    assert out.dense is batch.dense and not batch.inputs
    user, user_found = out.inputs["history.user.vectors"], out.inputs["history.user.found"]
    assert user.shape == (2, 3, 4) and user_found.shape == (2, 3)
    torch.testing.assert_close(user[0, :, 0], torch.tensor([0.0, 1.0, 2.0]))  # empty slot, Nov, Dec
    torch.testing.assert_close(user_found, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))  # user 9 unknown
    item = out.inputs["history.item.vectors"]
    torch.testing.assert_close(item[1, :, 0], torch.tensor([0.0, 10.0, 11.0]))


def test_pooling_uses_the_learned_default_for_missing_vectors():
    torch.manual_seed(0)
    pool = HistoryPooling(k=3, dim=4, heads=2)
    with torch.no_grad():
        pool.default.copy_(torch.tensor([1.0, -1.0, 0.5, 2.0]))
    vectors = torch.randn(2, 3, 4)
    none = torch.zeros(2, 3)
    # with nothing found, the vectors' values do not matter: every row pools the default
    a, b = pool(vectors, none), pool(torch.randn(2, 3, 4) * 100, none)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], a[1])
    # found vectors do matter, and gradients reach the default through unknown slots
    found = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = pool(vectors, found)
    assert not torch.allclose(out[0], a[0])
    out.sum().backward()
    assert pool.default.grad.abs().sum() > 0 and pool.slot.grad.abs().sum() > 0

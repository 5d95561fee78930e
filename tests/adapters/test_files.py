"""Adapter files are untrusted input: checksummed, structurally checked, finite."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mdctr.adapters.files import META, WEIGHTS, read_adapter, save_adapter
from mdctr.core.errors import ArtifactError
from mdctr.platform.safe_dcp import file_digest


def _tensors(rank: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"tower.mlp.layers.0.lora_A": torch.randn(6, rank), "tower.mlp.layers.0.lora_B": torch.randn(rank, 4),
            "tower.mlp.layers.0.lora_bias": torch.randn(4), "rows.item_id.ids": torch.tensor([1, 5, 9]),
            "rows.item_id.weight": torch.randn(3, 8)}


META_FIELDS = {"domain": "F", "rank": {"tower.mlp.layers.0": 2}, "base_run_id": "r", "base_fingerprint": "fp"}


@pytest.fixture
def adapter(tmp_path):
    out = tmp_path / "adapter"
    save_adapter(out, _tensors(), dict(META_FIELDS))
    return out


def test_round_trip_records_the_weights_checksum(adapter):
    tensors, meta = read_adapter(adapter)
    assert meta["weights"] == {"bytes": (adapter / WEIGHTS).stat().st_size, "sha256": file_digest(adapter / WEIGHTS)}
    for k, v in _tensors().items():
        torch.testing.assert_close(tensors[k], v)


def _rewrite_weights(adapter, tensors, domain="F"):
    """What someone editing the files by hand does: new weights, checksum updated to match."""
    save_file(tensors, str(adapter / WEIGHTS), metadata={"domain": domain, "format": "mdctr-adapter/1"})
    meta = json.loads((adapter / META).read_text())
    meta["weights"] = {"bytes": (adapter / WEIGHTS).stat().st_size, "sha256": file_digest(adapter / WEIGHTS)}
    (adapter / META).write_text(json.dumps(meta))


def _edit_meta(adapter, **changes):
    meta = json.loads((adapter / META).read_text())
    meta.update(changes)
    (adapter / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (lambda a: (a / WEIGHTS).write_bytes((a / WEIGHTS).read_bytes()[:-3] + b"xyz"), "weights are corrupt"),
    (lambda a: _edit_meta(a, domain="M"), "names domain 'M' but the weights are domain 'F'"),
    (lambda a: _edit_meta(a, rank={"tower.mlp.layers.0": 3}), "do not have rank 3"),
    (lambda a: _edit_meta(a, rank={"tower.mlp.layers.1": 2}), "adapter layers"),
    (lambda a: _edit_meta(a, weights=None), "no valid 'weights'"),
    (lambda a: _edit_meta(a, format="other/9"), "unknown adapter format"),
    (lambda a: (a / META).write_text("{not json"), "unreadable adapter metadata"),
    (lambda a: _rewrite_weights(a, {**_tensors(), "tower.mlp.layers.0.lora_B": torch.full((2, 4), float("nan"))}),
     "non-finite values"),
    (lambda a: _rewrite_weights(a, {**_tensors(), "rows.item_id.ids": torch.tensor([-4, 5, 9])}),
     "sorted non-negative ids"),
    (lambda a: _rewrite_weights(a, {**_tensors(), "rows.item_id.ids": torch.tensor([1, 5])}),
     "one vector each"),
    (lambda a: _rewrite_weights(a, {**_tensors(), "extra.thing": torch.zeros(1)}), "unknown adapter tensor"),
    (lambda a: (a / WEIGHTS).unlink(), "not an adapter directory"),
])
def test_damaged_or_inconsistent_adapters_are_refused(adapter, damage, message):
    damage(adapter)
    with pytest.raises(ArtifactError, match=message) as err:
        read_adapter(adapter)
    assert "\n" not in str(err.value) and str(adapter) in str(err.value)


def test_saving_refuses_what_reading_would(tmp_path):
    with pytest.raises(ArtifactError, match="non-finite"):
        save_adapter(tmp_path / "a", {**_tensors(), "tower.mlp.layers.0.lora_bias": torch.tensor([0, 1, float("inf"), 0])},
                     dict(META_FIELDS))
    assert not (tmp_path / "a").exists()

"""Adapter files: ``adapter.safetensors`` (weights) + ``adapter.json`` (where they belong).

``adapter.json``::

    {"format": "mdctr-adapter/1", "domain": "M", "rank": {"tower.mlp.layers.0": 32, ...},
     "alpha": 8, "layer_shapes": {"tower.mlp.layers.0": [144, 256], ...},
     "base_run_id": "...", "base_fingerprint": "...", "parameters": 18816,
     "parameter_share": 0.128, "metrics": {...}}

An adapter loads only onto the backbone it was trained on: the base run's id and
fingerprint must match (as PEFT's adapter config names its base model, and FuxiCTR refuses
a ``dataset_id`` mismatch).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdctr.core.errors import ArtifactError, DataContractError
from mdctr.platform.run import run_identity
from mdctr.core.io import atomic_dir

FORMAT = "mdctr-adapter/1"
WEIGHTS, META = "adapter.safetensors", "adapter.json"


def backbone_identity(run_dir: str | Path) -> dict[str, str]:
    """The run id and fingerprint (config + data + best epoch) of a run's backbone."""
    ident = run_identity(run_dir)
    return {"base_run_id": ident["run_id"], "base_fingerprint": ident["fingerprint"]}


def save_adapter(out: str | Path, tensors: dict[str, torch.Tensor], meta: dict, *, overwrite: bool = False) -> None:
    """Write both files into ``out`` atomically (temp dir, then rename)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"domain": meta["domain"], "format": FORMAT})
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / META
    if not meta_path.exists() or not (adapter_dir / WEIGHTS).exists():
        raise DataContractError(f"not an adapter directory (needs {WEIGHTS} and {META})", file=adapter_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"unreadable adapter metadata ({exc.__class__.__name__})", file=meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise DataContractError(f"unknown adapter format {fmt!r}", file=meta_path)
    try:
        tensors = load_file(str(adapter_dir / WEIGHTS))
    except SafetensorError as exc:
        raise ArtifactError(f"unreadable adapter weights ({exc})", file=adapter_dir / WEIGHTS) from None
    return tensors, meta


def check_backbone(meta: dict, run_dir: str | Path, adapter_dir: str | Path) -> None:
    """Refuse an adapter trained on another backbone."""
    want = backbone_identity(run_dir)
    for key in ("base_run_id", "base_fingerprint"):
        if meta.get(key) != want[key]:
            raise DataContractError(
                f"adapter for domain '{meta.get('domain')}' was trained on backbone {meta.get(key)!r}, "
                f"not on {run_dir} ({want[key]!r})", file=Path(adapter_dir) / META)

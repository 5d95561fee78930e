"""Adapter files: ``adapter.safetensors`` (weights) + ``adapter.json`` (where they belong).

``adapter.json``::

    {"format": "mdctr-adapter/1", "domain": "M", "rank": {"tower.mlp.layers.0": 32, ...},
     "alpha": 8, "layer_shapes": {"tower.mlp.layers.0": [144, 256], ...},
     "base_run_id": "...", "base_fingerprint": "...", "parameters": 18816,
     "parameter_share": 0.128, "metrics": {...}}

An adapter loads only onto the backbone it was trained on: the base run's id and
fingerprint must match (as PEFT's adapter config names its base model, and FuxiCTR refuses
a ``dataset_id`` mismatch). ``adapter.json`` records the weights file's size and SHA-256
(``weights``), checked on read; the metadata and the tensors must agree (domain, layers,
ranks, own-row ids), and every weight must be finite.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mdctr.core.errors import ArtifactError
from mdctr.core.io import atomic_dir
from mdctr.platform.run import run_identity
from mdctr.platform.safe_dcp import file_digest

FORMAT = "mdctr-adapter/1"
WEIGHTS, META = "adapter.safetensors", "adapter.json"


def backbone_identity(run_dir: str | Path) -> dict[str, str]:
    """The run id and fingerprint (config + data + best epoch) of a run's backbone."""
    ident = run_identity(run_dir)
    return {"base_run_id": ident["run_id"], "base_fingerprint": ident["fingerprint"]}


def save_adapter(out: str | Path, tensors: dict[str, torch.Tensor], meta: dict, *, overwrite: bool = False) -> None:
    """Write both files into ``out`` atomically (temp dir, then rename)."""
    check_tensors(tensors, meta, Path(out) / WEIGHTS)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"domain": meta["domain"], "format": FORMAT})
        weights = {"bytes": (tmp / WEIGHTS).stat().st_size, "sha256": file_digest(tmp / WEIGHTS)}
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta, "weights": weights}, indent=2) + "\n")


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter's tensors and metadata, checked: format, checksum, structure, finite."""
    adapter_dir = Path(adapter_dir)
    meta_path, weights_path = adapter_dir / META, adapter_dir / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise ArtifactError(f"not an adapter directory (needs {WEIGHTS} and {META})", file=adapter_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"unreadable adapter metadata ({exc.__class__.__name__})", file=meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"unknown adapter format {fmt!r}", file=meta_path)
    for key, kind in (("domain", str), ("rank", dict), ("base_run_id", str), ("base_fingerprint", str),
                      ("weights", dict)):
        if not isinstance(meta.get(key), kind):
            raise ArtifactError(f"adapter metadata has no valid '{key}'", file=meta_path)
    want = meta["weights"]
    if weights_path.stat().st_size != want.get("bytes") or file_digest(weights_path) != want.get("sha256"):
        raise ArtifactError("adapter weights are corrupt (their SHA-256 differs from adapter.json)", file=weights_path)
    try:
        with safe_open(str(weights_path), "pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(weights_path))
    except SafetensorError as exc:
        raise ArtifactError(f"unreadable adapter weights ({exc})", file=weights_path) from None
    if header.get("domain") != meta["domain"]:
        raise ArtifactError(f"adapter.json names domain '{meta['domain']}' but the weights are domain "
                            f"'{header.get('domain')}'s", file=meta_path)
    check_tensors(tensors, meta, weights_path)
    return tensors, meta


def check_tensors(tensors: dict[str, torch.Tensor], meta: dict, where: Path) -> None:
    """The tensors are what the metadata says: one (A, B, bias) triple per layer of
    ``meta["rank"]`` with that rank, own rows as sorted non-negative ids with one vector
    each, every value finite."""
    layers = {k.rsplit(".", 1)[0] for k in tensors if k.endswith((".lora_A", ".lora_B", ".lora_bias"))}
    if layers != set(meta["rank"]):
        raise ArtifactError(f"adapter layers {sorted(layers)} differ from adapter.json's {sorted(meta['rank'])}",
                            file=where)
    for layer, r in meta["rank"].items():
        a, b, bias = (tensors.get(f"{layer}.{part}") for part in ("lora_A", "lora_B", "lora_bias"))
        if a is None or b is None or bias is None or a.dim() != 2 or b.dim() != 2 or bias.dim() != 1 \
                or a.shape[1] != r or b.shape[0] != r or b.shape[1] != bias.shape[0]:
            raise ArtifactError(f"adapter tensors of layer {layer} do not have rank {r}", file=where)
    rows = {k for k in tensors if k.startswith("rows.")}
    for key in rows:
        if not key.endswith((".ids", ".weight")) or ({key[:-4] + ".weight", key[:-4] + ".ids"} if key.endswith(".ids")
                                                      else {key[:-7] + ".ids"}) - rows:
            raise ArtifactError(f"adapter own-rows entry '{key}' has no partner", file=where)
        if key.endswith(".ids"):
            ids, vecs = tensors[key], tensors[key[:-4] + ".weight"]
            if ids.dim() != 1 or vecs.dim() != 2 or len(ids) != len(vecs) or (ids.numel() and (
                    int(ids.min()) < 0 or not bool((ids[1:] > ids[:-1]).all()))):
                raise ArtifactError(f"adapter own rows '{key}' are not sorted non-negative ids with one vector each",
                                    file=where)
    unknown = set(tensors) - rows - {f"{layer}.{p}" for layer in layers for p in ("lora_A", "lora_B", "lora_bias")}
    if unknown:
        raise ArtifactError(f"unknown adapter tensor '{sorted(unknown)[0]}'", file=where)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ArtifactError(f"adapter tensor '{bad}' has non-finite values", file=where)


def check_backbone(meta: dict, run_dir: str | Path, adapter_dir: str | Path) -> None:
    """Refuse an adapter trained on another backbone."""
    want = backbone_identity(run_dir)
    for key in ("base_run_id", "base_fingerprint"):
        if meta.get(key) != want[key]:
            raise ArtifactError(
                f"adapter for domain '{meta.get('domain')}' was trained on backbone {meta.get(key)!r}, "
                f"not on {run_dir} ({want[key]!r})", file=Path(adapter_dir) / META)

"""Inference artifacts that load without mdctr: TorchScript + a JSON sidecar.

``mdctr adapters export --run RUN [--domain NAME] --out DIR`` writes ``DIR/model.pt``
(``torch.jit.load`` it anywhere torch runs) and ``DIR/model.json`` (input layout). RUN is
any run directory or pipeline stage version. The scripted module takes the batch in
TorchRec's key-major jagged layout::

    forward(values: int64 (sum of lengths,), lengths: int64 (F * B,), dense: float32 (B, D),
            domain: int64 (B,)) -> logits (B,)

E-CDCTR models (stage versions with TPM snapshot history) also take the user's and item's
last K snapshot vectors, as ``SnapshotJoin`` looks them up (``model.json["history"]``)::

    forward(values, lengths, dense, domain, history_vectors: float32 (B, E, K, D),
            history_found: float32 (B, E, K)) -> logits (B,)

keys in ``model.json["keys"]`` order, raw ids (mapped to table rows inside the module by
mdctr's rule: ``id`` if ``id < rows`` else ``splitmix64(id) % rows``), domain indices into
``model.json["domains"]``. A single-domain artifact has that domain's adapter merged into
the weights (``domain`` is then ignored); an all-domain artifact keeps every adapter and
routes each row by its domain with a masked low-rank product (no Python loop). Adapters'
own embedding rows (:mod:`mdctr.adapters.rows`) are folded into the tables of a single-domain
artifact and looked up per row of their domain in an all-domain one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from mdctr.adapters.files import check_backbone, read_adapter
from mdctr.adapters.model import domain_rows_of
from mdctr.adapters.rows import pool_rows
from mdctr.adapters.run import AdapterRunDir
from mdctr.core.errors import ArtifactError, ConfigError
from mdctr.core.io import atomic_dir, check_output
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.history import HistoryPooling, HistorySpec
from mdctr.platform.model import FeatureLayout, table_entry, tower_options
from mdctr.platform.towers import MLP, build_tower

def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift (1 <= k < 63) of int64 bit patterns."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def table_rows(ids: torch.Tensor, n: int) -> torch.Tensor:
    """mdctr's id -> row map (:func:`mdctr.domains.ids.table_rows`) in scriptable torch ops.

    splitmix64 on int64 bit patterns (multiplication wraps like uint64's); constants are the
    uint64 ones written as int64.
    """
    z = ids + (-7046029254386353131)  # 0x9E3779B97F4A7C15
    z = (z ^ _srl(z, 30)) * (-4658895280553007687)  # 0xBF58476D1CE4E5B9
    z = (z ^ _srl(z, 27)) * (-7723592293110705685)  # 0x94D049BB133111EB
    z = z ^ _srl(z, 31)
    # unsigned z mod n, with z's bit pattern held in an int64: 2**63 mod n added when the top bit is set
    low = (z & 9223372036854775807) % n
    top = ((4611686018427387904 % n) * 2) % n
    high = torch.where(z < 0, torch.full_like(z, top), torch.zeros_like(z))
    hashed = (low + high) % n
    return torch.where(ids < n, ids, hashed)


class RoutedLinear(nn.Module):
    """Linear + every domain's adapter, routed per row: ``x W^T + b + ((x A) * mask_d) B + b_d``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 bias_d: torch.Tensor, lora_rank: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.a, self.b, self.bias_d = nn.Parameter(a), nn.Parameter(b), nn.Parameter(bias_d)  # (in, D*r), (D*r, out), (D, out)
        self.lora_rank = lora_rank

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = x @ self.a  # (B, D*r)
        block = torch.arange(h.shape[1], device=x.device) // self.lora_rank
        h = h * (block.unsqueeze(0) == domain.unsqueeze(1)).to(h.dtype)
        return nn.functional.linear(x, self.weight, self.bias) + h @ self.b + self.bias_d[domain]


class RoutedMLP(nn.Module):
    def __init__(self, mlp: MLP, layers: list[RoutedLinear]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.act, self.dropout, self.head = mlp.act, nn.Identity(), mlp.head

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.act(layer(x, domain))
        return self.head(x).squeeze(-1)


class InferenceModel(nn.Module):
    """``rows``: (key index, domain index, sorted rows, vectors) of adapters' own embedding rows
    (:mod:`mdctr.adapters.rows`), added to that domain's pooled embeddings. ``pools``: one
    :class:`~mdctr.platform.history.HistoryPooling` per snapshot-history entity (E-CDCTR
    models), fed by ``history_vectors`` (B, E, K, D) and ``history_found`` (B, E, K)."""

    def __init__(self, layout: FeatureLayout, tables: list[torch.Tensor], tower: nn.Module,
                 routed: RoutedMLP | None, modes: list[str],
                 rows: list[tuple[int, int, torch.Tensor, torch.Tensor]] = (),
                 pools: list[HistoryPooling] = ()):
        super().__init__()
        self.pools = nn.ModuleList(pools)
        # typed for TorchScript, which cannot infer the element type of an empty list
        self.row_key = torch.jit.Attribute([c[0] for c in rows], List[int])
        self.row_domain = torch.jit.Attribute([c[1] for c in rows], List[int])
        self.row_ids = torch.jit.Attribute([c[2] for c in rows], List[torch.Tensor])
        self.row_vecs = torch.jit.Attribute([c[3] for c in rows], List[torch.Tensor])
        self.mean = torch.jit.Attribute([m == "mean" for m in modes], List[bool])
        self.keys = list(layout.keys)
        self.rows = [layout.rows[k] for k in self.keys]
        self.bags = nn.ModuleList(nn.EmbeddingBag.from_pretrained(t, freeze=True, mode=m)
                                  for t, m in zip(tables, modes))
        self.tower = tower
        self.routed = routed
        self.dense_dim = layout.dense_dim
        self.num_fields = len(self.keys)
        self.dim = tables[0].shape[1]

    def _rows(self, j: int, i: int, ids: torch.Tensor, lengths: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return pool_rows(self.row_ids[j], self.row_vecs[j], ids, lengths, domain == self.row_domain[j],
                            self.mean[i])

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor,
                history_vectors: Optional[torch.Tensor] = None,
                history_found: Optional[torch.Tensor] = None) -> torch.Tensor:
        b = domain.shape[0]
        lengths = lengths.view(self.num_fields, b)
        per_key = lengths.sum(1)
        pooled: list[torch.Tensor] = []
        start = 0
        for i, bag in enumerate(self.bags):
            n = int(per_key[i])
            ids = table_rows(values[start:start + n], self.rows[i])
            offsets = torch.cumsum(lengths[i], 0) - lengths[i]
            out = bag(ids, offsets)
            for j in range(len(self.row_key)):
                if self.row_key[j] == i and ids.numel() > 0:
                    out = out + self._rows(j, i, ids, lengths[i], domain)
            pooled.append(out)
            start += n
        emb = torch.cat(pooled, dim=1)
        parts = [emb, dense] if self.dense_dim > 0 else [emb]
        if len(self.pools) > 0:
            if history_vectors is None or history_found is None:
                raise ValueError("this model needs history_vectors (B, E, K, D) and history_found (B, E, K)")
            for e, pool in enumerate(self.pools):
                parts.append(pool(history_vectors[:, e], history_found[:, e]))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else emb
        if self.routed is not None:
            return self.routed(x, domain)
        return self.tower(x, emb.view(b, self.num_fields, self.dim))


def _adapter_weights(state: dict, extra: list[tuple[dict, dict]], domains: list[str]) -> dict:
    """``{layer: {domain: (A, B, b)}}`` from the run's checkpoint and external adapters."""
    out: dict = {}
    for key, value in state.items():
        if ".lora_A." in key:
            layer, domain = key.split(".lora_A.")
            out.setdefault(layer, {})[domain] = (value, state[f"{layer}.lora_B.{domain}"],
                                                 state[f"{layer}.lora_bias.{domain}"])
    for tensors, meta in extra:
        for key in tensors:
            if key.endswith(".lora_A"):
                layer = key[: -len(".lora_A")]
                out.setdefault(layer, {})[meta["domain"]] = (tensors[key], tensors[f"{layer}.lora_B"],
                                                             tensors[f"{layer}.lora_bias"])
    return out


def build_inference_model(run_dir: Path, *, domain: str | None, adapters: list[Path] = ()) -> tuple[InferenceModel, dict]:
    run = AdapterRunDir(run_dir)
    cfg, spec, layout = run.config, run.spec, run.layout()
    state = ckpt.read_entries(run.best_checkpoint())
    history = HistorySpec.from_dict(run.model_info["history"]) if "history" in run.model_info else None
    pools = []
    for entity in (history.entities if history is not None else {}):
        pool = HistoryPooling(history.k, history.dim, history.heads)
        prefix = f"pool.{entity}."
        pool.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        pools.append(pool.eval())
    extra, seen = [], {}
    for a in adapters:
        tensors, meta = read_adapter(a)
        check_backbone(meta, run_dir, a)
        if meta["domain"] in seen:
            raise ConfigError(f"adapter for domain '{meta['domain']}' is passed twice (also {seen[meta['domain']]})",
                              file=a)
        seen[meta["domain"]] = a
        extra.append((tensors, meta))
    domains = list(layout.domain_names) + [m["domain"] for _, m in extra if m["domain"] not in layout.domain_names]
    if domain is not None and domain not in domains:
        raise ConfigError(f"--domain '{domain}' is neither a domain of the run {list(layout.domain_names)} nor of "
                          "an --adapter", file=run_dir)
    lora = _adapter_weights(state, extra, domains)
    tables = [state[table_entry(k)].float().clone() for k in layout.keys]
    modes = ["mean" if layout.pooling[k].name == "MEAN" else "sum" for k in layout.keys]
    learned = []  # (key index, domain index, rows, vectors) of the adapters' own embedding rows
    for tensors, m in extra:
        for f, rows in domain_rows_of(tensors).items():
            if domain is None:
                learned.append((layout.keys.index(f), domains.index(m["domain"]), rows, tensors[f"rows.{f}.weight"].float()))
            elif m["domain"] == domain:  # single-domain artifact: fold the rows into its own tables
                tables[layout.keys.index(f)][rows] += tensors[f"rows.{f}.weight"].float()
    history_width = 0 if history is None else len(history.entities) * history.dim
    tower = build_tower(cfg.model.tower, in_features=len(layout.keys) * cfg.model.embedding_dim + layout.dense_dim
                        + history_width,
                        num_fields=len(layout.keys), embedding_dim=cfg.model.embedding_dim,
                        **tower_options(cfg.model, dropout=False))
    tower.load_state_dict({k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.") and "lora_" not in k})
    routed = None
    if domain is not None:
        if lora and not all(domain in by_domain for by_domain in lora.values()):
            raise ArtifactError(f"no adapter for domain '{domain}' (pass its directory with --adapter)", file=run_dir)
        with torch.no_grad():
            for i, layer in enumerate(tower.mlp.layers):
                a, b, bias = lora.get(f"tower.mlp.layers.{i}", {}).get(domain, (None, None, None))
                if a is not None:
                    new_w, new_b = layer.weight + (a @ b).T, layer.bias + bias
                    if not (torch.isfinite(new_w).all() and torch.isfinite(new_b).all()):
                        raise ArtifactError(f"merging domain '{domain}' gives non-finite weights")
                    layer.weight.copy_(new_w)
                    layer.bias.copy_(new_b)
    elif lora:
        if cfg.model.tower != "mlp":
            raise ConfigError("all-domain export supports the mlp tower; export one --domain for other towers")
        layers = []
        for i, layer in enumerate(tower.mlp.layers):
            by_domain = lora[f"tower.mlp.layers.{i}"]
            r = max(t[0].shape[1] for t in by_domain.values())
            a = torch.zeros(layer.in_features, len(domains) * r)
            b = torch.zeros(len(domains) * r, layer.out_features)
            bias_d = torch.zeros(len(domains), layer.out_features)
            for j, d in enumerate(domains):
                if d in by_domain:
                    ad, bd, bb = by_domain[d]
                    if not all(bool(torch.isfinite(t).all()) for t in (ad, bd, bb)):
                        raise ArtifactError(f"the adapter of domain '{d}' has non-finite weights (layer {i}): "
                                            "it would make every domain's output NaN", file=run_dir)
                    a[:, j * r: j * r + ad.shape[1]] = ad
                    b[j * r: j * r + bd.shape[0]] = bd
                    bias_d[j] = bb
            layers.append(RoutedLinear(layer.weight.detach(), layer.bias.detach(), a, b, bias_d, r))
        routed = RoutedMLP(tower.mlp, layers)
    model = InferenceModel(layout, tables, tower, routed, modes, learned, pools).eval()
    meta = {"format": "mdctr-inference/1", "keys": layout.keys, "table_rows": [layout.rows[k] for k in layout.keys],
            "dense": [f.name for f in spec.dense_fields], "domains": domains, "domain": domain,
            "tower": cfg.model.tower, "inputs": "values, lengths (key-major jagged), dense, domain",
            "run": run.run_id,
            "adapters": [str(a) for a in adapters]}
    if history is not None:  # E-CDCTR: the user's and item's last K snapshot vectors come in too
        meta["inputs"] += ", history_vectors (B, E, K, D), history_found (B, E, K)"
        meta["history"] = {"entities": history.entities, "k": history.k, "dim": history.dim,
                           "snapshots": run.model_info.get("snapshots")}
    return model, meta


def export(run_dir: str | Path, out: str | Path, *, domain: str | None = None, adapters: list[str | Path] = (),
           overwrite: bool = False) -> dict:
    """Script the run's model (merged for ``domain``, or routed over every domain) into ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    check_output(out, overwrite=overwrite)
    model, meta = build_inference_model(run_dir, domain=domain, adapters=[Path(a) for a in adapters])
    scripted = torch.jit.script(model)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        scripted.save(str(tmp / "model.pt"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta

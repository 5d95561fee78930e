"""Attach MLoRA adapters to a platform model, freeze its backbone, and move adapter weights.

The platform model never learns about adapters: :func:`attach_adapters` swaps every hidden
``nn.Linear`` of the tower's MLP (``tower.mlp.layers``) for an :class:`MLoRALinear` that
shares its weight and bias (state-dict keys unchanged, so a backbone checkpoint loads as
is), and registers a forward pre-hook that routes each batch by its ``domain`` argument.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mdctr.adapters.layer import DEFAULT_ALPHA, MLoRALinear, RoutingContext
from mdctr.adapters.rows import ROWS, DomainRows, row_modules, rows_delta
from mdctr.core.config import StrictModel
from mdctr.platform.towers import MLP

ADAPTER_MARK = "lora_"


class AdapterConfig(StrictModel):
    """The ``adapters:`` section of a training config."""

    mode: Literal["joint", "two_phase"] = "two_phase"
    #: rank r = max(d_out // alpha, 1) of each layer's adapter ("temperature" in MLoRA)
    alpha: int = Field(default=DEFAULT_ALPHA, ge=1)
    #: explicit LoRA rank for every layer (overrides alpha)
    rank: int | None = Field(default=None, ge=1)
    #: epochs of the shared pretraining in two_phase mode (default: train.epochs)
    pretrain_epochs: int | None = Field(default=None, ge=1)
    #: two_phase: ``per_domain`` keeps each domain's adapter from the epoch of its own best
    #: validation AUC (the untrained, no-op adapter if none beats the shared model);
    #: ``global``: every adapter from the epoch of the best validation WAUC
    select: Literal["per_domain", "global"] = "per_domain"
    #: per_domain: a domain keeps a trained adapter only if its validation AUC beats the
    #: shared model's by more than this many standard errors of that AUC (Hanley-McNeil, from
    #: the domain's validation positives and negatives); 0 keeps any gain
    min_gain_se: float = Field(default=1.0, ge=0)
    #: two_phase's adapter phase: its dense learning rate, weight decay and epochs
    #: (default: optim.dense.lr, optim.dense.weight_decay, train.epochs)
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _two_phase_only(self) -> "AdapterConfig":
        if self.mode == "joint":
            given = [k for k in ("pretrain_epochs", "select", "min_gain_se", "lr", "weight_decay", "epochs")
                     if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"adapters.{given[0]} applies to mode two_phase only (joint trains the "
                                 "backbone and the adapters together)")
        return self


def is_adapter_param(name: str) -> bool:
    return ADAPTER_MARK in name


def _route_hook(context: RoutingContext):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        domain = kwargs["domain"] if "domain" in kwargs else args[2]
        context.set(domain)
        context.batch = (kwargs["sparse"] if "sparse" in kwargs else args[0], domain)

    return hook


def _rows_hook(model: nn.Module, context: RoutingContext):
    """Adds the domains' own embedding rows (:mod:`mdctr.adapters.rows`) to the tower's input."""
    keys, dim = list(model.layout.keys), model.embedding_dim

    def hook(tower: nn.Module, args: tuple):
        modules = getattr(model, ROWS, None)
        if not modules:
            return None
        sparse, domain = context.batch
        delta = rows_delta(dict(modules.items()), context.domain_names, keys, dim, sparse, domain,
                           context.routing.single)
        if delta is None:
            return None
        x, emb = args
        width = delta.shape[1]
        x = torch.cat([x[:, :width] + delta, x[:, width:]], dim=1)
        return x, x[:, :width].reshape(emb.shape)

    return hook


def attach_adapters(model: nn.Module, domain_names: list[str], *, domains: list[str] | None = None,
                    alpha: int = DEFAULT_ALPHA, lora_rank: int | None = None) -> RoutingContext:
    """Give every hidden tower layer of ``model`` an adapter for each of ``domains``.

    ``domain_names`` are the model's domains in index order (``batch.domain`` indexes them);
    ``domains`` (default: all of them) get adapters now, others can be added later with
    :func:`add_domain`. Returns the routing context shared by the layers.
    """
    if getattr(model, "adapter_context", None) is not None:
        raise ValueError("model already has adapters attached")
    context = RoutingContext(domain_names)
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    if not mlps:
        raise ValueError("model has no MLP tower to adapt")
    for mlp in mlps:
        for i, layer in enumerate(mlp.layers):
            mlp.layers[i] = MLoRALinear.from_linear(layer, context, list(domain_names if domains is None else domains),
                                                    lora_rank=lora_rank, alpha=alpha)
    model.register_forward_pre_hook(_route_hook(context), with_kwargs=True)
    if hasattr(model, "tower") and hasattr(model, "layout"):
        model.tower.register_forward_pre_hook(_rows_hook(model, context))
    model.adapter_context = context
    return context


def adapter_layers(model: nn.Module) -> dict[str, MLoRALinear]:
    """Adapted layers by qualified name (DMP/DDP prefixes stripped)."""
    return {clean_name(n): m for n, m in model.named_modules() if isinstance(m, MLoRALinear)}


def inner_model(model: nn.Module) -> nn.Module:
    """The platform model inside DMP / DDP wrappers."""
    while True:
        if "_dmp_wrapped_module" in model._modules:
            model = model._modules["_dmp_wrapped_module"]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_name(name: str) -> str:
    """A parameter or state-dict name without DMP / DDP wrapper prefixes."""
    for prefix in ("_dmp_wrapped_module.", "module."):
        name = name.replace(prefix, "")
    return name


def is_domain_entry(key: str, domain: str) -> bool:
    """Whether state-dict entry ``key`` is part of ``domain``'s adapter (tower layers or own rows)."""
    return (is_adapter_param(key) and key.endswith(f".{domain}")) or f"{ROWS}.{domain}." in key


def domain_parameter_names(model: nn.Module, domain: str) -> set[str]:
    """Names (wrapper prefixes stripped: :func:`clean_name`) of the parameters that hold
    ``domain``'s adapter and nothing else: its bank in every adapted layer and its own
    embedding rows. A domain sharing a bank with others (trained jointly with them) cannot
    be trained alone."""
    names = set()
    for layer_name, layer in adapter_layers(model).items():
        if domain not in layer.slots:
            raise KeyError(f"no adapter for domain '{domain}' in layer {layer_name}")
        k, _ = layer.slots[domain]
        if len(layer.banks[k]) > 1:
            raise ValueError(f"domain '{domain}' shares its adapter bank with {layer.banks[k]} in layer {layer_name}, "
                             "so it cannot be trained alone")
        names.update(f"{layer_name}.{n}" for n in layer.bank_parameter_names(k))
    names.update(clean_name(n) for n, _ in model.named_parameters() if f"{ROWS}.{domain}." in n)
    return names


def add_domain(model: nn.Module, domain: str, *, alpha: int = DEFAULT_ALPHA, lora_rank: int | None = None,
               lora_ranks: dict[str, int] | None = None) -> None:
    """A fresh (no-op) adapter for ``domain`` in every adapted layer (``lora_ranks``: per layer),
    each in a bank of its own, so it can be trained while the others stay frozen."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapters attached")
    context = next(iter(layers.values())).context
    if domain not in context.domain_names:
        context.domain_names.append(domain)
    for name, layer in layers.items():
        layer.add_adapter(domain, lora_rank=(lora_ranks or {}).get(name, lora_rank), alpha=alpha)


def freeze_backbone(model: nn.Module) -> None:
    """Train only adapters: tables are looked up without autograd, dense weights stop
    requiring gradients. (Setting ``requires_grad`` on sharded tables does not freeze them;
    skipping their autograd does.)"""
    for m in model.modules():
        if hasattr(m, "embeddings_frozen"):
            m.embeddings_frozen = True
    for name, p in model.named_parameters():
        if not is_adapter_param(name) and not _is_table(name):
            p.requires_grad_(False)


def _is_table(name: str) -> bool:
    return "embedding_bags." in name


def adapter_tensors(model: nn.Module, domain: str) -> dict[str, torch.Tensor]:
    """``domain``'s adapter weights, keyed ``LAYER.lora_A`` / ``.lora_B`` / ``.lora_bias``."""
    out = {}
    for name, layer in adapter_layers(model).items():
        if domain not in layer.lora_A:
            raise KeyError(f"no adapter for domain '{domain}' in layer {name}")
        # copies: the views share their bank's storage
        out[f"{name}.lora_A"] = layer.lora_A[domain].detach().cpu().clone()
        out[f"{name}.lora_B"] = layer.lora_B[domain].detach().cpu().clone()
        out[f"{name}.lora_bias"] = layer.lora_bias[domain].detach().cpu().clone()
    learned = getattr(inner_model(model), ROWS, {})
    if domain in learned:
        for f in learned[domain].fields:
            out[f"rows.{f}.ids"] = learned[domain].rows(f).detach().cpu().contiguous()
            out[f"rows.{f}.weight"] = learned[domain].weight[f].detach().cpu().contiguous()
    return out


def add_domain_rows(model: nn.Module, domain: str, rows: dict[str, torch.Tensor]) -> DomainRows | None:
    """Give ``domain`` its own (zero) embedding rows for ``rows`` (field -> sorted table rows)."""
    rows = {f: r for f, r in rows.items() if r.numel()}
    if not rows:
        return None
    model = inner_model(model)
    layout = model.layout
    module = DomainRows(rows, model.embedding_dim, {f: layout.pooling[f].name == "MEAN" for f in rows})
    device = next((p.device for p in model.tower.parameters()), torch.device("cpu"))
    row_modules(model)[domain] = module.to(device)
    return module


def domain_rows_of(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{field: rows}`` of an adapter file's own embedding rows (empty if it has none)."""
    return {k[len("rows."):-len(".ids")]: v for k, v in tensors.items() if k.startswith("rows.") and k.endswith(".ids")}


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{layer: [in, out]}`` of the adapted layers: what an adapter file must match."""
    return {n: [m.in_features, m.out_features] for n, m in adapter_layers(model).items()}


@torch.no_grad()
def load_adapter_tensors(model: nn.Module, domain: str, tensors: dict[str, torch.Tensor]) -> None:
    """Set (adding if needed) ``domain``'s adapter from :func:`adapter_tensors` output."""
    layers = adapter_layers(model)
    want = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B", "lora_bias")}
    learned = {k: v for k, v in tensors.items() if k.startswith("rows.")}
    tensors = {k: v for k, v in tensors.items() if not k.startswith("rows.")}
    if set(tensors) != want:
        missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        raise ValueError(f"adapter tensors do not match the model's layers (missing {missing[:3]}, extra {extra[:3]})")
    for name, layer in layers.items():
        a, b, bias = (tensors[f"{name}.{k}"] for k in ("lora_A", "lora_B", "lora_bias"))
        if a.shape[0] != layer.in_features or b.shape[1] != layer.out_features or a.shape[1] != b.shape[0]:
            raise ValueError(f"adapter for layer {name} has shapes {list(a.shape)}, {list(b.shape)}; "
                             f"the layer is {layer.in_features} -> {layer.out_features}")
        if domain not in layer.lora_A:
            layer.add_adapter(domain, lora_rank=a.shape[1])
        layer.lora_A[domain].copy_(a)
        layer.lora_B[domain].copy_(b)
        layer.lora_bias[domain].copy_(bias)
    if learned:
        rows = domain_rows_of(learned)
        modules = getattr(inner_model(model), ROWS, {})
        if domain not in modules or any(not torch.equal(modules[domain].rows(f).cpu(), r) for f, r in rows.items()):
            raise ValueError(f"the model's embedding rows for '{domain}' do not match the adapter's (add them before loading)")
        for f in rows:
            modules[domain].weight[f].copy_(learned[f"rows.{f}.weight"])


def adapter_parameter_count(tensors: dict[str, torch.Tensor]) -> int:
    """Trained parameters in :func:`adapter_tensors` output (own rows' ``.ids`` are indices, not parameters)."""
    return sum(t.numel() for k, t in tensors.items() if not k.endswith(".ids"))


def parameter_share(model: nn.Module, domain: str, backbone_params: int) -> tuple[int, float]:
    """Parameters of ``domain``'s adapter and their share of the backbone's parameters."""
    n = adapter_parameter_count(adapter_tensors(model, domain))
    return n, n / backbone_params


def backbone_parameter_count(model: nn.Module) -> int:
    """Tables + dense weights, adapters excluded (works on meta-device tables too)."""
    return sum(p.numel() for n, p in model.named_parameters() if not is_adapter_param(n))

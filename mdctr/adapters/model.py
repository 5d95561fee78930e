"""Attach MLoRA adapters to a platform model, freeze its backbone, and move adapter weights.

The platform model never learns about adapters: :func:`attach_adapters` swaps every hidden
``nn.Linear`` of the tower's MLP (``tower.mlp.layers``) for an :class:`MLoRALinear` that
shares its weight and bias (state-dict keys unchanged, so a backbone checkpoint loads as
is), and registers a forward pre-hook that routes each batch by its ``domain`` argument.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mdctr.adapters.layer import MLoRALinear, RoutingContext
from mdctr.domains.config_io import StrictModel
from mdctr.platform.towers import MLP

ADAPTER_MARK = "lora_"


class AdapterConfig(StrictModel):
    """The ``adapters:`` section of a training config."""

    mode: Literal["joint", "two_phase"] = "two_phase"
    #: rank r = max(d_out // alpha, 1) of each layer's adapter ("temperature" in MLoRA)
    alpha: int = Field(default=8, ge=1)
    #: explicit rank for every layer (overrides alpha)
    rank: int | None = Field(default=None, ge=1)
    #: epochs of the shared pretraining in two_phase mode (default: train.epochs)
    pretrain_epochs: int | None = Field(default=None, ge=1)


def is_adapter_param(name: str) -> bool:
    return ADAPTER_MARK in name


def _route_hook(context: RoutingContext):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        domain = kwargs["domain"] if "domain" in kwargs else args[2]
        context.set(domain)

    return hook


def attach_adapters(model: nn.Module, domain_names: list[str], *, domains: list[str] | None = None,
                    alpha: int = 8, rank: int | None = None) -> RoutingContext:
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
                                                    rank=rank, alpha=alpha)
    model.register_forward_pre_hook(_route_hook(context), with_kwargs=True)
    model.adapter_context = context
    return context


def adapter_layers(model: nn.Module) -> dict[str, MLoRALinear]:
    """Adapted layers by qualified name (DMP/DDP prefixes stripped)."""
    return {_clean(n): m for n, m in model.named_modules() if isinstance(m, MLoRALinear)}


def _clean(name: str) -> str:
    for prefix in ("_dmp_wrapped_module.", "module."):
        name = name.replace(prefix, "")
    return name


def add_domain(model: nn.Module, domain: str, *, alpha: int = 8, rank: int | None = None,
               ranks: dict[str, int] | None = None) -> None:
    """A fresh (no-op) adapter for ``domain`` in every adapted layer (``ranks``: per layer)."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapters attached")
    context = next(iter(layers.values())).context
    if domain not in context.domain_names:
        context.domain_names.append(domain)
    for name, layer in layers.items():
        layer.add_adapter(domain, rank=(ranks or {}).get(name, rank), alpha=alpha)


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
        out[f"{name}.lora_A"] = layer.lora_A[domain].detach().cpu().contiguous()
        out[f"{name}.lora_B"] = layer.lora_B[domain].detach().cpu().contiguous()
        out[f"{name}.lora_bias"] = layer.lora_bias[domain].detach().cpu().contiguous()
    return out


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{layer: [in, out]}`` of the adapted layers: what an adapter file must match."""
    return {n: [m.in_features, m.out_features] for n, m in adapter_layers(model).items()}


@torch.no_grad()
def load_adapter_tensors(model: nn.Module, domain: str, tensors: dict[str, torch.Tensor]) -> None:
    """Set (adding if needed) ``domain``'s adapter from :func:`adapter_tensors` output."""
    layers = adapter_layers(model)
    want = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B", "lora_bias")}
    if set(tensors) != want:
        missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
        raise ValueError(f"adapter tensors do not match the model's layers (missing {missing[:3]}, extra {extra[:3]})")
    for name, layer in layers.items():
        a, b, bias = (tensors[f"{name}.{k}"] for k in ("lora_A", "lora_B", "lora_bias"))
        if a.shape[0] != layer.in_features or b.shape[1] != layer.out_features or a.shape[1] != b.shape[0]:
            raise ValueError(f"adapter for layer {name} has shapes {list(a.shape)}, {list(b.shape)}; "
                             f"the layer is {layer.in_features} -> {layer.out_features}")
        if domain not in layer.lora_A:
            layer.add_adapter(domain, rank=a.shape[1])
        layer.lora_A[domain].copy_(a)
        layer.lora_B[domain].copy_(b)
        layer.lora_bias[domain].copy_(bias)


def parameter_share(model: nn.Module, domain: str, backbone_params: int) -> tuple[int, float]:
    """Parameters of ``domain``'s adapter and their share of the backbone's parameters."""
    n = sum(t.numel() for t in adapter_tensors(model, domain).values())
    return n, n / backbone_params


def backbone_parameter_count(model: nn.Module) -> int:
    """Tables + dense weights, adapters excluded (works on meta-device tables too)."""
    return sum(p.numel() for n, p in model.named_parameters() if not is_adapter_param(n))

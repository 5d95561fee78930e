"""MLoRA's layer: a Linear with one low-rank adapter per domain (Yang et al., RecSys 2024).

For an example of domain ``d`` the layer computes (row-vector convention, ``x`` is (B, in))::

    y = x W^T + b + (x A_d) B_d + b_d        A_d: (in, r)   B_d: (r, out)   b_d: (out,)

``A_d`` is glorot-initialised, ``B_d`` and ``b_d`` are zero, so a fresh adapter changes
nothing; the rank is ``r = max(out // alpha, 1)`` unless given. Adapters are kept by domain
name in ``ParameterDict`` s (as PEFT keeps ``lora_A``/``lora_B`` by adapter name).

Routing: before a forward, :class:`Routing` is set on the layer's shared
:class:`RoutingContext` with the batch's domain index; a batch of one domain takes a fast
path, a batch whose rows are already grouped by domain (training batches:
``group_domains``) is cut into contiguous slices, and any other mixed batch is grouped by
one sort per forward, shared by every layer. The loop runs over the domains present,
never over examples.

>>> import torch
>>> ctx = RoutingContext(["F", "M"])
>>> layer = MLoRALinear.from_linear(torch.nn.Linear(6, 4), ctx, ["F", "M"], rank=2)
>>> x = torch.randn(5, 6)
>>> ctx.set(torch.tensor([0, 1, 1, 0, 1]))
>>> bool(torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """How one batch maps to adapters: either one domain, or a grouping by domain."""

    single: int | None  # the one domain index of the batch, if so
    order: torch.Tensor | None = None  # permutation grouping rows by domain (None: already grouped)
    inverse: torch.Tensor | None = None  # its inverse
    counts: list[int] | None = None  # rows per domain index, in index order


class RoutingContext:
    """Shared by every adapted layer of a model: the domain names in index order and the
    current batch's routing."""

    def __init__(self, domain_names: list[str]):
        self.domain_names = list(domain_names)
        self.routing: Routing | None = None

    def set(self, domain: torch.Tensor) -> None:
        domain = domain.reshape(-1)
        if domain.numel() == 0:
            self.routing = Routing(single=None, counts=[0] * len(self.domain_names))
            return
        lo, hi = int(domain.min()), int(domain.max())
        if lo < 0 or hi >= len(self.domain_names):
            raise ValueError(f"domain index {hi if hi >= len(self.domain_names) else lo} has no name "
                             f"(known: {self.domain_names})")
        if lo == hi:
            self.routing = Routing(single=lo)
            return
        counts = torch.bincount(domain, minlength=len(self.domain_names)).tolist()
        if bool((domain[1:] >= domain[:-1]).all()):  # already grouped: contiguous slices, no gathers
            self.routing = Routing(single=None, counts=counts)
            return
        order = torch.argsort(domain, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        self.routing = Routing(single=None, order=order, inverse=inverse, counts=counts)


class _GroupedDelta(torch.autograd.Function):
    """Every domain's adapter product of a domain-grouped batch as one autograd node.

    ``forward(x, out_features, bounds, A_0, B_0, b_0, A_1, ...)``: rows ``bounds[i]`` of
    ``x`` get ``x A_i B_i + b_i`` (rows of domains without an adapter get 0). Forward and
    backward write each domain's GEMM straight into its slice of the output (``out=``), so
    a step costs the GEMMs and nothing else: no per-domain autograd nodes, splits or concats.
    """

    @staticmethod
    def forward(ctx, x, out_features, bounds, *params):
        covered = sum(hi - lo for lo, hi in bounds) == x.shape[0]
        out = x.new_empty(x.shape[0], out_features) if covered else x.new_zeros(x.shape[0], out_features)
        hs = []
        for i, (lo, hi) in enumerate(bounds):
            a, b, bias = params[3 * i: 3 * i + 3]
            h = torch.mm(x[lo:hi], a)
            torch.addmm(bias, h, b, out=out[lo:hi])
            hs.append(h)
        ctx.bounds = bounds
        ctx.save_for_backward(x, *params, *hs)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, *saved = ctx.saved_tensors
        k = len(ctx.bounds)
        params, hs = saved[: 3 * k], saved[3 * k:]
        need = ctx.needs_input_grad
        gx = torch.zeros_like(x) if need[0] else None
        grads: list[torch.Tensor | None] = []
        for i, (lo, hi) in enumerate(ctx.bounds):
            a, b, _ = params[3 * i: 3 * i + 3]
            g = grad[lo:hi]
            gh = torch.mm(g, b.t())
            if gx is not None:
                torch.mm(gh, a.t(), out=gx[lo:hi])
            grads += [torch.mm(x[lo:hi].t(), gh) if need[3 + 3 * i] else None,
                      torch.mm(hs[i].t(), g) if need[4 + 3 * i] else None,
                      g.sum(0) if need[5 + 3 * i] else None]
        return (gx, None, None, *grads)


class MLoRALinear(nn.Linear):
    """An ``nn.Linear`` (same ``weight``/``bias``, same state-dict keys) plus per-domain
    adapters ``lora_A[d]``, ``lora_B[d]``, ``lora_bias[d]``."""

    def __init__(self, in_features: int, out_features: int, context: RoutingContext, *, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.context = context
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_bias = nn.ParameterDict()
        self.ranks: dict[str, int] = {}
        self.merged: str | None = None  # domain folded into weight/bias, if any

    @classmethod
    def from_linear(cls, linear: nn.Linear, context: RoutingContext, domains: list[str], *,
                    rank: int | None = None, alpha: int = 8) -> "MLoRALinear":
        """Wrap ``linear``, sharing its weight and bias tensors."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.context = context
        layer.lora_A, layer.lora_B, layer.lora_bias = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        layer.ranks, layer.merged = {}, None
        for d in domains:
            layer.add_adapter(d, rank=rank, alpha=alpha)
        return layer

    @staticmethod
    def rank_for(out_features: int, alpha: int, rank: int | None = None) -> int:
        return rank if rank is not None else max(out_features // alpha, 1)

    def add_adapter(self, domain: str, *, rank: int | None = None, alpha: int = 8) -> None:
        """A fresh (no-op) adapter for ``domain``: A glorot, B and b zero."""
        if domain in self.lora_A:
            raise ValueError(f"domain '{domain}' already has an adapter")
        r = self.rank_for(self.out_features, alpha, rank)
        device, dtype = self.weight.device, self.weight.dtype
        a = torch.empty(self.in_features, r, device=device, dtype=dtype)
        nn.init.xavier_uniform_(a)
        self.lora_A[domain] = nn.Parameter(a)
        self.lora_B[domain] = nn.Parameter(torch.zeros(r, self.out_features, device=device, dtype=dtype))
        self.lora_bias[domain] = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype))
        self.ranks[domain] = r

    def delta(self, domain: str, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.lora_bias[domain], x @ self.lora_A[domain], self.lora_B[domain])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        routing = self.context.routing
        if routing is None:
            raise RuntimeError("MLoRALinear called without a domain routing (use the adapted model's forward)")
        names = self.context.domain_names
        if self.merged is not None:
            if routing.single is None or names[routing.single] != self.merged:
                raise ValueError(f"this layer has domain '{self.merged}' merged and serves only that domain")
            return base
        if routing.single is not None:
            name = names[routing.single]
            return base + self.delta(name, x) if name in self.lora_A else base
        xs = x if routing.order is None else x.index_select(0, routing.order)
        bounds, params, lo = [], [], 0
        for idx, n in enumerate(routing.counts):
            name = names[idx]
            if n and name in self.lora_A:
                bounds.append((lo, lo + n))
                params += [self.lora_A[name], self.lora_B[name], self.lora_bias[name]]
            lo += n
        delta = _GroupedDelta.apply(xs, self.out_features, bounds, *params)
        return base + (delta if routing.inverse is None else delta.index_select(0, routing.inverse))

    # -- serving -------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, domain: str) -> None:
        """Fold ``domain``'s adapter into weight and bias (safe: refuses non-finite results)."""
        if self.merged is not None:
            raise ValueError(f"layer already has '{self.merged}' merged; unmerge first")
        delta_w = (self.lora_A[domain] @ self.lora_B[domain]).T
        new_w = self.weight + delta_w
        new_b = self.bias + self.lora_bias[domain]
        if not (torch.isfinite(new_w).all() and torch.isfinite(new_b).all()):
            raise ValueError(f"merging domain '{domain}' gives non-finite weights; adapter left unmerged")
        self._saved = (self.weight.detach().clone(), self.bias.detach().clone())
        self.weight.copy_(new_w)
        self.bias.copy_(new_b)
        self.merged = domain

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact pre-merge weight and bias."""
        if self.merged is None:
            return
        w, b = self._saved
        self.weight.copy_(w)
        self.bias.copy_(b)
        del self._saved
        self.merged = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapters={dict(self.ranks)}"

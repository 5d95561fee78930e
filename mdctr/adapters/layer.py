"""MLoRA's layer: a Linear with one low-rank adapter per domain (Yang et al., RecSys 2024).

For an example of domain ``d`` the layer computes (row-vector convention, ``x`` is (B, in))::

    y = x W^T + b + (x A_d) B_d + b_d        A_d: (in, r)   B_d: (r, out)   b_d: (out,)

``A_d`` is glorot-initialised, ``B_d`` and ``b_d`` are zero, so a fresh adapter changes
nothing (its merged weight ``W^T + A_d B_d`` is ``W^T`` exactly, and the bias goes into the
GEMM as in ``nn.functional.linear``); the rank is ``r = max(out // alpha, 1)``
unless given. Adapters are kept by domain name in ``ParameterDict`` s (as PEFT keeps
``lora_A``/``lora_B`` by adapter name). Each domain's rows are computed with its merged
weight (:class:`_RoutedLinear`).

Routing: before a forward, :class:`Routing` is set on the layer's shared
:class:`RoutingContext` with the batch's domain index; a batch of one domain is one block,
a batch whose rows are already grouped by domain (training batches: ``group_domains``) is
cut into contiguous blocks, and any other mixed batch is grouped by one sort per forward,
shared by every layer. The loop runs over the domains present, never over examples.

>>> import torch
>>> ctx = RoutingContext(["F", "M"])
>>> layer = MLoRALinear.from_linear(torch.nn.Linear(6, 4), ctx, ["F", "M"], rank=2)
>>> x = torch.randn(5, 6)
>>> ctx.set(torch.tensor([0, 0, 1, 1, 1]))  # rows grouped by domain, as in training
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
        n = len(self.domain_names)
        if domain.numel() == 0:
            self.routing = Routing(single=None, counts=[0] * n)
            return
        if domain.is_floating_point() or bool((domain < 0).any()):
            raise ValueError(f"domain indices must be non-negative integers (got {domain.min().item()})")
        counts = torch.bincount(domain, minlength=n).tolist()  # one pass, one sync
        if len(counts) > n:
            raise ValueError(f"domain index {len(counts) - 1} has no name (known: {self.domain_names})")
        present = [i for i, c in enumerate(counts) if c]
        if len(present) == 1:
            self.routing = Routing(single=present[0])
            return
        if bool((domain[1:] >= domain[:-1]).all()):  # already grouped: contiguous slices, no gathers
            self.routing = Routing(single=None, counts=counts)
            return
        order = torch.argsort(domain, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        self.routing = Routing(single=None, order=order, inverse=inverse, counts=counts)


def _rows_times(x: torch.Tensor, w: torch.Tensor, sizes: list[int],
                adds: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Row block ``i`` of the result (``sizes[i]`` rows) is that block of ``x`` times ``w[i]``,
    plus ``adds[i]`` (a row vector) if given.

    The vector goes into the GEMM (``addmm``), as ``nn.functional.linear`` does, so a block
    whose ``w[i]`` is the plain weight gives the plain layer's bits. (torch's ``grouped_mm``
    does the products on CPU at the same speed, without the vector and with alignment and
    dtype restrictions, so the loop it is.)
    """
    out = x.new_empty(x.shape[0], w.shape[-1])
    adds = adds if adds is not None else [None] * len(sizes)
    for xs, wi, o, c in zip(x.split_with_sizes(sizes), w.unbind(0), out.split_with_sizes(sizes), adds):
        if c is None:
            torch.mm(xs, wi, out=o)
        else:
            torch.addmm(c, xs, wi, out=o)
    return out


class _RoutedLinear(torch.autograd.Function):
    """The whole adapted layer of a domain-grouped batch as one autograd node.

    ``forward(x, weight, bias, groups, A_0, B_0, b_0, A_1, ...)``; ``groups`` lists
    ``(lo, hi, k)`` covering the rows in order: rows ``lo:hi`` belong to one domain whose
    adapter is triple ``k`` of the params (``None``: no adapter, the plain base layer).

    Each domain's rows are computed with its merged weight, ``x (W^T + A_d B_d) + b + b_d``:
    the same FLOPs and activation traffic as the base layer, plus ``in x r x out`` per domain
    for the merge. Backward reuses that: with ``G_d = x_d^T g_d`` (in, out), the domain's
    share of the weight gradient, which the base computes anyway, the adapter gradients are
    small products of weights, ``dA_d = G_d B_d^T`` and ``dB_d = A_d^T G_d``, and
    ``dx_d = g_d (W^T + A_d B_d)^T``. The low-rank path ``(x A_d) B_d`` instead costs about ten
    extra passes over the activations (one per small GEMM or add), which dominated the step
    on CPU (benchmarks/adapter_overhead.py).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, *params):
        n_groups = len(groups)
        # adapted groups by rank; each rank's merges are one batched GEMM (a domain's result
        # does not depend on which others share the call: checked in tests/adapters)
        blocks: dict[int, tuple[list[int], list[int]]] = {}
        for i, (_, _, k) in enumerate(groups):
            if k is not None:
                pos, ks = blocks.setdefault(params[3 * k].shape[1], ([], []))
                pos.append(i)
                ks.append(k)
        stacks = []
        for pos, ks in blocks.values():
            a_s = torch.stack([params[3 * k] for k in ks])  # (n, in, r)
            b_s = torch.stack([params[3 * k + 1] for k in ks])  # (n, r, out)
            stacks.append((pos, ks, a_s, b_s))
        one_block = len(stacks) == 1 and len(stacks[0][0]) == n_groups  # every domain adapted, one rank
        if one_block:  # the common case: no copies
            _, _, a_s, b_s = stacks[0]
            merged = torch.baddbmm(weight.expand(n_groups, *weight.shape), b_s.transpose(1, 2), a_s.transpose(1, 2))
        else:
            merged = weight.expand(n_groups, *weight.shape).clone()
            for pos, _, a_s, b_s in stacks:
                merged[pos] = torch.baddbmm(weight.expand(len(pos), *weight.shape), b_s.transpose(1, 2),
                                            a_s.transpose(1, 2))
        sizes = [hi - lo for lo, hi, _ in groups]
        if one_block:
            adds = torch.stack([params[3 * k + 2] for k in stacks[0][1]])
            adds = list((adds if bias is None else adds + bias).unbind(0))
        else:
            adds = [bias if k is None else (params[3 * k + 2] if bias is None else bias + params[3 * k + 2])
                    for _, _, k in groups]
        out = _rows_times(x, merged.transpose(1, 2), sizes, adds)  # (W + (A_d B_d)^T) is (out, in) per group
        ctx.sizes, ctx.groups, ctx.blocks = sizes, groups, [(pos, ks) for pos, ks, _, _ in stacks]
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, merged, *[t for _, _, a_s, b_s in stacks for t in (a_s, b_s)])
        ctx.n_params = len(params)
        present = {k for _, _, k in groups}
        # adapters of domains absent from the batch get zero gradients
        ctx.absent = [(k, p.shape, p.dtype, p.device) for k, p in enumerate(params) if k // 3 not in present]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, merged, *stacked = ctx.saved_tensors
        groups, sizes = ctx.groups, ctx.sizes
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        grads: list[torch.Tensor | None] = [None] * ctx.n_params
        need_ab = any(need[4 + 3 * k] or need[5 + 3 * k] for _, ks in ctx.blocks for k in ks)
        n_bd = [k is not None and need[6 + 3 * k] for _, _, k in groups]
        need_bias = ctx.has_bias and need[2]
        # one pass over the row blocks: dx_d = g_d merged_d, G_d^T = g_d^T x_d, bias sums
        gx = grad.new_empty(x.shape) if need[0] else None
        gt = grad.new_empty(len(sizes), grad.shape[1], x.shape[1]) if need[1] or need_ab else None
        sums = grad.new_empty(len(sizes), grad.shape[1]) if need_bias or any(n_bd) else None
        g_blocks = grad.split_with_sizes(sizes)
        x_blocks = x.split_with_sizes(sizes)
        gx_blocks = gx.split_with_sizes(sizes) if gx is not None else None
        for i, gs in enumerate(g_blocks):
            if gx_blocks is not None:
                torch.mm(gs, merged[i], out=gx_blocks[i])
            if gt is not None:
                torch.mm(gs.t(), x_blocks[i], out=gt[i])
            if sums is not None:
                torch.sum(gs, 0, out=sums[i])
        gw = gt.sum(0) if need[1] else None
        if need_ab:
            for (pos, ks), a_s, b_s in zip(ctx.blocks, stacked[0::2], stacked[1::2]):
                g_s = gt if len(pos) == len(groups) else gt[pos]
                g_a = torch.bmm(g_s.transpose(1, 2), b_s.transpose(1, 2))  # G_d B_d^T, (n, in, r)
                g_b = torch.bmm(a_s.transpose(1, 2), g_s.transpose(1, 2))  # A_d^T G_d, (n, r, out)
                for j, k in enumerate(ks):
                    grads[3 * k] = g_a[j] if need[4 + 3 * k] else None
                    grads[3 * k + 1] = g_b[j] if need[5 + 3 * k] else None
        gbias = sums.sum(0) if need_bias else None
        for i, (_, _, k) in enumerate(groups):
            if n_bd[i]:
                grads[3 * k + 2] = sums[i]
        for k, shape, dtype, device in ctx.absent:
            if need[4 + k]:
                grads[k] = torch.zeros(shape, dtype=dtype, device=device)
        return (gx, gw, gbias, None, *grads)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.context.routing
        if routing is None:
            raise RuntimeError("MLoRALinear called without a domain routing (use the adapted model's forward)")
        names = self.context.domain_names
        if self.merged is not None:
            if routing.single is None or names[routing.single] != self.merged:
                raise ValueError(f"this layer has domain '{self.merged}' merged and serves only that domain")
            return nn.functional.linear(x, self.weight, self.bias)
        if routing.single is not None:  # one domain: the same node with a single slice
            counts = [0] * len(names)
            counts[routing.single] = x.shape[0]
        else:
            counts = routing.counts
        xs = x if routing.order is None else x.index_select(0, routing.order)
        # the ParameterDicts' own dicts: plain lookups (their __getitem__ goes through
        # Module.__getattr__, which costs more than the rest of this loop)
        a_of, b_of, bias_of = self.lora_A._parameters, self.lora_B._parameters, self.lora_bias._parameters
        # every adapter goes in, also those of domains absent from this batch: they get zero
        # gradients rather than none, so every rank of a data-parallel run (DDP with a static
        # graph) uses the same parameters whatever domains its batch holds
        index = {name: k for k, name in enumerate(a_of)}
        params = [t for name in a_of for t in (a_of[name], b_of[name], bias_of[name])]
        groups, lo = [], 0
        for idx, n in enumerate(counts):
            if n:
                groups.append((lo, lo + n, index.get(names[idx])))
            lo += n
        out = _RoutedLinear.apply(xs, self.weight, self.bias, groups, *params)
        return out if routing.inverse is None else out.index_select(0, routing.inverse)

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

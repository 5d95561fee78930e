"""MLoRA's layer: a Linear with one low-rank adapter per domain (Yang et al., RecSys 2024).

For an example of domain ``d`` the layer computes (row-vector convention, ``x`` is (B, in))::

    y = x W^T + b + (x A_d) B_d + b_d        A_d: (in, r)   B_d: (r, out)   b_d: (out,)

``A_d`` is glorot-initialised, ``B_d`` and ``b_d`` are zero, so a fresh adapter changes
nothing (its merged weight ``W^T + A_d B_d`` is ``W^T`` exactly, and the bias goes into the
GEMM as in ``nn.functional.linear``); the rank is ``r = max(out // alpha, 1)``
unless given. Adapters are looked up by domain name and stored stacked in banks
(:class:`MLoRALinear`). Each domain's rows are computed with its merged weight
(:class:`_RoutedLinear`).

Routing: before a forward, :class:`Routing` is set on the layer's shared
:class:`RoutingContext` with the batch's domain index; a batch of one domain is one block,
a batch whose rows are already grouped by domain (training batches: ``group_domains``) is
cut into contiguous blocks, and any other mixed batch is grouped by one sort per forward,
shared by every layer. The loop runs over the domains present, never over examples.

>>> import torch
>>> ctx = RoutingContext(["F", "M"])
>>> layer = MLoRALinear.from_linear(torch.nn.Linear(6, 4), ctx, ["F", "M"], lora_rank=2)
>>> x = torch.randn(5, 6)
>>> ctx.set(torch.tensor([0, 0, 1, 1, 1]))  # rows grouped by domain, as in training
>>> bool(torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias)))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from mdctr.adapters import grouped
from mdctr.core.errors import ArtifactError, ConfigError


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
        if domain.is_floating_point():
            raise ValueError(f"domain indices must be integers (got {domain.dtype})")
        # one pass: the runs of equal indices (a grouped batch has one per domain, ascending)
        values, runs = (t.tolist() for t in torch.unique_consecutive(domain, return_counts=True))
        if min(values) < 0:
            raise ValueError(f"domain indices must be non-negative integers (got {min(values)})")
        if max(values) >= n:
            raise ValueError(f"domain index {max(values)} has no name (known: {self.domain_names})")
        if len(values) == 1:
            self.routing = Routing(single=values[0])
            return
        if all(a < b for a, b in zip(values, values[1:])):  # already grouped: contiguous slices, no gathers
            counts = [0] * n
            for v, c in zip(values, runs):
                counts[v] = c
            self.routing = Routing(single=None, counts=counts)
            return
        counts = torch.bincount(domain, minlength=n).tolist()
        order = torch.argsort(domain, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        self.routing = Routing(single=None, order=order, inverse=inverse, counts=counts)


#: the default "temperature" of MLoRA: an adapter's rank is ``max(d_out // alpha, 1)``
DEFAULT_ALPHA = 8

_PARTS = ("A", "B", "bias")


def _pick(slots: list[int]) -> slice | list[int]:
    """Index of ``slots`` in a bank: a slice (a view, no copy) when they are consecutive."""
    return slice(slots[0], slots[-1] + 1) if slots == list(range(slots[0], slots[-1] + 1)) else slots


def _take(t: torch.Tensor, pick: slice | list[int]) -> torch.Tensor:
    return t[pick] if isinstance(pick, slice) else t.index_select(0, torch.tensor(pick, device=t.device))


def _spread(g: torch.Tensor, pick: slice | list[int], n: int) -> torch.Tensor:
    """The gradient of a whole bank of ``n`` rows from that of its rows ``pick`` (the others'
    are zero)."""
    if isinstance(pick, slice) and pick.start == 0 and pick.stop == n:
        return g
    full = g.new_zeros(n, *g.shape[1:])
    if isinstance(pick, slice):
        full[pick] = g
    else:
        full.index_copy_(0, torch.tensor(pick, device=g.device), g)
    return full


class _RoutedLinear(torch.autograd.Function):
    """The whole adapted layer of a domain-grouped batch as one autograd node.

    ``forward(x, weight, bias, groups, A_0, B_0, b_0, A_1, ...)``: the params are the
    layer's adapter banks (``A_k`` (n, in, r), ``B_k`` (n, r, out), ``b_k`` (n, out));
    ``groups`` lists ``(lo, hi, k, j)`` covering the rows in order: rows ``lo:hi`` belong to
    one domain whose adapter is row ``j`` of bank ``k`` (``k`` None: no adapter, the plain
    base layer).

    Each domain's rows are computed with its merged weight, ``x (W^T + A_d B_d) + b + b_d``:
    the same FLOPs and activation traffic as the base layer, plus ``in x r x out`` per domain
    for the merge, which is one batched GEMM per bank. Backward reuses that: with
    ``G_d = x_d^T g_d`` (in, out), the domain's share of the weight gradient, which the base
    computes anyway, the adapter gradients are small batched products of weights,
    ``dA_d = G_d B_d^T`` and ``dB_d = A_d^T G_d``, and ``dx_d = g_d (W^T + A_d B_d)^T``. The
    low-rank path ``(x A_d) B_d`` instead costs about ten extra passes over the activations
    (one per small GEMM or add), which dominated the step on CPU
    (benchmarks/adapter_overhead.py). A domain's merged weight does not depend on which
    other domains share the batched call (checked in tests/adapters). The row-block GEMMs
    run in :mod:`mdctr.adapters.grouped` (a compiled kernel on CPU).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, *banks):
        uses: dict[int, tuple[list[int], list[int]]] = {}  # bank -> (its groups, their rows in it)
        for i, (_, _, k, j) in enumerate(groups):
            if k is not None:
                pos, rows = uses.setdefault(k, ([], []))
                pos.append(i)
                rows.append(j)
        weights: list[torch.Tensor] = [weight.t()] * len(groups)  # (in, out) per group
        adds: list[torch.Tensor | None] = [bias] * len(groups)
        plan, saved = [], []
        for k, (pos, rows) in uses.items():
            pick = _pick(rows)
            a_s, b_s, bias_s = (_take(t, pick) for t in banks[3 * k: 3 * k + 3])
            merged = torch.baddbmm(weight.expand(len(rows), *weight.shape), b_s.transpose(1, 2), a_s.transpose(1, 2))
            shifts = bias_s if bias is None else bias_s + bias
            for i, w, c in zip(pos, merged.transpose(1, 2).unbind(0), shifts.unbind(0)):
                weights[i], adds[i] = w, c
            plan.append((k, pos, _pick(pos), pick))
            saved += [merged, a_s, b_s]
        sizes = [hi - lo for lo, hi, _, _ in groups]
        out = grouped.linear(x, weights, adds, sizes)
        ctx.sizes, ctx.plan = sizes, plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, *saved)
        # banks of domains absent from the batch get zero gradients
        ctx.unused = [(k, (t.shape, t.dtype, t.device)) for k, t in enumerate(banks) if k // 3 not in uses]
        ctx.bank_sizes = [t.shape[0] for t in banks[0::3]]
        ctx.n_params = len(banks)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, *saved = ctx.saved_tensors
        sizes, plan, need = ctx.sizes, ctx.plan, ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * ctx.n_params
        weights = [weight] * len(sizes)  # (out, in) per group
        for (_, pos, _, _), merged in zip(plan, saved[0::3]):
            for i, w in zip(pos, merged.unbind(0)):
                weights[i] = w
        need_ab = any(need[4 + 3 * k] or need[5 + 3 * k] for k, _, _, _ in plan)
        need_bias = ctx.has_bias and need[2]
        need_sums = need_bias or any(need[6 + 3 * k] for k, _, _, _ in plan)
        # one pass over the row blocks: dx_d = g_d merged_d, G_d = x_d^T g_d, bias sums
        gx, gt, sums = grouped.linear_backward(grad, x, weights, sizes, need_gx=need[0], need_gt=need[1] or need_ab,
                                               need_sums=need_sums)
        gw = gt.sum(0).t().contiguous() if need[1] else None
        gbias = sums.sum(0) if need_bias else None
        for (k, _, at, pick), a_s, b_s in zip(plan, saved[1::3], saved[2::3]):
            n = ctx.bank_sizes[k]
            if need[4 + 3 * k] or need[5 + 3 * k]:
                g_s = _take(gt, at)
                if need[4 + 3 * k]:  # G_d B_d^T, (n, in, r)
                    grads[3 * k] = _spread(torch.bmm(g_s, b_s.transpose(1, 2)), pick, n)
                if need[5 + 3 * k]:  # A_d^T G_d, (n, r, out)
                    grads[3 * k + 1] = _spread(torch.bmm(a_s.transpose(1, 2), g_s), pick, n)
            if need[6 + 3 * k]:
                grads[3 * k + 2] = _spread(_take(sums, at), pick, n)
        for k, (shape, dtype, device) in ctx.unused:
            if need[4 + k]:
                grads[k] = torch.zeros(shape, dtype=dtype, device=device)
        return (gx, gw, gbias, None, *grads)


class _ByDomain(Mapping[str, torch.Tensor]):
    """One part (``A``, ``B`` or ``bias``) of a layer's adapters by domain name: views into
    the banks (write through them under ``torch.no_grad()``)."""

    def __init__(self, layer: "MLoRALinear", part: int):
        self._layer, self._part = layer, part

    def __getitem__(self, domain: str) -> torch.Tensor:
        k, j = self._layer.slots[domain]
        return self._layer.bank(k)[self._part][j]

    def __contains__(self, domain: object) -> bool:
        return domain in self._layer.slots

    def __iter__(self):
        return iter(self._layer.slots)

    def __len__(self) -> int:
        return len(self._layer.slots)


class MLoRALinear(nn.Linear):
    """An ``nn.Linear`` (same ``weight``/``bias``) plus per-domain adapters, by domain name:
    ``lora_A[d]``, ``lora_B[d]``, ``lora_bias[d]``.

    Storage: the adapters live in *banks*, one per group of domains added together (one
    rank): bank ``k`` is the parameters ``lora_A_k`` (n, in, r), ``lora_B_k`` (n, r, out) and
    ``lora_bias_k`` (n, out), row ``j`` being domain ``banks[k][j]``'s adapter. A step thus
    merges, differentiates and optimises a bank as one tensor each, as MLoRA's reference
    implementation stacks its per-domain weights, instead of three small tensors per domain.
    :func:`~mdctr.adapters.model.attach_adapters` puts the model's domains in one bank; a
    domain added later (onboarding) gets a bank of its own, so it trains, and the others stay
    frozen, tensor by tensor. The state dict keeps one entry per domain and part
    (``lora_A.<domain>``, as PEFT keys its ``lora_A`` by adapter name), so checkpoints do not
    depend on how domains were grouped into banks.
    """

    def __init__(self, in_features: int, out_features: int, context: RoutingContext, *, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self._init_adapters(context)

    def _init_adapters(self, context: RoutingContext) -> None:
        self.context = context
        self.banks: list[list[str]] = []  # domains of each bank, in row order
        self.slots: dict[str, tuple[int, int]] = {}  # domain -> (bank, row)
        self.ranks: dict[str, int] = {}
        self._bank_names: list[str] = []  # parameter names of the banks, A_0, B_0, bias_0, A_1, ...
        self.merged: str | None = None  # domain folded into weight/bias, if any

    @classmethod
    def from_linear(cls, linear: nn.Linear, context: RoutingContext, domains: list[str], *,
                    lora_rank: int | None = None, alpha: int = DEFAULT_ALPHA) -> "MLoRALinear":
        """Wrap ``linear``, sharing its weight and bias tensors; ``domains`` get one bank."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer._init_adapters(context)
        layer.add_adapters(domains, lora_rank=lora_rank, alpha=alpha)
        return layer

    @staticmethod
    def rank_for(out_features: int, alpha: int, lora_rank: int | None = None) -> int:
        return lora_rank if lora_rank is not None else max(out_features // alpha, 1)

    @property
    def lora_A(self) -> _ByDomain:
        return _ByDomain(self, 0)

    @property
    def lora_B(self) -> _ByDomain:
        return _ByDomain(self, 1)

    @property
    def lora_bias(self) -> _ByDomain:
        return _ByDomain(self, 2)

    def bank(self, k: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """Bank ``k``'s ``(A, B, bias)`` parameters."""
        return tuple(self._parameters[n] for n in self._bank_names[3 * k: 3 * k + 3])

    def bank_parameter_names(self, k: int) -> list[str]:
        """Bank ``k``'s parameter names, relative to this layer."""
        return self._bank_names[3 * k: 3 * k + 3]

    def add_adapters(self, domains: list[str], *, lora_rank: int | None = None, alpha: int = DEFAULT_ALPHA) -> None:
        """Fresh (no-op) adapters for ``domains``, in a new bank: A glorot, B and b zero."""
        domains = list(domains)
        for i, d in enumerate(domains):
            if d in self.slots or d in domains[:i]:
                raise ConfigError(f"domain '{d}' already has an adapter")
        if not domains:
            return
        r = self.rank_for(self.out_features, alpha, lora_rank)
        device, dtype = self.weight.device, self.weight.dtype
        a = torch.empty(len(domains), self.in_features, r, device=device, dtype=dtype)
        for j in range(len(domains)):  # each domain's draws as if it were a tensor of its own
            nn.init.xavier_uniform_(a[j])
        k = len(self.banks)
        for part, value in zip(_PARTS, (a, torch.zeros(len(domains), r, self.out_features, device=device, dtype=dtype),
                                        torch.zeros(len(domains), self.out_features, device=device, dtype=dtype))):
            self.register_parameter(f"lora_{part}_{k}", nn.Parameter(value))
            self._bank_names.append(f"lora_{part}_{k}")
        self.banks.append(domains)
        for j, d in enumerate(domains):
            self.slots[d] = (k, j)
            self.ranks[d] = r

    def add_adapter(self, domain: str, *, lora_rank: int | None = None, alpha: int = DEFAULT_ALPHA) -> None:
        """A fresh (no-op) adapter for ``domain``, in a bank of its own."""
        self.add_adapters([domain], lora_rank=lora_rank, alpha=alpha)

    # -- state dict: one entry per domain and part -----------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._bank_names:
            destination.pop(prefix + name, None)
        for p, part in enumerate(_PARTS):
            for domain, (k, j) in self.slots.items():
                t = self.bank(k)[p]
                destination[f"{prefix}lora_{part}.{domain}"] = (t if keep_vars else t.detach())[j]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        entries = {f"{prefix}lora_{part}.{domain}": (p, k, j)
                   for p, part in enumerate(_PARTS) for domain, (k, j) in self.slots.items()}
        n_missing, n_unexpected = len(missing_keys), len(unexpected_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        banks = {prefix + n for n in self._bank_names}
        missing_keys[n_missing:] = [k for k in missing_keys[n_missing:] if k not in banks]
        unexpected_keys[n_unexpected:] = [k for k in unexpected_keys[n_unexpected:] if k not in entries]
        with torch.no_grad():
            for key, (p, k, j) in entries.items():
                if key not in state_dict:
                    if strict:
                        missing_keys.append(key)
                    continue
                value, target = state_dict[key], self.bank(k)[p][j]
                if value.shape != target.shape:
                    error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} "
                                      f"from checkpoint, the shape in current model is {tuple(target.shape)}.")
                    continue
                target.copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # mixed precision (train.precision): the routed kernels are float32, so this layer
            # runs outside autocast; the layers around it keep it
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float())
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
        # every bank goes in, also those of domains absent from this batch: they get zero
        # gradients rather than none, so every rank of a data-parallel run (DDP with a static
        # graph) uses the same parameters whatever domains its batch holds
        slots, groups, lo = self.slots, [], 0
        for idx, n in enumerate(counts):
            if n:
                groups.append((lo, lo + n, *slots.get(names[idx], (None, None))))
            lo += n
        params = self._parameters
        out = _RoutedLinear.apply(xs, self.weight, self.bias, groups, *[params[n] for n in self._bank_names])
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
            raise ArtifactError(f"merging domain '{domain}' gives non-finite weights; adapter left unmerged")
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
        return f"{super().extra_repr()}, adapters={dict(self.ranks)}, banks={self.banks}"

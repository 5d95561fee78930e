"""The towers' dropout: :class:`torch.nn.Dropout`'s contract, with a cheaper mask on CPU.

On CPU torch draws a float Bernoulli mask per element from its Mersenne Twister, then
scales and multiplies it in; that cost more than the forward GEMMs of every shipped run (32%
of the shipped config's training time; ``benchmarks/dropout_speed.py`` measures both).
:class:`Dropout` keeps element ``i`` of a call iff ``hash(seed, i) >= p * 2^32`` in one pass
of the compiled kernel
(``mdctr/csrc/dropout.cpp``), and its backward recomputes the same mask for the gradient,
so no mask is stored. The seed of each call is drawn from torch's default generator:
``torch.manual_seed`` (the trainer seeds it) makes runs repeat, and the mask does not
depend on the thread count. Each element is kept with probability ``1 - p`` (to 2^-32) and
scaled by ``1 / (1 - p)``, as with ``nn.Dropout``; the masks themselves differ from
torch's, so a run's weights differ from a torch-dropout run of the same seed by the
randomness of dropout only.

In eval mode, or with ``p = 0``, the layer is the identity. Inputs the kernel does not take
(CUDA, dtypes other than float32 and bfloat16, builds without the compiled kernels) and
scripted (exported) models in train mode run :func:`torch.nn.functional.dropout`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mdctr.core.native import kernels

_SEED_HIGH = 2 ** 63 - 1
_MAX_ELEMENTS = 2 ** 32  # the kernel's counter is 32 bits


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.p, ctx.seed = p, seed
        return kernels.hash_dropout(x, p, seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return kernels.hash_dropout(grad.contiguous(), ctx.p, ctx.seed), None, None


def hash_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x`` with element ``i`` zeroed unless ``hash(seed, i) >= p * 2^32``, the rest scaled
    by ``1 / (1 - p)`` (``x`` a float32 or bfloat16 CPU tensor, the same mask for both; the
    compiled kernels must be built)."""
    if kernels is None:
        raise RuntimeError("hash_dropout needs mdctr's compiled kernels (mdctr.core.native.status())")
    return _HashDropout.apply(x.contiguous(), float(p), int(seed))


def kernel_applies(x: torch.Tensor) -> bool:
    return (kernels is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and x.numel() < _MAX_ELEMENTS)


class Dropout(nn.Module):
    """``nn.Dropout(p)``, with the compiled hash mask for float32 and bfloat16 CPU activations
    in training."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not torch.jit.is_scripting():
            return self._eager(x)
        return F.dropout(x, self.p, training=True)  # a scripted (exported) model in train mode

    @torch.jit.unused
    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        if not kernel_applies(x):
            return F.dropout(x, self.p, training=True)
        return hash_dropout(x, self.p, int(torch.randint(_SEED_HIGH, (), dtype=torch.int64)))

    def extra_repr(self) -> str:
        return f"p={self.p}"

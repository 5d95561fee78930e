"""Mixed precision (``train.precision``).

``bfloat16`` runs the forward pass of a training step under :func:`torch.autocast`: the
matrix products (the towers' ``Linear`` layers, FinalMLP's bilinear fusion) in bfloat16;
the tables, the weights, the optimizer state and the loss stay float32, and the model's
output is widened back to float32 before the loss (:func:`float32`). The backward pass runs
outside the context, as torch's autocast wants. bfloat16 keeps float32's exponent range, so
no loss scaling is needed. Validation, test, teacher labels and exports run in float32.

Where it pays: CPUs with bfloat16 instructions (AVX512-BF16, AMX; on this project's
reference machine a FinalMLP stream's forward + backward 2.3x faster) and GPUs that support
bfloat16. Elsewhere torch emulates it and it is slower than float32: :func:`bf16_native`
tells, and the trainer warns.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("mdctr")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (oneDNN's check on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() \
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in: bfloat16 autocast, or nothing."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"train.precision must be float32 or bfloat16, got '{precision}'")


def warn_if_emulated(device: torch.device, precision: str) -> None:
    if precision == "bfloat16" and not bf16_native(device):
        log.warning("train.precision: bfloat16 on a %s without native bfloat16 (torch emulates it): "
                    "slower than float32 here", device.type.upper() if device.type == "cpu" else "GPU")


def float32(output):
    """``output`` (a tensor, or a tuple / NamedTuple of them) with its half-precision tensors
    (what autocast made) widened to float32; the rest as they are."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in (torch.bfloat16, torch.float16) else output
    if isinstance(output, tuple):
        items = [float32(o) for o in output]
        return type(output)(*items) if hasattr(output, "_fields") else tuple(items)
    return output

"""Silence library chatter that users cannot act on (no heavy imports here)."""

from __future__ import annotations

import logging
import warnings


def quiet_library_warnings() -> None:
    """Deprecation warnings from torch/torchrec internals and planner notices."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch(rec)?\.")
    warnings.filterwarnings("ignore", message=r".*(DistributedDataParallel|TypedStorage|non-writable).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed\.checkpoint")
    warnings.filterwarnings("ignore", message=r".*torch.distributed is unavailable or uninitialized.*")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)

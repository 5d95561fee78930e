"""mdctr's compiled CPU kernels (``mdctr/csrc/``, built by ``setup.py`` into ``mdctr._kernels``):
the MLoRA routed layer's grouped GEMMs (:mod:`mdctr.adapters.grouped`), a domain's own
embedding rows (:mod:`mdctr.adapters.rows`) and the towers' dropout
(:mod:`mdctr.platform.dropout`). Without them (CUDA tensors, or an install built without
torch) the same computations run as torch calls.
"""

from __future__ import annotations

import torch  # noqa: F401  (the extension links against torch's libraries: load them first)

try:
    from mdctr import _kernels as kernels
except ImportError as e:  # built without torch (an isolated build), or on a platform without a compiler
    kernels, _missing = None, str(e)
else:
    _missing = ""


def status() -> str:
    """Which implementation CPU tensors get: ``"compiled"``, or why not."""
    return "compiled" if kernels is not None else f"torch calls (kernels not built: {_missing})"

"""mdctr's compiled CPU kernels (``csrc/``, built by ``setup.py`` into
``mdctr.adapters._kernels``): the routed layer's grouped GEMMs (:mod:`mdctr.adapters.grouped`)
and a domain's own embedding rows (:mod:`mdctr.adapters.rows`). Without them (CUDA tensors,
or an install built without torch) the same computations run as torch calls.
"""

from __future__ import annotations

try:
    from mdctr.adapters import _kernels as kernels
except ImportError as e:  # built without torch (an isolated build), or on a platform without a compiler
    kernels, _missing = None, str(e)
else:
    _missing = ""


def status() -> str:
    """Which implementation CPU tensors get: ``"compiled"``, or why not."""
    return "compiled" if kernels is not None else f"torch calls (kernels not built: {_missing})"

"""Data in: the example contract, dataset readers and writers, splits and batching.

Names are imported on first use, so ``import mdctr.domains`` (and the CLI's error paths)
stay fast; the batching reader pulls in torch and torchrec only when asked for.
"""

from importlib import import_module

_EXPORTS = {
    "Batch": "batching", "DatasetReader": "batching", "prefetch": "batching", "Selection": "selection",
    "BUILTIN": "datasets", "prepare_builtin": "datasets", "resolve_data": "datasets",
    "table_rows": "ids", "prepare_movielens": "movielens",
    "DatasetSpec": "spec", "DomainSpec": "spec", "FieldKind": "spec", "FieldSpec": "spec", "Role": "spec",
    "load_spec": "spec", "SyntheticConfig": "synthetic", "generate_synthetic": "synthetic",
    "load_synthetic_config": "synthetic", "validate_dataset": "validate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"mdctr.domains.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mdctr.domains' has no attribute {name!r}")

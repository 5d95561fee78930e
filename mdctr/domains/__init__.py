"""Data in: the example contract, dataset readers and writers, splits and batching."""

from mdctr.domains.batching import Batch, DatasetReader, prefetch
from mdctr.domains.datasets import BUILTIN, prepare_builtin, resolve_data
from mdctr.domains.errors import DataContractError
from mdctr.domains.ids import table_rows
from mdctr.domains.movielens import prepare_movielens
from mdctr.domains.spec import DatasetSpec, DomainSpec, FieldKind, FieldSpec, Role, load_spec
from mdctr.domains.synthetic import SyntheticConfig, generate_synthetic, load_synthetic_config
from mdctr.domains.validate import validate_dataset

__all__ = [
    "BUILTIN", "Batch", "DataContractError", "DatasetReader", "DatasetSpec", "DomainSpec",
    "FieldKind", "FieldSpec", "Role", "SyntheticConfig", "generate_synthetic", "load_spec",
    "load_synthetic_config", "prefetch", "prepare_builtin", "prepare_movielens", "resolve_data",
    "table_rows", "validate_dataset",
]

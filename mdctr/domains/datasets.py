"""Built-in datasets and data references.

A config names its data as a directory, as ``NAME:SPLIT`` of a built-in dataset
(``movielens-100k:gender``), or as ``synthetic:CONFIG.yaml``; :func:`resolve_data` prepares
built-in and synthetic data into the cache on first use and returns its directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mdctr.core.errors import ConfigError, DataContractError
from mdctr.domains.movielens import SPLITS as MOVIELENS_SPLITS
from mdctr.domains.movielens import prepare_movielens
from mdctr.core.io import cache_dir
from mdctr.domains.spec import SPEC_FILE, DatasetSpec

#: name -> (prepare(split, out, split_seed=, overwrite=), valid splits)
BUILTIN: dict[str, tuple[Callable[..., DatasetSpec], tuple[str, ...]]] = {
    "movielens-100k": (prepare_movielens, MOVIELENS_SPLITS),
}


def prepare_builtin(name: str, split: str, out: str | Path, *, split_seed: int = 0,
                    overwrite: bool = False) -> DatasetSpec:
    if name not in BUILTIN:
        raise ConfigError(f"unknown dataset '{name}' (built-in: {', '.join(BUILTIN)})")
    prepare, splits = BUILTIN[name]
    if split not in splits:
        raise ConfigError(f"--split for {name} must be one of {', '.join(splits)}, got '{split}'")
    if split_seed < 0:
        raise ConfigError(f"--split-seed must be >= 0, got {split_seed}")
    return prepare(split, out, split_seed=split_seed, overwrite=overwrite)


def is_builtin_ref(ref: str) -> bool:
    return ":" in ref and ref.split(":", 1)[0] in BUILTIN


def _synthetic_ref(config_path: str) -> Path:
    """``synthetic:CONFIG.yaml``: generated once into the cache, keyed by the config's content."""
    import hashlib

    from mdctr.domains.synthetic import generate_synthetic, load_synthetic_config

    cfg = load_synthetic_config(config_path)
    key = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]
    out = cache_dir() / "datasets" / f"synthetic-{cfg.name}-{key}"
    _prepare_once(out, lambda: generate_synthetic(cfg, out, overwrite=out.exists(), progress=False))
    return out


def _prepare_once(out: Path, prepare: Callable[[], object]) -> None:
    """Prepare a cache entry unless present; another process finishing it first is fine."""
    if (out / SPEC_FILE).exists():
        return
    try:
        prepare()
    except OSError:
        if not (out / SPEC_FILE).exists():
            raise


def resolve_data(ref: str | Path) -> Path:
    """Directory of a data reference: an existing dataset directory or ``NAME:SPLIT``."""
    ref_s = str(ref)
    if ref_s.startswith("synthetic:"):
        return _synthetic_ref(ref_s.split(":", 1)[1])
    if is_builtin_ref(ref_s):
        name, split = ref_s.split(":", 1)
        if split not in BUILTIN[name][1]:  # named as given (prepare_builtin's message is about --split)
            raise ConfigError(f"unknown split '{split}' of {name} (one of {', '.join(BUILTIN[name][1])})", file=ref_s)
        out = cache_dir() / "datasets" / f"{name}-{split}"
        _prepare_once(out, lambda: prepare_builtin(name, split, out, overwrite=out.exists()))
        return out
    path = Path(ref_s).expanduser()
    if not (path / SPEC_FILE).exists():
        raise DataContractError(
            f"not a dataset (no {SPEC_FILE}); give a dataset directory or one of "
            + ", ".join(f"{n}:{{{'|'.join(s)}}}" for n, (_, s) in BUILTIN.items()),
            file=path,
        )
    return path

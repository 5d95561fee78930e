"""Shared fixtures: MovieLens-100K splits prepared once per session, a small synthetic dataset.

MovieLens-100K is fetched into the user's cache on first use (``mdctr.domains.sources``);
after that each split is written from the cached raw files in well under a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mdctr.domains.movielens import prepare_movielens
from mdctr.domains.sources import MovieLensRaw, load_movielens_100k
from mdctr.domains.spec import DatasetSpec, load_spec
from mdctr.domains.synthetic import ExtraField, SyntheticConfig, generate_synthetic


@pytest.fixture(scope="session")
def ml_raw() -> MovieLensRaw:
    """The raw MovieLens-100K frames (ratings, users, items), from the cache."""
    return load_movielens_100k()


@pytest.fixture(scope="session")
def ml_prepare(tmp_path_factory, ml_raw):
    """``ml_prepare(split, split_seed=0) -> Path``: a prepared split, written once per session."""
    made: dict[tuple[str, int], Path] = {}
    root = tmp_path_factory.mktemp("movielens")

    def make(split: str, split_seed: int = 0) -> Path:
        key = (split, split_seed)
        if key not in made:
            out = root / f"{split}-seed{split_seed}"
            prepare_movielens(split, out, split_seed=split_seed, raw=ml_raw)
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def ml_gender_dir(ml_prepare) -> Path:
    return ml_prepare("gender")


@pytest.fixture(scope="session")
def ml_gender_spec(ml_gender_dir) -> DatasetSpec:
    return load_spec(ml_gender_dir)


@pytest.fixture(scope="session")
def ml_gender_df(ml_gender_dir, ml_gender_spec) -> pd.DataFrame:
    """The gender split's rows as a DataFrame indexed by example_id (genres as lists)."""
    tables = [pq.read_table(ml_gender_dir / f) for f in ml_gender_spec.files]
    df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    return df.set_index("example_id", drop=False)


# -- synthetic -----------------------------------------------------------------------------

SMALL_SYNTH = dict(
    name="synth-small", seed=3, rows=3000, chunk_rows=1000, users=300, items=120, categories=10,
    tags=30, max_tags_per_item=3, dense_fields=2, extra_fields=[ExtraField(name="city", cardinality=40)],
    time={"days": 30},
)


@pytest.fixture(scope="session")
def small_synth_cfg() -> SyntheticConfig:
    """3,000 rows in 3 chunks: sparse, multi-hot (``tags``), dense and an extra id field."""
    return SyntheticConfig.model_validate(SMALL_SYNTH)


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory, small_synth_cfg) -> Path:
    """A valid small synthetic dataset. Read-only: copy it (``copy_dataset``) before editing."""
    out = tmp_path_factory.mktemp("synth") / "small"
    generate_synthetic(small_synth_cfg, out, progress=False)
    return out


@pytest.fixture
def copy_dataset(tmp_path):
    """``copy_dataset(src) -> Path``: a private, editable copy of a dataset directory."""
    n = 0

    def copy(src: Path) -> Path:
        nonlocal n
        n += 1
        dst = tmp_path / f"copy{n}"
        shutil.copytree(src, dst)
        return dst

    return copy

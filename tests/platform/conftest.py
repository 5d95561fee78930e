"""Fixtures for the platform tests: MovieLens-100K (gender) and short training configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdctr.domains.datasets import resolve_data
from mdctr.platform.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ml_gender() -> Path:
    return resolve_data("movielens-100k:gender")


def _make_config(data: Path | str, **over) -> TrainConfig:
    """The default MovieLens config, shortened for tests; ``over`` patches sections."""
    raw = {
        "data": str(data),
        "baseline": "shared",
        "model": {"tower": "mlp", "embedding_dim": 16, "hidden": [64, 32]},
        "train": {"epochs": 3, "batch_size": 1024, "patience": 2, "seed": 0, "prefetch": 1},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="session")
def make_config():
    return _make_config

"""Fixtures for the pipeline tests: a small synthetic organic + ad dataset (seeded) and a
pipeline config with short windows, so a stage trains in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdctr.domains.synthetic import SyntheticConfig, generate_synthetic
from mdctr.orchestration.config import PipelineConfig


@pytest.fixture(scope="session")
def ads_data(tmp_path_factory) -> Path:
    cfg = SyntheticConfig.model_validate({
        "name": "test-ads", "seed": 3, "rows": 40_000, "users": 400, "items": 300, "categories": 12, "tags": 20,
        "dense_fields": 1, "domains": [{"name": "feed", "role": "organic", "share": 1.0},
                                       {"name": "ad", "role": "ad", "share": 0.25}],
        "time": {"start": "2024-01-01", "days": 70, "drift": 0.5},
    })
    out = tmp_path_factory.mktemp("data") / "ads"
    generate_synthetic(cfg, out)
    return out


def _pipeline_config(data: Path | str, store: Path, **actr) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "data": str(data), "store": str(store),
        "model": {"embedding_dim": 8, "hidden": [32, 16]},
        "tpm": {"window_days": 60, "fields": ["user_id", "item_id", "category"], "embedding_dim": 8, "hidden": [16],
                "keep": 2, "train": {"epochs": 2, "batch_size": 512, "patience": 1}},
        "cpm": {"window_days": 14, "train": {"epochs": 2, "batch_size": 512, "patience": 1}},
        "actr": {"window_days": 2, "train": {"epochs": 2, "batch_size": 128, "validation": False}, **actr},
    })


@pytest.fixture(scope="session")
def pipeline_config():
    return _pipeline_config

"""Fixtures of the bad-input suite: small finished artifacts, built once per session.

``artifacts`` is a read-only directory holding

    ads/          a small synthetic dataset (4,000 rows; domains feed (organic) and ad)
    run/          a finished 1-epoch ``shared`` run on it
    adapter-ad/   an adapter for domain ad fine-tuned (1 epoch) on that run
    labels/       a teacher-label store with one version (the run labelling the valid split)
    train.yaml    the run's training config (a good one, to edit into bad ones)
    synth.yaml    a good synthetic-data config
    cadence.yaml  a pipeline config on ``ads/`` whose store is ``pstore/``
    pstore/       that pipeline's store (lineage database only, no versions)

Cases copy what they damage into their own ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mdctr.core.config import dump_model


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    from mdctr.adapters.onboard import finetune
    from mdctr.domains.synthetic import SyntheticConfig, generate_synthetic
    from mdctr.orchestration.config import PipelineConfig
    from mdctr.orchestration.stages import Pipeline
    from mdctr.platform.config import TrainConfig
    from mdctr.platform.labelling import write_labels
    from mdctr.platform.run import train

    root = tmp_path_factory.mktemp("e2e")
    generate_synthetic(SyntheticConfig.model_validate({
        "name": "e2e-ads", "seed": 3, "rows": 4000, "chunk_rows": 4000, "users": 100, "items": 60,
        "categories": 8, "tags": 10, "dense_fields": 1,
        "domains": [{"name": "feed", "role": "organic", "share": 1.0}, {"name": "ad", "role": "ad", "share": 0.25}],
        "time": {"start": "2024-01-01", "days": 30},
    }), root / "ads", progress=False)
    cfg = TrainConfig.model_validate({
        "data": str(root / "ads"), "baseline": "shared",
        "model": {"tower": "mlp", "embedding_dim": 8, "hidden": [16, 8]},
        "train": {"epochs": 1, "batch_size": 512, "patience": 1, "seed": 0, "prefetch": 1},
    })
    dump_model(cfg, root / "train.yaml")
    train(cfg, root / "run")
    finetune(root / "run", "ad", root / "ads", root / "adapter-ad", epochs=1)
    write_labels(root / "run", root / "ads", store=root / "labels", split="valid")
    (root / "synth.yaml").write_text("name: e2e-synth\nrows: 2000\nchunk_rows: 1000\nusers: 50\nitems: 30\n"
                                     "domains: [{name: a}, {name: b, role: ad}]\n")
    pcfg = PipelineConfig.model_validate({
        "data": str(root / "ads"), "store": str(root / "pstore"),
        "model": {"embedding_dim": 8, "hidden": [16]},
        "tpm": {"window_days": 20, "fields": ["user_id", "item_id", "category"], "embedding_dim": 8, "hidden": [8],
                "keep": 1, "train": {"epochs": 1, "batch_size": 512, "patience": 1}},
        "cpm": {"window_days": 7, "train": {"epochs": 1, "batch_size": 512, "patience": 1}},
        "actr": {"window_days": 2, "train": {"epochs": 1, "batch_size": 128, "validation": False}},
    })
    dump_model(pcfg, root / "cadence.yaml")
    Pipeline(pcfg).lineage.create()  # the store's lineage database, with no versions yet
    return root

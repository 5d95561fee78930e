"""Training throughput: the mdctr backbone vs. the same model in plain PyTorch, in one run.

Data: synthetic, 8 sparse fields with 1M ids in total, batch 4096, embedding dim 16,
MLP 256-128-1 tower. Variants, measured side by side in one process:

- ``mdctr``: ``Trainer.train_epoch`` end to end: Parquet -> reader (id mapping, shuffle,
  KJT) on a prefetch thread -> sharded EBC (fused rowwise Adagrad, fbgemm) -> MLP (Adam).
- ``plain_dense``: ``nn.EmbeddingBag`` with dense gradients, one Adam over every
  parameter (how DeepCTR-Torch and FuxiCTR train).
- ``plain_sparse``: ``nn.EmbeddingBag(sparse=True)`` + ``SparseAdam`` for the tables,
  Adam for the MLP.

The plain variants get their batches pre-built in memory (their best case: no data path at
all), so the ratio charges mdctr for its whole data path. Last line: one JSON object.

Usage: python benchmarks/train_throughput.py [--rows 400000] [--rounds 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mdctr.domains.batching import DatasetReader
from mdctr.domains.spec import load_spec
from mdctr.domains.synthetic import ExtraField, Signal, SyntheticConfig, generate_synthetic
from mdctr.platform.config import ModelConfig, OptimConfig, TrainConfig, TrainLoopConfig
from mdctr.platform.distributed import launch
from mdctr.platform.job import Job
from mdctr.platform.model import feature_layout
from mdctr.platform.trainer import Trainer

BATCH = 4096
DIM = 16
HIDDEN = [256, 128]


def synth_config(rows: int) -> SyntheticConfig:
    # user 400k + item 300k + category 2k + 5 context fields = 1,000,000 ids over 8 fields
    extra = [ExtraField(name=f"ctx{i}", cardinality=c) for i, c in enumerate([150_000, 100_000, 40_000, 6_000, 2_000])]
    return SyntheticConfig(name="throughput-1m-ids", rows=rows, users=400_000, items=300_000, categories=2_000,
                           tags=0, dense_fields=0, extra_fields=extra, signal=Signal(tags=0, dense=0))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mdctr_trainer(data: Path, ckpt_dir: Path) -> tuple[Trainer, int]:
    cfg = TrainConfig(data=str(data), model=ModelConfig(embedding_dim=DIM, hidden=HIDDEN),
                      optim=OptimConfig(), train=TrainLoopConfig(batch_size=BATCH, grad_clip=None))
    spec = load_spec(data)
    layout = feature_layout(spec, cfg.model, cfg.baseline)
    reader = DatasetReader(data, table_sizes=layout.reader_table_sizes)
    trainer = Trainer(Job(cfg, data, ckpt_dir, progress=False), reader, layout)
    return trainer, reader.num_rows("train") // BATCH * BATCH


class PlainModel(nn.Module):
    def __init__(self, rows: list[int], sparse: bool):
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(n, DIM, mode="sum", sparse=sparse) for n in rows)
        dims = [len(rows) * DIM, *HIDDEN]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (F, B)
        offsets = torch.arange(ids.shape[1])
        pooled = [t(ids[f], offsets) for f, t in enumerate(self.tables)]
        return self.mlp(torch.cat(pooled, dim=1)).squeeze(-1)


def prebuilt_batches(data: Path, sizes: dict[str, int], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    reader = DatasetReader(data, table_sizes=sizes)
    out = []
    for b in reader.batches("train", batch_size=BATCH, drop_last=True):
        ids = b.sparse.values().view(len(reader.keys), BATCH)
        out.append((ids.clone(), b.labels.clone()))
        if len(out) == n:
            break
    return out


def measure_plain(batches, rows: list[int], sparse: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = PlainModel(rows, sparse)
    loss_fn = nn.BCEWithLogitsLoss()
    if sparse:
        opts = [torch.optim.SparseAdam(list(model.tables.parameters()), lr=1e-3),
                torch.optim.Adam(model.mlp.parameters(), lr=1e-3)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=1e-3)]

    def step(ids, y):
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss_fn(model(ids), y).backward()
        for o in opts:
            o.step()

    for ids, y in batches[:3]:
        step(ids, y)
    t0 = time.perf_counter()
    for k in range(steps):
        ids, y = batches[k % len(batches)]
        step(ids, y)
    return steps * BATCH / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (median kept)")
    p.add_argument("--data", type=Path, help="reuse a dataset made by an earlier run")
    args = p.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        if not (data / "dataset.yaml").exists():
            generate_synthetic(synth_config(args.rows), data, progress=False)

        def work(rank: int, world: int) -> None:
            trainer, rows = mdctr_trainer(data, Path(tmp) / "ck")
            layout = trainer.layout
            tables = [layout.rows[k] for k in layout.keys]
            batches = prebuilt_batches(data, layout.reader_table_sizes, 40)
            steps = rows // BATCH
            runs: dict[str, list[float]] = {"mdctr": [], "plain_sparse": [], "plain_dense": []}
            trainer.train_epoch(0)  # warm-up: first touches, allocator, decoded-row cache
            for r in range(args.rounds):  # alternate variants so machine noise hits all alike
                t0 = time.perf_counter()
                trainer.train_epoch(1 + r)
                runs["mdctr"].append(rows / (time.perf_counter() - t0))
                result.setdefault("rss_after_mdctr_mb", rss_mb())
                runs["plain_sparse"].append(measure_plain(batches, tables, True, steps))
                runs["plain_dense"].append(measure_plain(batches, tables, False, max(10, steps // 4)))
            result["runs"] = runs
            result["tables"] = tables

        launch(work, 1)
    med = {k: statistics.median(v) for k, v in result["runs"].items()}
    print(f"fields {len(result['tables'])}, ids {sum(result['tables']):,}, batch {BATCH}, "
          f"threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'variant':<14}{'median ex/s':>14}  runs")
    for name, v in med.items():
        print(f"{name:<14}{v:>14,.0f}  " + ", ".join(f"{x:,.0f}" for x in result["runs"][name]))
    best_plain = max(med["plain_dense"], med["plain_sparse"])
    out = {
        "mdctr_examples_per_s": round(med["mdctr"]),
        "plain_dense_examples_per_s": round(med["plain_dense"]),
        "plain_sparse_examples_per_s": round(med["plain_sparse"]),
        "ratio": round(med["mdctr"] / best_plain, 3),
        "peak_rss_mb": round(rss_mb()),
        "rss_after_mdctr_mb": round(result["rss_after_mdctr_mb"]),
        "total_ids": sum(result["tables"]),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

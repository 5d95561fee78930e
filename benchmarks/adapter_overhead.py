"""Cost of MLoRA adapters, side by side in one run, on the 1M-id synthetic configuration.

- training step time of MLoRA with 8 and with 21 domains vs. the shared model, on the same
  mixed-domain batches of 4096: ``joint`` (tables, backbone and adapters train together;
  ``step_ratio_8``/``step_ratio_21``) and the second phase of ``two_phase``, the default mode
  and the MLoRA paper's (adapters train on the frozen backbone; its first phase is the
  shared model's training itself, ratio 1);
- inference latency of a merged single-domain model vs. the shared model (batch 4096);
- adapter parameters per domain as a share of the backbone's.

Last line: ``{"step_ratio_8", "step_ratio_21", "step_ratio_8_two_phase", "step_ratio_21_two_phase",
"merged_latency_ratio", "adapter_param_share"}``.

Usage: python benchmarks/adapter_overhead.py [--rows 200000] [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import BATCH, DIM, HIDDEN, synth_config  # noqa: E402

from mdctr.adapters.model import (  # noqa: E402
    adapter_layers, attach_adapters, backbone_parameter_count, freeze_backbone, is_adapter_param, parameter_share,
)
from mdctr.domains.batching import DatasetReader  # noqa: E402
from mdctr.domains.selection import Selection  # noqa: E402
from mdctr.domains.spec import load_spec  # noqa: E402
from mdctr.domains.synthetic import SynthDomain, generate_synthetic  # noqa: E402
from mdctr.platform.config import ModelConfig, TrainConfig, TrainLoopConfig  # noqa: E402
from mdctr.platform.distributed import launch  # noqa: E402
from mdctr.platform.job import Job  # noqa: E402
from mdctr.platform.model import CTRModel, FeatureLayout, feature_layout  # noqa: E402
from mdctr.platform.trainer import Trainer  # noqa: E402



def make_data(root: Path, n_domains: int, rows: int) -> Path:
    cfg = synth_config(rows).model_copy(update={"domains": [SynthDomain(name=f"d{i}") for i in range(n_domains)],
                                                "name": f"overhead-{n_domains}"})
    out = root / f"d{n_domains}"
    generate_synthetic(cfg, out, progress=False)
    return out


def build_model(cfg: TrainConfig, layout: FeatureLayout, *, adapters: bool, alpha: int, frozen: bool) -> CTRModel:
    """The job's model builder (the trainer seeds torch with ``cfg.train.seed`` before calling it)."""
    model = CTRModel(layout, cfg.model, seed=cfg.train.seed)
    if adapters:
        attach_adapters(model, layout.domain_names, alpha=alpha)
    if frozen:
        freeze_backbone(model)
    return model


def trainer_for(data: Path, ck: Path, adapters: bool, alpha: int = 8, frozen: bool = False) -> Trainer:
    """The shared model, or MLoRA: joint, or (``frozen``) two_phase's adapter phase."""
    cfg = TrainConfig(data=str(data), model=ModelConfig(embedding_dim=DIM, hidden=HIDDEN),
                      train=TrainLoopConfig(batch_size=BATCH, grad_clip=None))
    layout = feature_layout(load_spec(data), cfg.model, cfg.baseline)
    reader = DatasetReader(data, table_sizes=layout.reader_table_sizes)
    job = Job(cfg, data, ck, model=partial(build_model, adapters=adapters, alpha=alpha, frozen=frozen),
              trainable=is_adapter_param if frozen else None, progress=False)
    return Trainer(job, reader, layout)


def step_times(trainers: list[Trainer], batches, steps: int) -> list[float]:
    """Median step time of each trainer, their steps interleaved one by one on the same
    batches, so the shared machine's speed swings hit every trainer alike."""

    def step(trainer, b):
        logits = trainer.model(b.sparse, b.dense, b.domain)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b.labels)
        trainer.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.dense_opt.step()

    for trainer in trainers:
        trainer.model.train()
        for b in batches[:2]:
            step(trainer, b)
    times: list[list[float]] = [[] for _ in trainers]
    for k in range(steps):
        for trainer, ts in zip(trainers, times):
            t0 = time.perf_counter()
            step(trainer, batches[k % len(batches)])
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


@torch.no_grad()
def latencies(trainers: list[Trainer], batch, reps: int) -> list[float]:
    """Median inference latency of each trainer's model on ``batch``, calls interleaved one
    by one (as in :func:`step_times`)."""
    for trainer in trainers:
        trainer.model.eval()
        for _ in range(3):
            trainer.model(batch.sparse, batch.dense, batch.domain)
    times: list[list[float]] = [[] for _ in trainers]
    for _ in range(reps):
        for trainer, ts in zip(trainers, times):
            t0 = time.perf_counter()
            trainer.model(batch.sparse, batch.dense, batch.domain)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alpha", type=int, default=8, help="rank = max(d_out // alpha, 1), as in the configs")
    args = p.parse_args()
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {n: make_data(root, n, args.rows) for n in (8, 21)}

        def work(rank: int, world: int) -> None:
            runs: dict[str, list[float]] = {}
            for n in (8, 21):
                shared = trainer_for(data[n], root / f"ck-s{n}", adapters=False)
                mlora = trainer_for(data[n], root / f"ck-m{n}", adapters=True, alpha=args.alpha)
                phase2 = trainer_for(data[n], root / f"ck-p{n}", adapters=True, alpha=args.alpha, frozen=True)
                # MLoRA runs train on batches grouped by domain (Job(group_domains=True)); both use them
                batches = list(shared.reader.batches("train", batch_size=BATCH, drop_last=True,
                                                     group_domains=True))[:20]
                for _ in range(args.rounds):
                    s_t, m_t, p_t = step_times([shared, mlora, phase2], batches, args.steps)
                    runs.setdefault(f"shared_{n}", []).append(s_t)
                    runs.setdefault(f"mlora_{n}", []).append(m_t)
                    runs.setdefault(f"two_phase_{n}", []).append(p_t)
                if n == 8:
                    model = mlora.model
                    backbone = backbone_parameter_count(CTRModel(mlora.layout, ModelConfig(embedding_dim=DIM, hidden=HIDDEN)))
                    res["adapter_params"], res["adapter_param_share"] = parameter_share(model, "d0", backbone)
                    res["backbone_params"] = backbone
                    one = next(b for b in shared.reader.batches("test", Selection(domains=("d0",)), batch_size=BATCH, shuffle=False))
                    for layer in adapter_layers(model).values():
                        layer.merge("d0")
                    for _ in range(args.rounds):
                        s_l, m_l = latencies([shared, mlora], one, 30)
                        runs.setdefault("latency_shared", []).append(s_l)
                        runs.setdefault("latency_merged", []).append(m_l)
            res["runs"] = runs

        launch(work, 1)
    med = {k: statistics.median(v) for k, v in res["runs"].items()}
    for k, v in med.items():
        print(f"{k:<16}{1000 * v:>9.2f} ms  (runs: {', '.join(f'{1000 * x:.2f}' for x in res['runs'][k])})")
    print(f"adapter parameters per domain: {res['adapter_params']:,} of a {res['backbone_params']:,}-parameter backbone")
    out = {
        "step_ratio_8": round(med["mlora_8"] / med["shared_8"], 3),
        "step_ratio_21": round(med["mlora_21"] / med["shared_21"], 3),
        "step_ratio_8_two_phase": round(med["two_phase_8"] / med["shared_8"], 3),
        "step_ratio_21_two_phase": round(med["two_phase_21"] / med["shared_21"], 3),
        "merged_latency_ratio": round(med["latency_merged"] / med["latency_shared"], 3),
        "adapter_param_share": round(res["adapter_param_share"], 5),
    }
    out["alpha"] = args.alpha
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MLoRA vs. the baselines, per domain, over 3 seeds, on MovieLens-100K and synthetic data.

Modes: shared, shared_domain_feature, separate, mlora_joint, mlora_two_phase. Seed s uses
split seed s and initialisation seed s. Datasets: MovieLens-100K gender split
(``configs/movielens_gender_mlora.yaml`` settings) and synthetic data with 8 domains and
planted domain-specific signal (``configs/synthetic.yaml``). Prints a per-domain AUC table
(mean over seeds) and WAUC mean +- std; last line one JSON object.

Usage: python benchmarks/mlora_quality.py [--seeds 0 1 2] [--datasets movielens_gender synthetic]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mdctr.adapters.run import MLoRATrainConfig, load_config, train
from mdctr.platform.config import TrainConfig
from _seed_table import summarise

REPO = Path(__file__).resolve().parents[1]
MODES = ["shared", "shared_domain_feature", "separate", "mlora_joint", "mlora_two_phase"]
DATASETS = {
    "movielens_gender": {"base": "configs/movielens_gender_mlora.yaml", "data": "movielens-100k:gender",
                         "train": {}},
    "synthetic": {"base": "configs/movielens_gender_mlora.yaml", "data": f"synthetic:{REPO / 'configs/synthetic.yaml'}",
                  "train": {"batch_size": 2048, "epochs": 10, "patience": 2}},
}


def mode_config(dataset: str, mode: str, seed: int) -> TrainConfig:
    spec = DATASETS[dataset]
    raw = load_config(REPO / spec["base"]).model_dump(mode="json")
    raw["data"] = spec["data"]
    raw["train"].update(spec["train"])
    raw["train"].update({"seed": seed, "split_seed": seed})
    if mode.startswith("mlora_"):
        raw["adapters"]["mode"] = mode.removeprefix("mlora_")
        return MLoRATrainConfig.model_validate(raw)
    raw.pop("adapters")
    raw["baseline"] = mode
    return TrainConfig.model_validate(raw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    args = p.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            results[ds] = {}
            for mode in args.modes:
                runs = []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    m = train(mode_config(ds, mode, seed), Path(tmp) / f"{ds}-{mode}-{seed}")
                    runs.append(m)
                    print(f"{ds:<17}{mode:<23}seed {seed}  WAUC {m['wauc']:.4f}  AUC {m['auc']:.4f}  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
                results[ds][mode] = runs
    summary = summarise(results, args.seeds)
    compact = {ds: {m: {k: v[k] for k in ("wauc_mean", "wauc_std")} for m, v in modes.items()}
               for ds, modes in summary.items()}
    print(json.dumps(compact))
    return 0


if __name__ == "__main__":
    sys.exit(main())

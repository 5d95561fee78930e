"""Distillation quality: student alone, direct and auxiliary distillation, and the teacher.

Per dataset and seed s (split seed s, initialisation seed s): train the teacher
(``configs/movielens_gender_teacher.yaml``: ~2x the student's parameters), label the train
split once into a teacher-label store (``write_labels``), then train three students on the
same split: ``student`` (``configs/movielens_gender_shared.yaml``), ``aux``
(``configs/movielens_gender_student.yaml``: weight 1.0, temperature 2.0) and ``direct``
(the same with ``mode: direct``, weight 0.5, temperature 2.0). Each mode's weight and
temperature were chosen by mean validation WAUC over 3 seeds on MovieLens-100K among
aux {(0.5, 1), (1, 2), (1, 3)} and direct {(0.5, 1), (0.5, 2), (0.8, 1)}. Datasets:
MovieLens-100K gender and the 8-domain synthetic data (``configs/synthetic.yaml``). Prints
per-domain AUC and WAUC (mean +- std over seeds); last line
``{"movielens_gender": {"student": ..., "direct": ..., "aux": ..., "teacher": ...}, "synthetic": {...}}``
(mean WAUC), plus parameter counts.

Usage: python benchmarks/distill_quality.py [--seeds 0 1 2] [--datasets movielens_gender synthetic]
       [--weight W] [--temperature T] [--direct-weight 0.5] [--direct-temperature 2.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.platform.config import TrainConfig, load_train_config
from mdctr.platform.labelling import write_labels
from mdctr.platform.model import CTRModel, feature_layout
from mdctr.platform.quiet import quiet_library_warnings
from mdctr.platform.run import train
from _seed_table import summarise

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"teacher": "configs/movielens_gender_teacher.yaml", "student": "configs/movielens_gender_shared.yaml",
           "distill": "configs/movielens_gender_student.yaml"}
DATASETS = {
    "movielens_gender": {"data": "movielens-100k:gender", "train": {}},
    "synthetic": {"data": f"synthetic:{REPO / 'configs/synthetic.yaml'}",
                  "train": {"batch_size": 2048, "epochs": 10, "patience": 2}},
}


def config(dataset: str, which: str, seed: int, **distill) -> TrainConfig:
    raw = load_train_config(REPO / CONFIGS[which]).model_dump(mode="json")
    raw["data"] = DATASETS[dataset]["data"]
    raw["train"].update(DATASETS[dataset]["train"], seed=seed, split_seed=seed)
    if raw.get("distill") is not None:
        raw["distill"].update(distill)
    return TrainConfig.model_validate(raw)


def dense_and_table_params(cfg: TrainConfig) -> int:
    spec = load_spec(resolve_data(cfg.data))
    model = CTRModel(feature_layout(spec, cfg.model, cfg.baseline), cfg.model, device="meta")
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--weight", type=float, default=None, help="aux distill.weight (default: the student config's)")
    p.add_argument("--temperature", type=float, default=None, help="aux distill.temperature (default: the config's)")
    p.add_argument("--direct-weight", type=float, default=0.5)
    p.add_argument("--direct-temperature", type=float, default=2.0)
    args = p.parse_args()
    quiet_library_warnings()
    over = {k: v for k, v in (("weight", args.weight), ("temperature", args.temperature)) if v is not None}
    results: dict = {}
    params: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            results[ds] = {m: [] for m in ("student", "direct", "aux", "teacher")}
            t_cfg, s_cfg = config(ds, "teacher", 0), config(ds, "student", 0)
            params[ds] = {"teacher": dense_and_table_params(t_cfg), "student": dense_and_table_params(s_cfg)}
            print(f"{ds}: teacher {params[ds]['teacher']:,} parameters, student {params[ds]['student']:,} "
                  f"({params[ds]['teacher'] / params[ds]['student']:.2f}x)", flush=True)
            for seed in args.seeds:
                store = Path(tmp) / f"labels-{ds}-{seed}"
                runs = {"teacher": config(ds, "teacher", seed), "student": config(ds, "student", seed),
                        "direct": config(ds, "distill", seed, mode="direct", store=str(store),
                                         weight=args.direct_weight, temperature=args.direct_temperature),
                        "aux": config(ds, "distill", seed, mode="aux", store=str(store), **over)}
                for mode, cfg in runs.items():
                    t0 = time.perf_counter()
                    out = Path(tmp) / f"{ds}-{mode}-{seed}"
                    m = train(cfg, out)
                    if mode == "teacher":  # label the train split once; both distilled students read it
                        write_labels(out, cfg.data, store=store, split="train", split_seed=seed)
                    results[ds][mode].append(m)
                    print(f"{ds:<17}{mode:<9}seed {seed}  WAUC {m['wauc']:.4f}  AUC {m['auc']:.4f}  "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarise(results, args.seeds)
    for ds in summary:
        s = summary[ds]
        print(f"{ds}: aux - student {s['aux']['wauc_mean'] - s['student']['wauc_mean']:+.4f} WAUC, "
              f"aux - direct {s['aux']['wauc_mean'] - s['direct']['wauc_mean']:+.4f}")
    out = {ds: {m: v["wauc_mean"] for m, v in modes.items()} for ds, modes in summary.items()}
    out["parameters"] = params
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""New-domain onboarding: an adapter fine-tuned on a frozen backbone vs. a joint MLoRA model
that had the domain from the start, on synthetic data (``configs/synthetic.yaml``).

1. pretrain: MLoRA joint on every domain but the held-out one (wall time T_pre);
2. finetune: the held-out domain's adapter on that frozen backbone (wall time T_ft);
3. reference: MLoRA joint on all domains; its test AUC on the held-out domain.

Last line: ``{"domain", "pretrain_s", "finetune_s", "time_share", "finetune_auc", "joint_auc", "auc_gap"}``.

Usage: python benchmarks/adapter_onboarding.py [--domain d5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mdctr.adapters.onboard import finetune
from mdctr.adapters.run import MLoRATrainConfig, load_config, train
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def config(data: str, seed: int, domains: list[str] | None) -> MLoRATrainConfig:
    raw = load_config(REPO / "configs/movielens_gender_mlora.yaml").model_dump(mode="json")
    raw["data"] = data
    raw["train"].update({"seed": seed, "split_seed": seed, "batch_size": 2048, "epochs": 10, "domains": domains})
    raw["adapters"]["mode"] = "joint"
    return MLoRATrainConfig.model_validate(raw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domain", default="d5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="adapter learning rate (default: the config's dense lr)")
    args = p.parse_args()
    data = f"synthetic:{REPO / 'configs/synthetic.yaml'}"
    names = load_spec(resolve_data(data)).domain_names
    if args.domain not in names:
        raise SystemExit(f"--domain must be one of {names}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(config(data, args.seed, [d for d in names if d != args.domain]), Path(tmp) / "base")
        pretrain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        meta = finetune(Path(tmp) / "base", args.domain, data, Path(tmp) / "adapter", seed=args.seed, lr=args.lr)
        finetune_s = time.perf_counter() - t0
        joint = train(config(data, args.seed, None), Path(tmp) / "joint")
    ft_auc = meta["metrics"]["domains"][args.domain]["auc"]
    joint_auc = joint["domains"][args.domain]["auc"]
    print(f"pretrain (without {args.domain}) {pretrain_s:.1f} s; finetune {finetune_s:.1f} s "
          f"({100 * finetune_s / pretrain_s:.1f}%); adapter training alone {meta['train_seconds']} s")
    print(f"{args.domain} test AUC: finetuned adapter {ft_auc:.4f}, joint MLoRA from the start {joint_auc:.4f}")
    print(json.dumps({"domain": args.domain, "pretrain_s": round(pretrain_s, 1), "finetune_s": round(finetune_s, 1),
                      "time_share": round(finetune_s / pretrain_s, 3), "finetune_auc": ft_auc,
                      "joint_auc": joint_auc, "auc_gap": round(joint_auc - ft_auc, 5)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

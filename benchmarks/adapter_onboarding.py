"""New-domain onboarding: an adapter fine-tuned on a frozen backbone vs. a joint MLoRA model
that had the domain from the start, on synthetic data (``configs/synthetic.yaml``).

1. pretrain: MLoRA joint on every domain but the held-out one (wall time T_pre);
2. finetune: the held-out domain's adapter on that frozen backbone (wall time T_ft), once per
   ``--rows`` mode (which embedding rows the adapter learns besides the tower adapter:
   ``none``, ``cold`` = the domain's ids the backbone never trained, ``all`` = a residual
   for every row the domain uses, the default), at finetune's default lr unless ``--lr``;
3. reference: MLoRA joint on all domains; its test AUC on the held-out domain.

Last line: ``{"domain", "pretrain_s", "joint_auc", "rows": {MODE: {"finetune_s", "time_share",
"finetune_auc", "auc_gap", "parameter_share"}}}``.

Usage: python benchmarks/adapter_onboarding.py [--domain d5] [--seed 0] [--rows none cold all]
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
    p.add_argument("--lr", type=float, default=None, help="adapter learning rate (default: finetune's, 5x the config's dense lr)")
    p.add_argument("--rows", nargs="+", default=["none", "cold", "all"], choices=["none", "cold", "all"])
    args = p.parse_args()
    data = f"synthetic:{REPO / 'configs/synthetic.yaml'}"
    names = load_spec(resolve_data(data)).domain_names
    if args.domain not in names:
        raise SystemExit(f"--domain must be one of {names}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(config(data, args.seed, [d for d in names if d != args.domain]), Path(tmp) / "base")
        pretrain_s = time.perf_counter() - t0
        metas = {}
        for rows in args.rows:
            t0 = time.perf_counter()
            meta = finetune(Path(tmp) / "base", args.domain, data, Path(tmp) / f"adapter-{rows}", seed=args.seed,
                            lr=args.lr, rows=rows)
            metas[rows] = (time.perf_counter() - t0, meta)
        joint = train(config(data, args.seed, None), Path(tmp) / "joint")
    joint_auc = joint["domains"][args.domain]["auc"]
    print(f"pretrain (without {args.domain}) {pretrain_s:.1f} s; joint MLoRA from the start: "
          f"{args.domain} test AUC {joint_auc:.4f}")
    out = {}
    for rows, (finetune_s, meta) in metas.items():
        ft_auc = meta["metrics"]["domains"][args.domain]["auc"]
        print(f"rows={rows:<5} finetune {finetune_s:5.1f} s ({100 * finetune_s / pretrain_s:4.1f}%), "
              f"{args.domain} test AUC {ft_auc:.4f} (gap {joint_auc - ft_auc:+.4f}), adapter "
              f"{meta['parameters']:,} parameters ({100 * meta['parameter_share']:.1f}% of the backbone)")
        out[rows] = {"finetune_s": round(finetune_s, 1), "time_share": round(finetune_s / pretrain_s, 3),
                     "finetune_auc": ft_auc, "auc_gap": round(joint_auc - ft_auc, 5),
                     "parameter_share": meta["parameter_share"]}
    print(json.dumps({"domain": args.domain, "pretrain_s": round(pretrain_s, 1), "joint_auc": joint_auc, "rows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

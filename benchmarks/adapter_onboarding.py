"""New-domain onboarding: an adapter fine-tuned on a frozen backbone vs. a joint MLoRA model
that had the domain from the start, on synthetic data (``configs/synthetic.yaml``).

1. pretrain: MLoRA joint on every domain but the held-out one (wall time T_pre);
2. finetune: the held-out domain's adapter on that frozen backbone (wall time T_ft), once per
   ``--rows`` mode (which embedding rows the adapter learns besides the tower adapter:
   ``none``, ``cold`` = the domain's ids the backbone never trained, ``all`` = a residual
   for every row the domain uses, the default), at finetune's default lr unless ``--lr``;
3. reference: MLoRA joint on all domains; its test AUC on the held-out domain.

Wall times are noisy on a shared machine, so steps 1-2 run ``--repeats`` times, each
pretraining followed by its fine-tunes; a mode's ``time_share`` is the median over repeats
of finetune / pretraining within a repeat (neighbours in time share the machine's speed),
``pretrain_s`` / ``finetune_s`` the medians. Training is seeded: every repeat trains the same
weights (checked: equal test AUCs), so AUCs come from one.

Fine-tuning's default learning rate (``FINETUNE_LR_SCALE`` = 5x the backbone's dense lr,
in ``mdctr/adapters/onboard.py``) comes from runs of this benchmark with ``--lr``: the
adapter starts at zero on a frozen backbone; at 1x its validation AUC was still improving
after as many epochs as the pretraining ran, at 5x it peaks after ~3 epochs (early stopping
keeps that epoch), as LoRA fine-tuning usually runs at a higher lr than full training; 10x
was faster still but unstable on MovieLens' female domain (test AUC 0.752-0.759 over reruns,
against 0.762 at 5x).

Last line: ``{"domain", "pretrain_s", "joint_auc", "rows": {MODE: {"finetune_s", "time_share",
"time_shares", "finetune_auc", "auc_gap", "parameter_share"}}}``.

Usage: python benchmarks/adapter_onboarding.py [--domain d5] [--seed 0] [--rows none cold all] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    p.add_argument("--repeats", type=int, default=3, help="pretraining + fine-tunes this many times, for the timings")
    args = p.parse_args()
    data = f"synthetic:{REPO / 'configs/synthetic.yaml'}"
    names = load_spec(resolve_data(data)).domain_names
    if args.domain not in names:
        raise SystemExit(f"--domain must be one of {names}")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    pretrain_s: list[float] = []
    runs: dict[str, list[tuple[float, dict]]] = {rows: [] for rows in args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t0 = time.perf_counter()
            train(config(data, args.seed, [d for d in names if d != args.domain]), Path(tmp) / f"base-{r}")
            pretrain_s.append(time.perf_counter() - t0)
            for rows in args.rows:
                t0 = time.perf_counter()
                meta = finetune(Path(tmp) / f"base-{r}", args.domain, data, Path(tmp) / f"adapter-{rows}-{r}",
                                seed=args.seed, lr=args.lr, rows=rows)
                runs[rows].append((time.perf_counter() - t0, meta))
        joint = train(config(data, args.seed, None), Path(tmp) / "joint")
    joint_auc = joint["domains"][args.domain]["auc"]
    pre = statistics.median(pretrain_s)
    print(f"pretrain (without {args.domain}) {pre:.1f} s (runs: {', '.join(f'{t:.1f}' for t in pretrain_s)}); "
          f"joint MLoRA from the start: {args.domain} test AUC {joint_auc:.4f}")
    out = {}
    for rows, results in runs.items():
        meta = results[0][1]
        aucs = {m["metrics"]["domains"][args.domain]["auc"] for _, m in results}
        if len(aucs) > 1:
            raise SystemExit(f"rows={rows}: repeats trained different adapters (test AUCs {sorted(aucs)})")
        ft_auc = meta["metrics"]["domains"][args.domain]["auc"]
        shares = [ft / pre_t for (ft, _), pre_t in zip(results, pretrain_s)]
        share, finetune_s = statistics.median(shares), statistics.median(ft for ft, _ in results)
        print(f"rows={rows:<5} finetune {finetune_s:5.1f} s ({100 * share:4.1f}%; repeats "
              f"{', '.join(f'{100 * x:.1f}%' for x in shares)}), {args.domain} test AUC {ft_auc:.4f} "
              f"(gap {joint_auc - ft_auc:+.4f}), adapter {meta['parameters']:,} parameters "
              f"({100 * meta['parameter_share']:.1f}% of the backbone)")
        out[rows] = {"finetune_s": round(finetune_s, 2), "time_share": round(share, 3),
                     "time_shares": [round(x, 3) for x in shares], "finetune_auc": ft_auc,
                     "auc_gap": round(joint_auc - ft_auc, 5), "parameter_share": meta["parameter_share"]}
    print(json.dumps({"domain": args.domain, "pretrain_s": round(pre, 1), "joint_auc": joint_auc, "rows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

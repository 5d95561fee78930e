"""New-domain onboarding: an adapter fine-tuned on a frozen backbone vs. a joint MLoRA model
that had the domain from the start, on synthetic data (``configs/synthetic.yaml``).

1. pretrain: MLoRA joint on every domain but the held-out one (wall time T_pre);
2. finetune: the held-out domain's adapter on that frozen backbone (wall time T_ft), once per
   ``--rows`` mode (which embedding rows the adapter learns besides the tower adapter:
   ``none``, ``cold`` = the domain's ids the backbone never trained, ``all`` = a residual
   for every row the domain uses, the default), at finetune's default lr unless ``--lr``;
3. reference: MLoRA joint on all domains; its test AUC on the held-out domain.

Wall times are noisy on a shared machine, so for the first of ``--seeds`` steps 1-2 run
``--repeats`` times, each pretraining followed by its fine-tunes (the other seeds once); a
mode's ``time_share`` is the median over all pairs of finetune / pretraining within a pair
(neighbours in time share the machine's speed), ``pretrain_s`` / ``finetune_s`` the medians.
Training is seeded: every repeat of a seed trains the same weights (checked: equal test
AUCs). The AUC gap is per seed (seed s: split seed and initialisation seed s, for the
pretraining, the fine-tune and the joint reference) and its mean: on one seed the
held-out domain's test AUC moves by up to ~0.005 with dropout's randomness alone (the
switch to the hash-mask dropout moved seed 0's joint AUC from 0.7341 to 0.7391).

Fine-tuning's default learning rate (``FINETUNE_LR_SCALE`` = 5x the backbone's dense lr,
in ``mdctr/adapters/onboard.py``) comes from runs of this benchmark with ``--lr``: the
adapter starts at zero on a frozen backbone; at 1x its validation AUC was still improving
after as many epochs as the pretraining ran, at 5x it peaks after ~3 epochs (early stopping
keeps that epoch), as LoRA fine-tuning usually runs at a higher lr than full training; 10x
was faster still but unstable on MovieLens' female domain (test AUC 0.752-0.759 over reruns,
against 0.762 at 5x).

Measured (2026-12-01, the shipped FinalMLP MLoRA config, hash-mask dropout, ``--rows all``):
fine-tune 4.3 s = 8.7% of a 47.9 s pretraining (5 pairs: 8.4-11.3%); d5 test AUC gap to the
joint model +0.0031 on the mean of seeds 0-2 (+0.0059 / -0.0028 / +0.0061). With torch's
dropout the fine-tune took 14.9% (dropout was 39% of its training time).

Last line: ``{"domain", "seeds", "pretrain_s", "joint_auc", "rows": {MODE: {"finetune_s", "time_share",
"time_shares", "finetune_auc", "auc_gap", "auc_gaps", "parameter_share"}}}`` (AUCs and gaps: mean over
seeds; ``auc_gaps``: per seed).

Usage: python benchmarks/adapter_onboarding.py [--domain d5] [--seeds 0 1 2] [--rows none cold all] [--repeats 3]
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
    # rows mode -> seed -> [(finetune seconds, adapter.json)] over that seed's repeats
    runs: dict[str, dict[int, list[tuple[float, dict]]]] = {rows: {s: [] for s in args.seeds} for rows in args.rows}
    joint_auc: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for r in range(args.repeats if seed == args.seeds[0] else 1):
                base = Path(tmp) / f"base-{seed}-{r}"
                t0 = time.perf_counter()
                train(config(data, seed, [d for d in names if d != args.domain]), base)
                pretrain_s.append(time.perf_counter() - t0)
                for rows in args.rows:
                    t0 = time.perf_counter()
                    meta = finetune(base, args.domain, data, Path(tmp) / f"adapter-{rows}-{seed}-{r}",
                                    seed=seed, lr=args.lr, rows=rows)
                    runs[rows][seed].append((time.perf_counter() - t0, meta))
            joint = train(config(data, seed, None), Path(tmp) / f"joint-{seed}")
            joint_auc[seed] = joint["domains"][args.domain]["auc"]
    pre = statistics.median(pretrain_s)
    print(f"pretrain (without {args.domain}) {pre:.1f} s (runs: {', '.join(f'{t:.1f}' for t in pretrain_s)}); "
          f"joint MLoRA from the start: {args.domain} test AUC "
          f"{', '.join(f'{joint_auc[s]:.4f}' for s in args.seeds)} (seeds {args.seeds})")
    out = {}
    for rows, by_seed in runs.items():
        ft_auc = {}
        for seed, results in by_seed.items():
            aucs = {m["metrics"]["domains"][args.domain]["auc"] for _, m in results}
            if len(aucs) > 1:
                raise SystemExit(f"rows={rows}, seed {seed}: repeats trained different adapters (test AUCs {sorted(aucs)})")
            ft_auc[seed] = aucs.pop()
        pairs = [ft for results in by_seed.values() for ft, _ in results]
        shares = [ft / pre_t for ft, pre_t in zip(pairs, pretrain_s)]
        share, finetune_s = statistics.median(shares), statistics.median(pairs)
        gaps = [joint_auc[s] - ft_auc[s] for s in args.seeds]
        meta = by_seed[args.seeds[0]][0][1]
        print(f"rows={rows:<5} finetune {finetune_s:5.1f} s ({100 * share:4.1f}%; pairs "
              f"{', '.join(f'{100 * x:.1f}%' for x in shares)}), {args.domain} test AUC "
              f"{', '.join(f'{ft_auc[s]:.4f}' for s in args.seeds)}, gap to joint {statistics.mean(gaps):+.4f} "
              f"(per seed {', '.join(f'{g:+.4f}' for g in gaps)}), adapter {meta['parameters']:,} parameters "
              f"({100 * meta['parameter_share']:.1f}% of the backbone)")
        out[rows] = {"finetune_s": round(finetune_s, 2), "time_share": round(share, 3),
                     "time_shares": [round(x, 3) for x in shares],
                     "finetune_auc": round(statistics.mean(ft_auc.values()), 6),
                     "auc_gap": round(statistics.mean(gaps), 5), "auc_gaps": [round(g, 5) for g in gaps],
                     "parameter_share": meta["parameter_share"]}
    print(json.dumps({"domain": args.domain, "seeds": args.seeds, "pretrain_s": round(pre, 1),
                      "joint_auc": round(statistics.mean(joint_auc.values()), 6), "rows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What averaging the logits of independently trained copies of the shipped config buys.

For each split and split seed s, ``--members`` runs of ``configs/movielens_gender_shared.yaml``
(only ``data:`` changed) are trained on the same split with initialisation seeds
s, s + 100, s + 200, ... (which also reorders their batches); their validation and test
logits are averaged (the mean logit, as one served model would), and the WAUC of that
ensemble is compared with each single run's. Nothing here is a shipped mode: it measures
how much one training run leaves on the table (issue 21), at ``--members`` times its cost.

Measured (2026-12-01, hash-mask dropout, 2 members, split seeds 0-4, test WAUC; validation
in brackets): gender single 0.7898 (0.7928), ensemble 0.7921 (0.7959); age3 0.7892 (0.7924)
-> 0.7919 (0.7957); occupation 0.7867 (0.7894) -> 0.7889 (0.7924). So +0.0022 to +0.0027
over one run, +0.0042 / +0.0049 / +0.0048 over the 8-epoch MLP default issue 21 was filed
against, at two runs' cost (22-34 s). Two FinalMLP towers on the halves of one 32-dim
embedding, trained together in one run on their mean logit (one loss; a scratch trial),
gave gender 0.7896: no gain, a wider model rather than an ensemble. Each member on its own
loss (the same batches, one early stop on the mean logit's validation WAUC, the members'
halves of a row sharing its row-wise Adagrad state): 0.7905, 19-28 s a run. With their own
tables too (own Adagrad state, gradients clipped per member; a scratch ``model.members: 2``,
2026-12-01): 0.7903 (validation 0.7934), at 2.2-3.5x the epoch cost. Most of the gain needs
what separate runs have: their own batch order and their own best epoch. What one run can
have instead is ``train.average`` (docs/benchmarks.md, "Epoch averaging"): the mean of the
weights of its last epochs, at no extra epochs, gets as far as two averaged runs.

Last line: one JSON object ``{split: {"single": mean test WAUC of the first member,
"ensemble", "single_valid", "ensemble_valid", "delta_per_seed"}}``.

Usage: python benchmarks/seed_ensemble.py [--splits gender age3 occupation] [--seeds 0 1 2 3 4] [--members 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mdctr.adapters.run import load_config, train
from mdctr.core.config import with_overrides
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.platform.launcher import resolve_launcher
from mdctr.platform.metrics import compute_metrics
from mdctr.platform.outputs import PredictionsOutput, read_predictions
from mdctr.platform.run import open_run, prediction_job

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "movielens_gender_shared.yaml"
SPLITS = ("valid", "test")


def member_logits(cfg, data: Path, run_dir: Path, split_seed: int, seed: int, tmp: Path) -> dict:
    """Train one member; its predictions on the validation and test rows."""
    train(cfg, run_dir, split_seed=split_seed, seed=seed)
    out = {}
    for split in SPLITS:
        f = tmp / f"{run_dir.name}-{split}.parquet"
        resolve_launcher(None).launch(prediction_job(open_run(run_dir), data, split, PredictionsOutput(f, "eval")))
        out[split] = read_predictions(f)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=["gender", "age3", "occupation"],
                   choices=["gender", "age3", "occupation"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--members", type=int, default=2)
    args = p.parse_args()
    if args.members < 2:
        raise SystemExit("--members must be >= 2")
    base = load_config(CONFIG).model_copy(update={"tune": None})
    result = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for split_name in args.splits:
            cfg = with_overrides(base, {"data": f"movielens-100k:{split_name}"})
            data = resolve_data(cfg.data)
            names = load_spec(data).domain_names
            rows = []
            for s in args.seeds:
                members = [member_logits(cfg, data, tmp / f"{split_name}-{s}-{m}", s, s + 100 * m, tmp)
                           for m in range(args.members)]
                row = {}
                for split in SPLITS:
                    first = members[0][split]
                    if not all(torch.equal(first.example_id, m[split].example_id) for m in members):
                        raise SystemExit(f"{split_name} seed {s}: members predicted different {split} rows")
                    mean_logit = torch.stack([m[split].logits for m in members]).mean(0)
                    row[split] = compute_metrics(mean_logit, first.labels, first.domain, names, split=split)["wauc"]
                    row[f"single_{split}"] = compute_metrics(first.logits, first.labels, first.domain, names,
                                                             split=split)["wauc"]
                rows.append(row)
                print(f"{split_name:<11}seed {s}  single test WAUC {row['single_test']:.4f} (valid "
                      f"{row['single_valid']:.4f})  ensemble of {args.members} {row['test']:.4f} (valid {row['valid']:.4f})",
                      flush=True)
            result[split_name] = {
                "single": round(statistics.mean(r["single_test"] for r in rows), 5),
                "ensemble": round(statistics.mean(r["test"] for r in rows), 5),
                "single_valid": round(statistics.mean(r["single_valid"] for r in rows), 5),
                "ensemble_valid": round(statistics.mean(r["valid"] for r in rows), 5),
                "delta_per_seed": [round(r["test"] - r["single_test"], 5) for r in rows]}
            r = result[split_name]
            print(f"{split_name}: single {r['single']:.4f} (valid {r['single_valid']:.4f}), ensemble "
                  f"{r['ensemble']:.4f} (valid {r['ensemble_valid']:.4f}), {r['ensemble'] - r['single']:+.4f}", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

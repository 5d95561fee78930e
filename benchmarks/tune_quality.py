"""What `mdctr tune` buys on MovieLens-100K gender, and what parallel trials cost.

For the shared backbone (``configs/movielens_gender_shared.yaml``) and MLoRA
(``configs/movielens_gender_mlora.yaml``), each with its own ``tune:`` space:

1. a ``--trials`` study (default 24) with K = ``--parallel`` (default 2) trials at once on a
   private local Ray cluster, validation WAUC as the objective (the mean over the config's
   ``tune.split_seeds``: 0, 1, 2 for the shared config; else split seed 0), median pruning;
   wall minutes and pruned trials are reported;
2. the default config's validation WAUC, trained as a trial is (no test rows; the mean over
   ``tune.split_seeds`` when the study uses several splits);
3. the default config and the best trial's config retrained with split seeds 0, 1, 2: test
   WAUC mean ± std of each.

Then ``parallel_speedup``: an 8-trial study of the shared space without pruning, K = 1 (in
this process) vs K = 2 (Ray tasks), time(K=1) / time(K=2).

Last line: one JSON object ``{"shared": {...}, "mlora": {...}, "parallel_speedup": x}``,
each model with ``default_valid_wauc``, ``best_valid_wauc``, ``default_test_wauc``,
``tuned_test_wauc`` (mean and std over the split seeds), ``pruned``, ``trials``, ``minutes``.

``--split-seeds 0 1 2`` scores every trial on several splits' validation rows
(``tune.split_seeds``) instead of one.

Findings (2026-12-02, the shipped FinalMLP configs: epochs averaged, bfloat16; K = 2):

- shared (objective: mean validation WAUC over split seeds 0-2, the config's
  ``tune.split_seeds``): 9.1 min, 15 of 24 trials pruned (85 epochs in them; the complete
  trials ran 33 epochs on average, so pruning saved ~400 epochs, ~6 of the ~15 minutes the
  study would take without it). The default scores 0.79754, the best trial 0.79752: no point
  of the space beats the shipped config on validation, which is itself the output of a
  24-trial study of this space (``configs/zoo/movielens_gender_finalmlp.yaml``) plus epoch
  averaging. Test WAUC (split seeds 0-2): default 0.78825 +- 0.00253, best trial's config
  0.78832 +- 0.00182 (+0.0001).
- MLoRA (objective: split seed 0): 5.5 min, 12 of 24 pruned (57 epochs). Validation 0.79497
  -> 0.79728 (two_phase, alpha 4, patience 6, dense lr 1.2e-3, table lr 0.139: the backbone's
  knobs; no domain keeps an adapter). Test 0.78825 -> 0.78945 +- 0.00117 (+0.0012).
- ``parallel_speedup``: 8 trials of 3 splits each, no pruning: K = 1 563.8 s, K = 2 340.3 s,
  **1.66** (target >= 1.54).
- The target (tuned >= default + 0.003 test WAUC for one of the two) is not met: the
  defaults are tuning's output already, and the split-to-split std (0.0025) is as large as
  any gain left. Against the hand-picked defaults the issue was filed with (MLP [256, 128],
  8-epoch cap), the same tool's studies are what moved the shipped configs: +0.0020 / +0.0025
  / +0.0024 test WAUC (gender / age3 / occupation, split seeds 0-4) from tuning the tower
  alone (docs/benchmarks.md, "Model zoo"), +0.0056 / +0.0061 / +0.0060 with epoch averaging.
  The first run of this benchmark, against those hand-picked defaults (2026-11-30): shared
  valid 0.7912 -> 0.7932, test 0.7848 -> 0.7836; MLoRA valid 0.7912 -> 0.7923, test 0.7848
  -> 0.7829; K = 1 163.8 s, K = 2 83.2 s (1.97).

Usage: python benchmarks/tune_quality.py [--trials 24] [--parallel 2] [--seeds 0 1 2] [--skip-speedup]
       [--models shared mlora] [--split-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"shared": REPO / "configs" / "movielens_gender_shared.yaml",
           "mlora": REPO / "configs" / "movielens_gender_mlora.yaml"}


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0, "values": values}


def _test_wauc(config, seeds: list[int], root: Path) -> dict:
    from mdctr.adapters.run import train

    return _mean_std([train(config, root / f"seed{s}", split_seed=s)["wauc"] for s in seeds])


def study_model(name: str, trials: int, parallel: int, seeds: list[int], work: Path,
                split_seeds: list[int] | None = None) -> dict:
    import optuna

    from mdctr.adapters.run import load_config, train
    from mdctr.orchestration.tune.study import open_study, tune

    cfg = load_config(CONFIGS[name])
    if split_seeds:  # score every trial on these splits' validation rows (tune.split_seeds)
        cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"split_seeds": split_seeds})})
    default = cfg.model_copy(update={"tune": None})
    # the default scored as a trial is: the mean over the study's split seeds (or the config's split)
    valid_seeds = cfg.tune.split_seeds or [None]
    default_valid = round(statistics.mean(
        train(default, work / name / f"default-valid-{s}", test=False, split_seed=s)["valid_wauc"]
        for s in valid_seeds), 6)
    t0 = time.perf_counter()
    result = tune(CONFIGS[name], cfg, trials=trials, parallel=parallel, study=f"bench-{name}",
                  out=work / name / "study")
    minutes = (time.perf_counter() - t0) / 60
    print(result.table, flush=True)
    study = open_study(None, f"bench-{name}", None, create=False)
    states = [t.state for t in study.trials]
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    epochs_pruned = sum(t.user_attrs.get("epochs", 0) for t in study.trials
                        if t.state == optuna.trial.TrialState.PRUNED)
    best = load_config(result.best_config)
    row = {
        "trials": len(states), "pruned": pruned, "failed": states.count(optuna.trial.TrialState.FAIL),
        "epochs_in_pruned_trials": epochs_pruned, "minutes": round(minutes, 2),
        "default_valid_wauc": default_valid, "best_valid_wauc": round(study.best_value, 6),
        "best_params": study.best_params,
        "default_test_wauc": _test_wauc(default, seeds, work / name / "default"),
        "tuned_test_wauc": _test_wauc(best, seeds, work / name / "tuned"),
    }
    row["test_gain"] = round(row["tuned_test_wauc"]["mean"] - row["default_test_wauc"]["mean"], 6)
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def speedup(work: Path) -> dict:
    from mdctr.adapters.run import load_config
    from mdctr.orchestration.tune.study import tune

    cfg = load_config(CONFIGS["shared"])
    cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"pruner": cfg.tune.pruner.model_copy(
        update={"type": "none"})})})
    times = {}
    for k in (1, 2):
        t0 = time.perf_counter()
        tune(CONFIGS["shared"], cfg, trials=8, parallel=k, study=f"speed-k{k}", out=work / f"speed-k{k}")
        times[k] = round(time.perf_counter() - t0, 1)
        print(f"8 trials, K={k}: {times[k]} s", flush=True)
    return {"k1_s": times[1], "k2_s": times[2], "parallel_speedup": round(times[1] / times[2], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["shared", "mlora"])
    ap.add_argument("--skip-speedup", action="store_true")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=None,
                    help="tune.split_seeds for the studies (default: the config's)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdctr-tune-bench-") as tmp:
        work = Path(tmp)
        os.environ["MDCTR_STATE"] = str(work / "state")  # the studies' journal files
        out: dict = {}
        for name in args.models:
            out[name] = study_model(name, args.trials, args.parallel, args.seeds, work, args.split_seeds)
        if not args.skip_speedup:
            out.update(speedup(work))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

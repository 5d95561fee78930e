"""The towers side by side (MLP, DCNv2, DeepFM, FinalMLP) on MovieLens-100K's three user splits.

Every tower runs one config, unchanged on every split and seed except ``data:`` (and
``model.tower``): by default ``configs/movielens_gender_shared.yaml`` with ``model.tower``
replaced, or a tuned config of its own (``--config finalmlp=PATH``; its ``model.tower`` must
be that tower). A config's ``tune:`` section is dropped. Splits: ``gender`` (F/M), ``age3``
(under-25, 25-34, 35+), ``occupation`` (21 domains). Seed s uses split seed s and
initialisation seed s (default 0-4).

Prints per split the per-domain test AUC of each tower (mean over seeds), then one table:
test AUC and WAUC mean +- std over seeds, parameters (tables + tower, and the tower alone),
seconds per training epoch (mean over every trained epoch of every seed, from the run's
``history.json``) and each seed's best (kept) epoch (``avg``: the average of
``train.average``). Last line: one JSON object ``{tower: {split: {"auc_mean", "auc_std",
"wauc_mean", "wauc_std", "params", "tower_params", "sec_per_epoch", "best_epochs",
"run_seconds", "valid_wauc_mean"}}}`` (``run_seconds``: a run's wall time, mean over seeds;
``valid_wauc_mean``: the kept model's validation WAUC, mean over seeds: what a choice
between configs may look at). ``--average`` / ``--patience`` set ``train.average`` and
``train.patience`` in every tower's config (the shipped config has both).

Findings (2026-11-30; README "Measured"): untuned, on the shipped config's settings, test
WAUC gender / age3 / occupation: mlp 0.7892 / 0.7884 / 0.7847, finalmlp 0.7877 / 0.7869 /
0.7837, deepfm 0.7865 / 0.7869 / 0.7834, dcnv2 0.7863 / 0.7860 / 0.7830. Tuned per tower
(``configs/zoo``, ``--config TOWER=configs/zoo/movielens_gender_TOWER.yaml``): mlp 0.7890 /
0.7884 / 0.7857 (validation +0.0005 over the shipped mlp, 4x the parameters), dcnv2 0.7887 /
0.7883 / 0.7850, deepfm 0.7869 / 0.7864 / 0.7837, finalmlp 0.7899 / 0.7895 / 0.7865 (validation
0.7933 / 0.7930 / 0.7897, the best on every split). On MovieLens-100K every tower ends within
0.003 of the others; the split-to-split std is 0.005-0.007. The shipped configs now use that
FinalMLP (the untuned rows above are the former MLP default's settings; with the FinalMLP
default every tower runs on FinalMLP's settings). The recipe study on top of it
(``configs/zoo/movielens_gender_finalmlp_recipe.yaml``, its best trial as ``--config``):
validation 0.7934 / 0.7929 / 0.7896, the same as without it, so the recipe knobs stay off
(docs/benchmarks.md). With ``--average 0 --patience 4`` (as shipped since 2026-12-01),
gender, split seeds 0-4: finalmlp 0.7936 (validation 0.7958), mlp 0.7930 (0.7951), dcnv2
0.7932 (0.7951), deepfm 0.7904 (0.7928): FinalMLP keeps the best validation. With
``train.precision: bfloat16`` (as shipped since 2026-12-02; ``precision_speed.py``) finalmlp
0.7935 / 0.7931 / 0.7901 (validation 0.7956 / 0.7952 / 0.7919), 1.8 s per epoch against
2.2-2.5 s in float32 that day.

Usage: python benchmarks/model_zoo.py [--towers mlp dcnv2 deepfm finalmlp]
       [--splits gender age3 occupation] [--seeds 0 1 2 3 4] [--epochs N]
       [--config TOWER=PATH ...] [--average FROM_EPOCH] [--patience N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mdctr.adapters.run import load_config, train
from mdctr.core.config import with_overrides
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.platform.config import TrainConfig
from mdctr.platform.model import CTRModel, feature_layout
from mdctr.platform.towers import TOWERS
from _seed_table import summarise

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "movielens_gender_shared.yaml"
SPLITS = {"gender": "movielens-100k:gender", "age3": "movielens-100k:age3",
          "occupation": "movielens-100k:occupation"}


def tower_configs(towers: list[str], given: list[str]) -> dict[str, tuple[Path, TrainConfig]]:
    """Each tower's config file and config (``tune:`` dropped, ``model.tower`` the tower)."""
    paths = dict.fromkeys(towers, DEFAULT_CONFIG)
    for item in given:
        tower, sep, path = item.partition("=")
        if not sep or tower not in towers:
            raise SystemExit(f"--config {item}: expected TOWER=PATH with TOWER one of {', '.join(towers)}")
        paths[tower] = Path(path)
    out = {}
    for tower, path in paths.items():
        cfg = load_config(path).model_copy(update={"tune": None})
        if path != DEFAULT_CONFIG and cfg.model.tower != tower:
            raise SystemExit(f"--config {tower}={path}: its model.tower is {cfg.model.tower}, not {tower}")
        out[tower] = (path, with_overrides(cfg, {"model.tower": tower}, source=str(path)))
    return out


def split_config(cfg: TrainConfig, split: str, epochs: int | None, average: int | None = None,
                 patience: int | None = None) -> TrainConfig:
    over = {"data": SPLITS[split]}
    if epochs is not None:
        over["train.epochs"] = epochs
    if average is not None:
        over["train.average"] = {"from_epoch": average}
    if patience is not None:
        over["train.patience"] = patience
    return with_overrides(cfg, over)


def parameter_counts(cfg: TrainConfig) -> tuple[int, int]:
    """(every parameter of the model, the tower's) as ``CTRModel`` builds it for ``cfg``."""
    layout = feature_layout(load_spec(resolve_data(cfg.data)), cfg.model, cfg.baseline)
    model = CTRModel(layout, cfg.model, device="cpu")
    return (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.tower.parameters()))


def epoch_record(run_dir: Path) -> tuple[list[float], int | str | None, float | None]:
    """Seconds of every trained epoch of the run (every phase), the best epoch of its last
    phase (highest validation WAUC, the first on ties, as the trainer keeps it; ``"avg"``: the
    average of ``train.average``; without validation: the last epoch) and that epoch's
    validation WAUC."""
    history = json.loads((run_dir / "history.json").read_text())["history"]
    seconds = [e["seconds"] for entries in history.values() for e in entries
               if "seconds" in e and e.get("train_loss") is not None]
    last = list(history.values())[-1] if history else []
    if not last:
        return seconds, None, None
    if all("valid_wauc" in e for e in last):
        best = max(last, key=lambda e: e["valid_wauc"])  # max keeps the first of equal scores
    else:
        best = last[-1]
    return seconds, "avg" if "averaged" in best else best["epoch"], best.get("valid_wauc")


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--towers", nargs="+", default=["mlp", "dcnv2", "deepfm", "finalmlp"], choices=list(TOWERS))
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs (quick smoke runs)")
    p.add_argument("--average", type=int, default=None, metavar="FROM_EPOCH",
                   help="set train.average: {from_epoch: FROM_EPOCH} in every tower's config")
    p.add_argument("--patience", type=int, default=None, help="override train.patience")
    p.add_argument("--config", action="append", default=[], metavar="TOWER=PATH",
                   help="a tower's own (tuned) config instead of the default one; repeatable")
    args = p.parse_args()
    configs = tower_configs(args.towers, args.config)
    for tower, (path, _) in configs.items():
        print(f"{tower:<10}{path}", flush=True)
    results: dict = {s: {} for s in args.splits}  # split -> tower -> metrics per seed
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tower, (_, base) in configs.items():
            rows[tower] = {}
            for split in args.splits:
                cfg = split_config(base, split, args.epochs, args.average, args.patience)
                params, tower_params = parameter_counts(cfg)
                runs, seconds, best, valid, walls = [], [], [], [], []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    out = Path(tmp) / f"{tower}-{split}-{seed}"
                    m = train(cfg, out, split_seed=seed, seed=seed)
                    secs, b, v = epoch_record(out)
                    runs.append(m)
                    walls.append(time.perf_counter() - t0)
                    seconds += secs
                    best.append(b)
                    valid.append(v)
                    print(f"{tower:<10}{split:<12}seed {seed}  WAUC {m['wauc']:.4f}  AUC {m['auc']:.4f}  "
                          f"best epoch {b}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                results[split][tower] = runs
                auc, auc_sd = mean_std([r["auc"] for r in runs])
                wauc, wauc_sd = mean_std([r["wauc"] for r in runs])
                rows[tower][split] = {
                    "auc_mean": round(auc, 5), "auc_std": round(auc_sd, 5),
                    "wauc_mean": round(wauc, 5), "wauc_std": round(wauc_sd, 5),
                    "params": params, "tower_params": tower_params,
                    "sec_per_epoch": round(statistics.mean(seconds), 3) if seconds else None,
                    "best_epochs": best,
                    "run_seconds": round(statistics.mean(walls), 1),
                    "valid_wauc_mean": round(statistics.mean(valid), 5) if None not in valid else None,
                }
    summarise(results, args.seeds)
    print(f"\n== test AUC and WAUC (mean +- std over seeds {args.seeds}), parameters, seconds per epoch")
    print(f"{'tower':<10}{'split':<12}{'AUC':>17}{'WAUC':>19}{'valid WAUC':>11}{'params':>12}{'tower':>10}"
          f"{'s/epoch':>9}  best epochs")
    for tower, by_split in rows.items():
        for split, r in by_split.items():
            spe = f"{r['sec_per_epoch']:.2f}" if r["sec_per_epoch"] is not None else "-"
            print(f"{tower:<10}{split:<12}{r['auc_mean']:>8.4f} +- {r['auc_std']:.4f}"
                  f"{r['wauc_mean']:>10.4f} +- {r['wauc_std']:.4f}{r['valid_wauc_mean'] or float('nan'):>11.4f}"
                  f"{r['params']:>12,}{r['tower_params']:>10,}"
                  f"{spe:>9}  {' '.join(str(b) for b in r['best_epochs'])}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

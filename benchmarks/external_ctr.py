"""An external CTR library on mdctr's exact rows and features: the comparison a new user makes.

DeepCTR-Torch (``deepctr-torch`` 0.3.0, not an mdctr dependency: ``pip install
deepctr-torch scikit-learn``) trains its DeepFM (or DCN-Mix, DCN) with the library's own
defaults (``SparseFeat`` embedding dim 4, DNN (256, 128), L2 1e-5 on embeddings, Adam lr
1e-3, batch 256) on ``movielens-100k:<split>``'s rows split exactly as mdctr splits them
(:func:`mdctr.domains.splits.random_parts`, split seed s; library seed s), with the same
fields (user_id, item_id, age, occupation, gender, zip_prefix, release_year, and genres
multi-hot, mean-pooled). Epochs: up to 20, early stopping on validation WAUC (patience 2);
the reported test WAUC is the best validation epoch's, computed by mdctr's own metric code
(:func:`mdctr.platform.metrics.compute_metrics`).

Findings (2026-12-01, split seeds 0-4, test WAUC gender / age3 / occupation): DeepFM 0.7793 /
0.7786 / 0.7758 (validation 0.7838 / 0.7833 / 0.7795); the shipped FinalMLP
(``benchmarks/model_zoo.py``) 0.7899 / 0.7895 / 0.7865, the former MLP default 0.7892 / 0.7884 /
0.7847.

Usage: python benchmarks/external_ctr.py [--models deepfm] [--splits gender age3 occupation]
       [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import pyarrow.parquet as pq
import torch

from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.domains.splits import TEST, TRAIN, VALID, random_parts
from mdctr.platform.metrics import compute_metrics
from _seed_table import summarise

SPARSE = ["user_id", "item_id", "age", "occupation", "gender", "zip_prefix", "release_year"]


def load_rows(split: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, list[str], object]:
    """(features, labels, domain index, example ids, domain names, spec) of a built-in split;
    genres as a padded (rows, max genres) array, 0 the padding."""
    path = resolve_data(f"movielens-100k:{split}")
    spec = load_spec(path)
    t = pq.read_table(sorted(path.glob("part-*.parquet"))).to_pydict()
    x = {k: np.asarray(t[k], dtype=np.int64) for k in SPARSE}
    width = max(len(g) for g in t["genres"])
    genres = np.zeros((len(t["genres"]), width), dtype=np.int64)
    for i, g in enumerate(t["genres"]):
        genres[i, :len(g)] = np.asarray(g, dtype=np.int64) + 1
    x["genres"] = genres
    names = list(spec.domain_names)
    domain = np.asarray([names.index(d) for d in t["domain"]], dtype=np.int64)
    return x, np.asarray(t["label"], dtype=np.float32), domain, np.asarray(t["example_id"], dtype=np.int64), names, spec


def metrics(p: np.ndarray, y: np.ndarray, d: np.ndarray, names: list[str]) -> dict:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    logits = torch.from_numpy(np.log(p / (1 - p)).astype(np.float32))
    return compute_metrics(logits, torch.from_numpy(y), torch.from_numpy(d), names, split="x")


def run(model_name: str, split: str, seed: int, patience: int = 2, max_epochs: int = 20) -> dict:
    """The test metrics (``compute_metrics``' schema) of the best validation epoch, plus
    ``valid_wauc`` and ``epoch``."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DCN, DCNMix, DeepFM

    x, y, d, eid, names, spec = load_rows(split)
    torch.manual_seed(seed)
    np.random.seed(seed)
    parts = random_parts(eid, spec.split.random, seed=seed)
    feats = [SparseFeat(k, int(x[k].max()) + 1) for k in SPARSE]
    feats.append(VarLenSparseFeat(SparseFeat("genres", int(x["genres"].max()) + 1),
                                  maxlen=x["genres"].shape[1], combiner="mean"))
    model = {"deepfm": DeepFM, "dcnmix": DCNMix, "dcn": DCN}[model_name](feats, feats, task="binary",
                                                                          seed=seed, device="cpu")
    model.compile("adam", "binary_crossentropy")

    def part(p: int):
        m = parts == p
        return {k: v[m] for k, v in x.items()}, y[m], d[m]

    (xtr, ytr, _), (xva, yva, dva), (xte, yte, dte) = part(TRAIN), part(VALID), part(TEST)
    best: dict = {"valid_wauc": -1.0}
    bad = 0
    for epoch in range(1, max_epochs + 1):
        model.fit(xtr, ytr, batch_size=256, epochs=1, verbose=0)
        valid = metrics(model.predict(xva, 8192).ravel(), yva, dva, names)["wauc"]
        if valid > best["valid_wauc"]:
            test = metrics(model.predict(xte, 8192).ravel(), yte, dte, names)
            best, bad = {**test, "valid_wauc": valid, "epoch": epoch}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["deepfm"], choices=["deepfm", "dcnmix", "dcn"])
    ap.add_argument("--splits", nargs="+", default=["gender", "age3", "occupation"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = ap.parse_args(argv)
    try:
        import deepctr_torch  # noqa: F401
    except ImportError:
        print("benchmarks/external_ctr.py needs DeepCTR-Torch: pip install deepctr-torch scikit-learn", file=sys.stderr)
        return 2
    out: dict = {}
    for model_name in args.models:
        results: dict = {}
        for split in args.splits:
            runs = results.setdefault(split, {}).setdefault(model_name, [])
            for seed in args.seeds:
                runs.append(run(model_name, split, seed))
                print(f"{model_name:<8} {split:<11} seed {seed}  WAUC {runs[-1]['wauc']:.4f}  "
                      f"valid {runs[-1]['valid_wauc']:.4f}  best epoch {runs[-1]['epoch']}", flush=True)
        for split, summary in summarise(results, args.seeds).items():
            runs = results[split][model_name]
            out.setdefault(model_name, {})[split] = {
                "wauc_mean": summary[model_name]["wauc_mean"], "wauc_std": summary[model_name]["wauc_std"],
                "valid_wauc_mean": round(statistics.mean(r["valid_wauc"] for r in runs), 5),
                "best_epochs": [r["epoch"] for r in runs]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

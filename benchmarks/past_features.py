"""Past-behaviour features on MovieLens-100K gender: do they lift the shipped config?

Each variant is MovieLens-100K gender (the same rows, labels and fields) plus features built
from each row's *strictly earlier* ratings (earlier timestamp; ratings of the same second
are not "before" each other), so no row sees its own label:

- ``dense``: four dense fields: the user's and the item's smoothed like rate so far
  ((likes + 5 * global rate) / (ratings + 5)) and log(1 + ratings so far) / log(1 + rows);
- ``history``: ``hist_liked``, a multi-hot field (mean-pooled embedding bag): the items the
  user liked before, the latest 50;
- ``both``: the two together;
- ``none``: the dataset as shipped (``movielens-100k:gender``), the reference.

The shipped config (``configs/movielens_gender_shared.yaml``, ``data:`` replaced) trains on
each, seed s with split seed s and initialisation seed s. Prints per-domain test AUC, WAUC
mean +- std and the kept epoch's validation WAUC; last line ``{variant: {"wauc_mean",
"wauc_std", "valid_wauc_mean"}}``.

Findings (2026-12-01, seeds 0-4; test WAUC, validation in brackets): none 0.7899 (0.7933),
history 0.7895 (0.7938), both 0.7891 (0.7935), dense 0.7876 (0.7913). On the random split
the user and item id embeddings already carry what the history says (each user has ~80
training ratings), so the features add nothing on validation beyond noise and the dense ones
cost 0.002 on test; the shipped data stays as it is (docs/benchmarks.md).

Usage: python benchmarks/past_features.py [--variants none dense history both] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mdctr.domains.datasets import resolve_data
from mdctr.domains.movielens import movielens_columns, movielens_fields
from mdctr.domains.sources import load_movielens_100k
from mdctr.domains.spec import FieldKind, FieldSpec, load_spec
from mdctr.domains.writer import DatasetWriter, build_table, list_array
from mdctr.adapters.run import load_config, train
from mdctr.core.config import with_overrides
from mdctr.platform.quiet import quiet_library_warnings
from _seed_table import summarise
from model_zoo import epoch_record

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/movielens_gender_shared.yaml"
VARIANTS = ("none", "dense", "history", "both")
HISTORY_LEN = 50
PRIOR_STRENGTH = 5.0


def earlier(key: np.ndarray, ts: np.ndarray, label: np.ndarray):
    """Per row, over the rows with the same ``key`` and a strictly earlier ``ts``: their count,
    their positives, and (in ``order``, the rows sorted by key then ts) where they start and
    end (``first[j]:before[j]`` of ``order``)."""
    n = len(ts)
    order = np.lexsort((ts, key))
    k, t, y = key[order], ts[order], label[order]
    new_key = np.r_[True, k[1:] != k[:-1]]
    new_second = new_key | np.r_[True, t[1:] != t[:-1]]
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(new_key, idx, 0))
    before = np.maximum.accumulate(np.where(new_second, idx, 0))
    cum = np.r_[0.0, np.cumsum(y)]
    count, positives = np.empty(n), np.empty(n)
    count[order] = before - first
    positives[order] = cum[before] - cum[first]
    return count, positives, order, first, before


def variant_columns(variant: str):
    """The gender dataset's spec (not yet written) and columns, with ``variant``'s fields added."""
    cols, domains, _ = movielens_columns(load_movielens_100k(), "gender")
    fields = movielens_fields(cols)
    ts, label = cols["ts"], cols["label"].astype(np.float64)
    rate = label.mean()
    if variant in ("dense", "both"):
        for prefix, key in (("user", cols["user_id"]), ("item", cols["item_id"])):
            count, positives, *_ = earlier(key, ts, label)
            cols[f"{prefix}_like_rate"] = ((positives + PRIOR_STRENGTH * rate) / (count + PRIOR_STRENGTH)).astype(np.float32)
            cols[f"{prefix}_log_ratings"] = (np.log1p(count) / np.log1p(len(ts))).astype(np.float32)
            fields += [FieldSpec(name=f"{prefix}_like_rate", kind=FieldKind.dense),
                       FieldSpec(name=f"{prefix}_log_ratings", kind=FieldKind.dense)]
    if variant in ("history", "both"):
        _, _, order, first, before = earlier(cols["user_id"], ts, label)
        items, liked = cols["item_id"][order], label[order] > 0
        lists: list[np.ndarray] = [np.empty(0, np.int64)] * len(ts)
        for j in range(len(ts)):
            span = slice(first[j], before[j])
            lists[order[j]] = items[span][liked[span]][-HISTORY_LEN:]
        offsets = np.zeros(len(ts) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        cols["hist_liked"] = list_array(offsets, np.concatenate(lists).astype(np.int64))
        fields.append(FieldSpec(name="hist_liked", kind=FieldKind.multi_hot,
                                cardinality=int(cols["item_id"].max()) + 1, max_len=HISTORY_LEN))
    # the shipped dataset's spec (split, source, notes), with the variant's fields, to be written
    spec = load_spec(resolve_data("movielens-100k:gender")).model_copy(update={
        "name": f"movielens-100k-gender-{variant}", "rows": 0, "files": ["pending"], "fields": fields,
        "domains": domains, "time_range": None, "fingerprint": None})
    return spec, cols


def write_variant(variant: str, out: Path) -> Path:
    spec, cols = variant_columns(variant)
    out.mkdir(parents=True)
    writer = DatasetWriter(out, spec)
    writer.write(build_table(spec, cols))
    writer.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = p.parse_args()
    quiet_library_warnings()
    base = load_config(CONFIG).model_copy(update={"tune": None})
    results: dict = {"gender": {}}
    valid: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            data = "movielens-100k:gender" if variant == "none" else str(write_variant(variant, Path(tmp) / variant))
            cfg = with_overrides(base, {"data": data})
            runs, valid[variant] = [], []
            for seed in args.seeds:
                t0 = time.perf_counter()
                out = Path(tmp) / f"{variant}-{seed}"
                runs.append(train(cfg, out, split_seed=seed, seed=seed))
                valid[variant].append(epoch_record(out)[2])
                print(f"{variant:<8} seed {seed}  test WAUC {runs[-1]['wauc']:.4f}  valid WAUC {valid[variant][-1]:.4f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            results["gender"][variant] = runs
    summary = summarise(results, args.seeds)["gender"]
    report = {v: {"wauc_mean": s["wauc_mean"], "wauc_std": s["wauc_std"],
                  "valid_wauc_mean": round(statistics.mean(valid[v]), 5)} for v, s in summary.items()}
    for v, r in report.items():
        print(f"{v:<8} test WAUC {r['wauc_mean']:.4f} +- {r['wauc_std']:.4f}  validation {r['valid_wauc_mean']:.4f}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

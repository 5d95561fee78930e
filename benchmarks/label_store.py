"""Teacher-label store: write throughput, batch lookup latency, and the cost of joining
labels into a student's training.

1. Write ``--labels`` (10M) labels as one version (parts of 1M rows, as ``labels write``
   streams them): labels/s, including sorting, Parquet encoding and fsync.
2. Open a reader on it and look up random batches of 4096 example ids (90% labelled):
   p50 / p99 milliseconds.
3. The student's training step on MovieLens-100K (gender, default student config) three
   ways, in alternating rounds: plain; with the label join (the job's ``TeacherLabels``
   transform: a ``TeacherJoin`` on the data thread, the hard loss); and full auxiliary
   distillation (join + auxiliary head + ``DistillLoss``).
   The labels are random logits for every training example (the join's cost does not
   depend on their values). ``join_step_ratio`` = join / plain, ``aux_step_ratio`` = aux /
   plain (medians of per-epoch step times).

Last line: {"write_labels_per_s": ..., "lookup_p50_ms": ..., "lookup_p99_ms": ...,
"join_step_ratio": ..., "aux_step_ratio": ...}.

Usage: python benchmarks/label_store.py [--labels 10000000] [--rounds 3]
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
import pyarrow as pa
import pyarrow.parquet as pq

from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.platform.config import load_train_config
from mdctr.platform.distill import StudentBuilder, TeacherLabels, distill_loss
from mdctr.platform.distributed import launch
from mdctr.platform.job import Job
from mdctr.platform.model import feature_layout
from mdctr.platform.quiet import quiet_library_warnings
from mdctr.platform.stores.labels import TeacherLabelStore
from mdctr.platform.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PART = 1 << 20


def write_benchmark(root: Path, n: int) -> tuple[float, str]:
    rng = np.random.default_rng(0)
    ids = rng.permutation(n * 2)[:n].astype(np.int64)  # sparse, unordered ids as a real split has
    domains = np.array(["d0", "d1", "d2", "d3"], dtype=object)

    def parts():
        for lo in range(0, n, PART):
            k = min(PART, n - lo)
            yield pa.table({"example_id": ids[lo:lo + k], "teacher_logit": rng.standard_normal(k).astype(np.float32),
                            "domain": pa.array(domains[rng.integers(0, 4, k)], pa.string()),
                            "ts": rng.integers(1_700_000_000, 1_710_000_000, k)})

    t0 = time.perf_counter()
    v = TeacherLabelStore(root).write(parts(), {"teacher_run_id": "benchmark"})
    return n / (time.perf_counter() - t0), v.name


def lookup_benchmark(root: Path, name: str, repeats: int = 500) -> dict:
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    reader = TeacherLabelStore(root).reader(name)
    open_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        q = np.concatenate([rng.choice(reader.ids, 4096 * 9 // 10), rng.integers(-10**9, -1, 4096 - 4096 * 9 // 10)])
        t0 = time.perf_counter()
        reader.lookup(q)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"open_s": round(open_s, 2), "lookup_p50_ms": round(float(np.percentile(times, 50)), 3),
            "lookup_p99_ms": round(float(np.percentile(times, 99)), 3)}


def _step_worker(rank: int, world: int, data: Path, store: Path, rounds: int, out: Path) -> None:
    base = load_train_config(REPO / "configs/movielens_gender_student.yaml")
    spec = load_spec(data)
    layout = feature_layout(spec, base.model, base.baseline)
    reader = layout.reader(data)
    version = TeacherLabelStore(store).resolve().name
    variants = {}
    aux = base.distill.model_copy(update={"mode": "aux"})  # the heavier mode: an extra head and loss
    for name in ("plain", "join", "aux"):
        cfg = base.model_copy(update={"data": str(data), "distill": aux if name == "aux" else None,
                                      "train": base.train.model_copy(update={"window": None, "split_kind": "random"})})
        job = Job(cfg, data, out.parent / f"ck-{name}", model=StudentBuilder(cfg.distill),
                  transform=TeacherLabels(str(store), version) if name != "plain" else None,
                  loss=distill_loss(cfg.distill) if name == "aux" else None, progress=False)
        variants[name] = Trainer(job, reader, layout)
    batches = variants["plain"]._num_batches("train", variants["plain"].batch_size)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 1):  # round 0 warms up (caches, allocator), then alternate
        for name, trainer in variants.items():
            t0 = time.perf_counter()
            trainer.train_epoch(r)
            if r:
                times[name].append((time.perf_counter() - t0) / batches * 1e3)
    out.write_text(json.dumps({k: statistics.median(v) for k, v in times.items()}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=10_000_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    quiet_library_warnings()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rate, name = write_benchmark(tmp / "big", args.labels)
        print(f"wrote {args.labels:,} labels: {rate / 1e6:.2f}M labels/s", flush=True)
        look = lookup_benchmark(tmp / "big", name)
        print(f"reader opened in {look['open_s']} s; 4096-id lookup p50 {look['lookup_p50_ms']} ms, "
              f"p99 {look['lookup_p99_ms']} ms", flush=True)
        data = resolve_data("movielens-100k:gender")
        ids = np.concatenate([pq.read_table(data / f, columns=["example_id"]).column(0).to_numpy()
                              for f in load_spec(data).files])
        rng = np.random.default_rng(2)
        TeacherLabelStore(tmp / "ml").write([pa.table({
            "example_id": ids, "teacher_logit": rng.standard_normal(len(ids)).astype(np.float32),
            "domain": pa.array(["F"] * len(ids)), "ts": np.zeros(len(ids), np.int64)})], {})
        out = tmp / "steps.json"
        launch(_step_worker, 1, data, tmp / "ml", args.rounds, out)
        steps = json.loads(out.read_text())
    res = {"write_labels_per_s": round(rate), "lookup_p50_ms": look["lookup_p50_ms"],
           "lookup_p99_ms": look["lookup_p99_ms"], "join_step_ratio": round(steps["join"] / steps["plain"], 3),
           "aux_step_ratio": round(steps["aux"] / steps["plain"], 3),
           "step_ms": {k: round(v, 3) for k, v in steps.items()}}
    print(f"student step (batch 1024): plain {steps['plain']:.2f} ms, with label join {steps['join']:.2f} ms "
          f"({res['join_step_ratio']}x), aux distillation {steps['aux']:.2f} ms ({res['aux_step_ratio']}x)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

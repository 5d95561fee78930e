"""TPM embedding store: snapshot write time and batch lookup latency.

Writes a snapshot of ``--ids`` user ids (dimension ``--dim``), then looks up random batches
of 4096 ids (90% known, 10% unknown) against the last K=3 snapshots, as the A-CTR's
history join does per batch: p50/p99 latency of one 4096-id lookup in one snapshot, and of
the whole K-snapshot join. The first lookup (which reads the file) is reported separately.
Last line: {"write_s": ..., "first_lookup_ms": ..., "lookup_p50_ms": ..., "lookup_p99_ms": ...,
"join_k3_p50_ms": ...}.

Usage: python benchmarks/embedding_store.py [--ids 1000000] [--dim 16] [--repeats 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mdctr.platform.stores.embeddings import EmbeddingStore

BATCH = 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=500)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="mdctr-emb-"))
    store = EmbeddingStore(root)
    months = ["2024-01", "2024-02", "2024-03"]
    ids = rng.choice(args.ids * 4, size=args.ids, replace=False).astype(np.int64)
    vectors = rng.standard_normal((args.ids, args.dim)).astype(np.float32)
    t0 = time.perf_counter()
    store.write(months[0], {"user": (ids, vectors)})
    write_s = time.perf_counter() - t0
    for m in months[1:]:
        store.write(m, {"user": (ids, vectors)})

    def batch() -> np.ndarray:
        known = rng.choice(ids, size=BATCH * 9 // 10)
        return np.concatenate([known, rng.integers(args.ids * 4, args.ids * 5, BATCH - len(known))])

    t0 = time.perf_counter()
    store.lookup(months[0], "user", batch())
    first_ms = (time.perf_counter() - t0) * 1e3
    for m in months[1:]:
        store.lookup(m, "user", batch())
    single, joined = [], []
    for _ in range(args.repeats):
        q = batch()
        t0 = time.perf_counter()
        out, found = store.lookup(months[-1], "user", q)
        single.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        for m in months:
            store.lookup(m, "user", q)
        joined.append((time.perf_counter() - t0) * 1e3)
    hit = float(found.mean())
    res = {"write_s": round(write_s, 3), "first_lookup_ms": round(first_ms, 2),
           "lookup_p50_ms": round(float(np.percentile(single, 50)), 3),
           "lookup_p99_ms": round(float(np.percentile(single, 99)), 3),
           "join_k3_p50_ms": round(float(np.percentile(joined, 50)), 3)}
    print(f"snapshot of {args.ids:,} ids x {args.dim}: written in {res['write_s']} s; "
          f"4096-id lookup p50 {res['lookup_p50_ms']} ms, p99 {res['lookup_p99_ms']} ms (hit rate {hit:.2f}); "
          f"K=3 join p50 {res['join_k3_p50_ms']} ms; first lookup (reads the file) {res['first_lookup_ms']} ms")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

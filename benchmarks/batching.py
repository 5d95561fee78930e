"""Throughput of ``DatasetReader.batches`` on MovieLens-shaped rows (7 sparse + 1 multi-hot).

    .venv/bin/python benchmarks/batching.py [--data DIR] [--epochs N] [--replicas R]

Measures examples/s of ``batches('train', batch_size=4096, shuffle=True)`` on one thread:

- ``ml100k``: MovieLens-100K, gender split (80k train rows, one row group);
- ``ml-x{R}``: the same rows replicated ``R`` times (default 10: 1M rows, 800k train rows) with
  shifted ``example_id`` s, one 100k-row row group per replica, written with
  :class:`mdctr.domains.writer.DatasetWriter`; read with the default ``chunk_rows`` (all row
  groups concatenated into one chunk) and with ``chunk_rows=262144`` (3 row groups per chunk,
  block shuffle across 4 chunks); and with ``cache_rows=0`` (no decoded-row cache: every
  epoch decodes Parquet and maps ids again, as for datasets above the cache limit).

One untimed warm-up epoch, then ``--epochs`` timed epochs (the rate is rows / total time).
The last line of the output is one JSON object (``examples_per_s`` is the ~1M-row,
default-``chunk_rows`` measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mdctr.domains.batching import DatasetReader
from mdctr.domains.movielens import prepare_movielens
from mdctr.domains.spec import SourceSpec, load_spec
from mdctr.core.io import atomic_dir
from mdctr.domains.writer import DatasetWriter

BATCH = 4096


def replicate(src: Path, out: Path, replicas: int) -> Path:
    """``src`` repeated ``replicas`` times with example_ids shifted by multiples of its row count."""
    spec = load_spec(src)
    table = pa.concat_tables([pq.read_table(src / f) for f in spec.files])
    n = table.num_rows
    eid = table.schema.get_field_index("example_id")
    base = table.column("example_id").to_numpy()
    pending = spec.model_copy(update={
        "name": f"{spec.name}-x{replicas}", "rows": 0, "files": ["pending"], "fingerprint": None,
        "time_range": None, "domains": [d.model_copy(update={"rows": None, "positives": None}) for d in spec.domains],
        "source": SourceSpec(kind="parquet", origin=str(src), params={"replicas": replicas}),
    })
    with atomic_dir(out, overwrite=True) as tmp:
        writer = DatasetWriter(tmp, pending)
        for k in range(replicas):
            writer.write(table.set_column(eid, "example_id", pa.array(base + k * n, pa.int64())))
        writer.close()
    return out


def measure(reader: DatasetReader, epochs: int) -> tuple[float, int, list[float]]:
    """(examples/s over the timed epochs, train rows per epoch, seconds per timed epoch)."""
    rows = 0
    for b in reader.batches("train", batch_size=BATCH, shuffle=True, seed=0, epoch=0):  # warm-up
        rows += len(b)
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        n = 0
        for b in reader.batches("train", batch_size=BATCH, shuffle=True, seed=0, epoch=epoch):
            n += len(b)
        times.append(time.perf_counter() - t0)
        assert n == rows, (n, rows)
    return rows * epochs / sum(times), rows, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="a prepared MovieLens-100K gender dataset (default: prepare one)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # torchrec import chatter

    with tempfile.TemporaryDirectory(prefix="mdctr-bench-") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "ml-gender"
            prepare_movielens("gender", data)
        big = replicate(data, tmp / "ml-big", args.replicas)
        meta = pq.ParquetFile(big / load_spec(big).files[0]).metadata

        runs = [
            ("ml100k", DatasetReader(data), args.epochs * 4),
            (f"ml-x{args.replicas}", DatasetReader(big), args.epochs),
            (f"ml-x{args.replicas}/chunk=256k", DatasetReader(big, chunk_rows=262_144), args.epochs),
            (f"ml-x{args.replicas}/no-cache", DatasetReader(big, cache_rows=0), args.epochs),
        ]
        results = {}
        print(f"batch_size={BATCH} threads={torch.get_num_threads()} "
              f"(ml-x{args.replicas}: {meta.num_rows:,} rows, {meta.num_row_groups} row groups)")
        print(f"{'dataset':<24}{'train rows':>12}{'epochs':>8}{'s/epoch (median)':>18}{'examples/s':>14}")
        for name, reader, epochs in runs:
            rate, rows, times = measure(reader, epochs)
            results[name] = rate
            print(f"{name:<24}{rows:>12,}{epochs:>8}{float(np.median(times)):>18.4f}{rate:>14,.0f}", flush=True)

    print(json.dumps({
        "examples_per_s": round(results[f"ml-x{args.replicas}"], 1),
        "examples_per_s_ml100k": round(results["ml100k"], 1),
        "batch_size": BATCH,
        "threads": 1,
    }), flush=True)


if __name__ == "__main__":
    main()

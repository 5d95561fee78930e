"""The towers' dropout: torch's CPU dropout vs. mdctr's hash-mask kernel, side by side.

``mdctr.platform.dropout.Dropout`` draws its mask with a counter-based hash in one compiled
pass (``mdctr/csrc/dropout.cpp``) instead of torch's per-element Mersenne-Twister Bernoulli
draws plus a scale and a multiply. Measured in one process, alternating the two:

1. one dropout layer, forward + backward, at the shipped FinalMLP's activation shapes
   (batch 1024 x 512 and x 256; p = 0.124), median milliseconds;
2. the shipped shared config (``configs/movielens_gender_shared.yaml``) trained on
   MovieLens-100K gender with split/initialisation seeds ``--seeds``, each seed once with
   torch's dropout and once with the kernel: seconds per epoch (median), run seconds, and
   test WAUC (the masks differ, so the runs differ by dropout's randomness only: the paired
   per-seed difference should be noise, mean near 0).

Last line: one JSON object ``{"layer": {shape: {"torch_ms", "kernel_ms", "speedup"}},
"train": {"torch": {...}, "kernel": {...}, "epoch_speedup", "wauc_delta"}}``.

Usage: python benchmarks/dropout_speed.py [--seeds 0 1 2 3 4] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn import functional as F

from mdctr.adapters.run import load_config, train
from mdctr.platform import dropout as dropout_module
from model_zoo import epoch_record

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "movielens_gender_shared.yaml"
P = 0.124


@contextmanager
def torch_dropout():
    """Every :class:`Dropout` runs ``F.dropout`` (the kernel is declined) inside the block."""
    original = dropout_module.kernel_applies
    dropout_module.kernel_applies = lambda x: False
    try:
        yield
    finally:
        dropout_module.kernel_applies = original


def layer_ms(shape: tuple[int, int], repeats: int) -> dict:
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)
    module = dropout_module.Dropout(P)
    runs = {"torch": lambda: F.dropout(x, P, training=True).backward(grad), "kernel": lambda: module(x).backward(grad)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, step in runs.items():  # alternating: both see the same machine
            t0 = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - t0))
    t, k = statistics.median(times["torch"]), statistics.median(times["kernel"])
    return {"torch_ms": round(t, 3), "kernel_ms": round(k, 3), "speedup": round(t / k, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--repeats", type=int, default=200, help="timed forward + backward passes per layer shape")
    args = p.parse_args()
    if dropout_module.kernels is None:
        raise SystemExit("mdctr's compiled kernels are not built (mdctr.core.native.status())")
    layer = {}
    for shape in ((1024, 512), (1024, 256)):
        layer["x".join(map(str, shape))] = r = layer_ms(shape, args.repeats)
        print(f"dropout layer {shape[0]} x {shape[1]}, forward + backward: torch {r['torch_ms']:.2f} ms, "
              f"kernel {r['kernel_ms']:.2f} ms ({r['speedup']:.1f}x)", flush=True)
    cfg = load_config(CONFIG).model_copy(update={"tune": None})
    res: dict[str, dict[str, list[float]]] = {k: {"wauc": [], "epoch_s": [], "run_s": [], "epochs": []}
                                              for k in ("torch", "kernel")}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in ("torch", "kernel"):
                out = Path(tmp) / f"{name}-{seed}"
                t0 = time.perf_counter()
                if name == "torch":
                    with torch_dropout():
                        m = train(cfg, out, split_seed=seed, seed=seed)
                else:
                    m = train(cfg, out, split_seed=seed, seed=seed)
                run_s = time.perf_counter() - t0
                seconds, _, _ = epoch_record(out)
                r = res[name]
                r["wauc"].append(m["wauc"])
                r["epoch_s"].append(statistics.median(seconds))
                r["run_s"].append(run_s)
                r["epochs"].append(len(seconds))
                print(f"seed {seed} {name:<6} test WAUC {m['wauc']:.4f}  {len(seconds)} epochs, "
                      f"{statistics.median(seconds):.2f} s/epoch, run {run_s:.1f} s", flush=True)
    summary = {}
    for name, r in res.items():
        summary[name] = {"wauc": round(statistics.mean(r["wauc"]), 5),
                         "wauc_std": round(statistics.stdev(r["wauc"]), 5) if len(r["wauc"]) > 1 else 0.0,
                         "epoch_s": round(statistics.median(r["epoch_s"]), 3),
                         "run_s": round(statistics.mean(r["run_s"]), 1), "epochs": r["epochs"]}
        print(f"{name:<6} test WAUC {summary[name]['wauc']:.4f} +- {summary[name]['wauc_std']:.4f}, "
              f"{summary[name]['epoch_s']:.2f} s/epoch (median), run {summary[name]['run_s']:.1f} s (mean)")
    deltas = [k - t for k, t in zip(res["kernel"]["wauc"], res["torch"]["wauc"])]
    train_out = {**summary, "epoch_speedup": round(summary["torch"]["epoch_s"] / summary["kernel"]["epoch_s"], 2),
                 "wauc_delta": round(statistics.mean(deltas), 5), "wauc_delta_per_seed": [round(d, 5) for d in deltas]}
    print(f"kernel vs torch: {train_out['epoch_speedup']:.2f}x per epoch; test WAUC {train_out['wauc_delta']:+.4f} "
          f"(per seed {', '.join(f'{d:+.4f}' for d in deltas)})")
    print(json.dumps({"layer": layer, "train": train_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

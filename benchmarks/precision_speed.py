"""Mixed precision (``train.precision``): float32 vs. bfloat16, side by side.

With ``train.precision: bfloat16`` the forward pass of a training step runs under
``torch.autocast(bfloat16)`` (``mdctr/platform/precision.py``): the tower's matrix products in
bfloat16, everything else float32. Measured in one process, alternating the two:

1. one FinalMLP tower at the shipped shape (input 8 fields x 16, [512, 256] per stream, 4
   fusion heads, dropout 0.124, batch 1024), forward + backward, median milliseconds;
2. ``mdctr train --config CONFIG`` as a user runs it (a fresh process each, process start
   included; the config with ``train.precision`` set to each in turn) on MovieLens-100K
   gender with split/initialisation seeds ``--seeds``: run seconds (wall, from the shell),
   epochs, seconds per epoch (median), test WAUC and the kept model's validation WAUC.

Last line: one JSON object ``{"tower": {"float32_ms", "bfloat16_ms", "speedup"}, "train":
{"float32": {...}, "bfloat16": {...}, "run_speedup", "wauc_delta", "valid_wauc_delta"},
"bf16_native": bool}``.

Usage: python benchmarks/precision_speed.py [--seeds 7 8] [--repeats 100] [--config PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mdctr.platform.precision import autocast, bf16_native, float32
from mdctr.platform.towers import build_tower
from model_zoo import epoch_record

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "movielens_gender_shared.yaml"
PRECISIONS = ("float32", "bfloat16")


def tower_ms(repeats: int) -> dict:
    torch.manual_seed(0)
    tower = build_tower("finalmlp", in_features=128, num_fields=8, embedding_dim=16, hidden=[512, 256],
                        dropout=0.124, fusion_heads=4, feature_gating=False).train()
    x = torch.randn(1024, 128, requires_grad=True)
    emb = x.detach().view(1024, 8, 16)
    device = torch.device("cpu")

    def step(precision: str) -> None:
        with autocast(device, precision):
            out = tower(x, emb)
        float32(out).sum().backward()

    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(repeats + 5):
        for precision in PRECISIONS:  # alternating: both see the same machine
            t0 = time.perf_counter()
            step(precision)
            if i >= 5:  # warm-up
                times[precision].append(1e3 * (time.perf_counter() - t0))
    f, b = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
    return {"float32_ms": round(f, 2), "bfloat16_ms": round(b, 2), "speedup": round(f / b, 2)}


def run(config: dict, precision: str, seed: int, tmp: Path) -> dict:
    cfg = {**config, "train": {**config["train"], "precision": precision}}
    cfg.pop("tune", None)
    path = tmp / f"{precision}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp / f"{precision}-{seed}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mdctr.cli", "train", "--config", str(path), "--out", str(out),
                    "--seed", str(seed), "--split-seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    run_s = time.perf_counter() - t0
    seconds, _, valid = epoch_record(out)
    wauc = json.loads((out / "metrics.json").read_text())["wauc"]
    return {"run_s": run_s, "epochs": len(seconds), "epoch_s": statistics.median(seconds), "wauc": wauc,
            "valid_wauc": valid}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    p.add_argument("--repeats", type=int, default=100, help="timed forward + backward passes of the tower")
    p.add_argument("--config", type=Path, default=CONFIG)
    args = p.parse_args()
    native = bf16_native(torch.device("cpu"))
    print(f"native bfloat16 on this CPU: {native}", flush=True)
    tower = tower_ms(args.repeats)
    print(f"FinalMLP tower, forward + backward: float32 {tower['float32_ms']:.2f} ms, bfloat16 "
          f"{tower['bfloat16_ms']:.2f} ms ({tower['speedup']:.2f}x)", flush=True)
    config = yaml.safe_load(args.config.read_text())
    res: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in PRECISIONS:
                r = run(config, precision, seed, Path(tmp))
                res[precision].append(r)
                print(f"seed {seed} {precision:<8} run {r['run_s']:.1f} s, {r['epochs']} epochs at "
                      f"{r['epoch_s']:.2f} s, test WAUC {r['wauc']:.4f} (validation {r['valid_wauc']:.4f})",
                      flush=True)
    summary = {}
    for precision, rs in res.items():
        summary[precision] = {"run_s": round(statistics.mean(r["run_s"] for r in rs), 1),
                              "run_s_max": round(max(r["run_s"] for r in rs), 1),
                              "epoch_s": round(statistics.median(r["epoch_s"] for r in rs), 2),
                              "epochs": [r["epochs"] for r in rs],
                              "wauc": round(statistics.mean(r["wauc"] for r in rs), 5),
                              "valid_wauc": round(statistics.mean(r["valid_wauc"] for r in rs), 5)}
        s = summary[precision]
        print(f"{precision:<8} run {s['run_s']:.1f} s (mean; max {s['run_s_max']:.1f}), {s['epoch_s']:.2f} s/epoch, "
              f"test WAUC {s['wauc']:.4f}, validation {s['valid_wauc']:.4f}")
    f, b = summary["float32"], summary["bfloat16"]
    train = {**summary, "run_speedup": round(f["run_s"] / b["run_s"], 2),
             "epoch_speedup": round(f["epoch_s"] / b["epoch_s"], 2),
             "wauc_delta": round(b["wauc"] - f["wauc"], 5), "valid_wauc_delta": round(b["valid_wauc"] - f["valid_wauc"], 5)}
    print(f"bfloat16 vs float32: run {train['run_speedup']:.2f}x, epoch {train['epoch_speedup']:.2f}x, "
          f"test WAUC {train['wauc_delta']:+.4f}, validation {train['valid_wauc_delta']:+.4f}")
    print(json.dumps({"tower": tower, "train": train, "bf16_native": native}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

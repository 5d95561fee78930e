"""What verifying checkpoint checksums costs ``mdctr evaluate`` and ``--resume``.

Every load of a checkpoint first checks each of its files against ``checksums.json``
(size + SHA-256, streamed in 1 MiB blocks) and reads ``.metadata`` with the allow-listed
unpickler (:mod:`mdctr.platform.safe_dcp`). On MovieLens-100K (gender, the shipped shared
config) this measures, in alternating rounds so both sides see the same machine:

- ``evaluate``: the whole ``evaluate(run)`` call with verification, and with the
  verification replaced by a no-op;
- ``resume``: ``train(..., resume=True)`` of a run rewound to its best epoch, as if killed
  there (it loads that checkpoint, trains the epochs after it, loads the best), both ways;
- ``verify_ms``: one verification of the run's best checkpoint (and its size).

``*_ratio`` = median with verification / median without.

Last line: {"checkpoint_mb": ..., "verify_ms": ..., "evaluate_s": ..., "evaluate_ratio": ...,
"resume_s": ..., "resume_ratio": ...}.

Usage: python benchmarks/checksum_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mdctr.platform import checkpoint as ckpt
from mdctr.platform import safe_dcp
from mdctr.platform.quiet import quiet_library_warnings
from mdctr.platform.run import evaluate, train
from mdctr.platform.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "movielens_gender_shared.yaml"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _no_verify(directory) -> None:
    return None


def _unstop(run_dir: Path) -> None:
    """Rewind the run to its best epoch, as if killed right after it (the epochs after it
    are pruned from disk but the best is kept): resuming loads it and trains the rest."""
    path = run_dir / "checkpoints" / "state.json"
    raw = json.loads(path.read_text())
    raw.update(stopped=False, last_epoch=raw["best_epoch"], bad_epochs=0)
    raw["history"] = [h for h in raw["history"] if h["epoch"] <= raw["best_epoch"]]
    path.write_text(json.dumps(raw))
    (run_dir / "metrics.json").unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    quiet_library_warnings()
    work = Path(tempfile.mkdtemp(prefix="mdctr-bench-checksums-"))
    try:
        base = work / "run"
        train(CONFIG, base, split_seed=0)
        best = RunDir(base).best_checkpoint()
        size_mb = sum(f.stat().st_size for f in best.iterdir()) / 2**20
        verify_ms = statistics.median(_timed(lambda: safe_dcp.verify_checksums(best)) for _ in range(20)) * 1000
        real = ckpt.verify_checksums
        times: dict[str, list[float]] = {"evaluate": [], "evaluate_off": [], "resume": [], "resume_off": []}
        for r in range(args.rounds):
            for off in (r % 2 == 1, r % 2 == 0):  # alternate which side goes first
                ckpt.verify_checksums = _no_verify if off else real
                suffix = "_off" if off else ""
                times["evaluate" + suffix].append(_timed(lambda: evaluate(base, out=work / "eval.json")))
                run = work / f"resume{suffix}"
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(base, run)
                _unstop(run)
                times["resume" + suffix].append(_timed(lambda: train(CONFIG, run, split_seed=0, resume=True)))
        ckpt.verify_checksums = real
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({"checkpoint_mb": round(size_mb, 2), "verify_ms": round(verify_ms, 2),
                          "evaluate_s": round(med["evaluate"], 3),
                          "evaluate_ratio": round(med["evaluate"] / med["evaluate_off"], 3),
                          "resume_s": round(med["resume"], 3),
                          "resume_ratio": round(med["resume"] / med["resume_off"], 3)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

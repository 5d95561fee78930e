"""`make demo`: the main job on the embedded default data (MovieLens-100K, gender domains).

1. Prepares MovieLens-100K (fetched once into the cache, checksums verified) with the
   gender and ads domain splits and prints each one's per-domain summary.
2. Trains the default backbone (`configs/movielens_gender_shared.yaml`) on TorchRec
   (sharded EBC under DistributedModelParallel, fused fbgemm optimizer) and prints its
   per-domain test metrics. The run directory is `runs/demo-shared` (replaced each time).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from mdctr.domains.datasets import resolve_data
from mdctr.domains.summary import summary_text
from mdctr.domains.validate import validate_dataset
from mdctr.platform.quiet import quiet_library_warnings

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    quiet_library_warnings()
    for ref in ("movielens-100k:gender", "movielens-100k:ads"):
        t0 = time.perf_counter()
        directory = resolve_data(ref)
        spec, _ = validate_dataset(directory)
        print(f"== data {ref} -> {directory} ({time.perf_counter() - t0:.1f} s)")
        print(summary_text(spec))
        print()

    from mdctr.platform.run import train

    config = REPO / "configs" / "movielens_gender_shared.yaml"
    out = REPO / "runs" / "demo-shared"
    shutil.rmtree(out, ignore_errors=True)
    print(f"== train {config.relative_to(REPO)} -> {out.relative_to(REPO)}")
    t0 = time.perf_counter()
    metrics = train(config, out)
    print(f"test AUC {metrics['auc']:.4f}, WAUC {metrics['wauc']:.4f} "
          f"(F {metrics['domains']['F']['auc']:.4f}, M {metrics['domains']['M']['auc']:.4f}) "
          f"in {time.perf_counter() - t0:.0f} s; metrics in {out.relative_to(REPO)}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

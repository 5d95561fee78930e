"""`make demo`: the main job on the embedded default data (MovieLens-100K).

Prepares MovieLens-100K (fetched once into the cache, checksums verified) with the gender
and ads domain splits and prints each one's per-domain summary.
"""

from __future__ import annotations

import sys
import time

from mdctr.domains.datasets import resolve_data
from mdctr.domains.summary import summary_text
from mdctr.domains.validate import validate_dataset


def main() -> int:
    for ref in ("movielens-100k:gender", "movielens-100k:ads"):
        t0 = time.perf_counter()
        directory = resolve_data(ref)
        spec, _ = validate_dataset(directory)
        print(f"== {ref} -> {directory} ({time.perf_counter() - t0:.1f} s)")
        print(summary_text(spec))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

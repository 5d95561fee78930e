"""`make demo`: the main job on the embedded default data (MovieLens-100K, gender domains).

1. Prepares MovieLens-100K (fetched once into the cache, checksums verified) with the
   gender and ads domain splits and prints each one's per-domain summary.
2. Trains the default backbone (`configs/movielens_gender_shared.yaml`) on TorchRec
   (sharded EBC under DistributedModelParallel, fused fbgemm optimizer) and prints its
   per-domain test metrics. The run directory is `runs/demo-shared` (replaced each time).
3. Knowledge distillation: trains the teacher (`configs/movielens_gender_teacher.yaml`) on
   the history before the students' last four weeks, labels those weeks once into a
   teacher-label store, and trains the default student (`configs/movielens_gender_student.yaml`)
   on the four weeks alone and with the teacher's labels.
4. E-CDCTR transfer: replays the monthly TPM / weekly CPM / daily A-CTR cadence
   (`configs/movielens_ads_cadence.yaml`) over the last three weeks of the ads split and
   prints the A-CTR's next-day AUC per day.

Everything the demo writes is under `runs/demo-*` (replaced each time).
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
    distill_demo(train)
    transfer_demo()
    return 0


def distill_demo(train) -> None:
    """The teacher trains on the history before the students' four weeks and labels those
    weeks once; the student trains on them alone and with the teacher's labels."""
    from mdctr.core.timeutil import day_ts
    from mdctr.platform.config import load_train_config
    from mdctr.platform.labelling import write_labels

    teacher_dir, labels, alone_dir, student_dir = (REPO / "runs" / f"demo-{n}"
                                                   for n in ("teacher", "labels", "student-alone", "student"))
    for d in (teacher_dir, labels, alone_dir, student_dir):
        shutil.rmtree(d, ignore_errors=True)
    cfg = load_train_config(REPO / "configs" / "movielens_gender_student.yaml")
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"store": str(labels)})})
    start = cfg.train.window.start
    print(f"\n== distillation: teacher (history before {start}) -> labels -> student (from {start})")
    t0 = time.perf_counter()
    train(REPO / "configs" / "movielens_gender_teacher.yaml", teacher_dir, test=False)
    version = write_labels(teacher_dir, cfg.data, store=labels, split=None, window=(day_ts(start), None))
    print(f"teacher labelled {version.meta['rows']:,} rows from {start} -> version {version.name}")
    alone = train(cfg.model_copy(update={"distill": None}), alone_dir)
    student = train(cfg, student_dir)
    print(f"student on the window alone: test WAUC {alone['wauc']:.4f}; with {cfg.distill.mode} distillation "
          f"{student['wauc']:.4f} ({time.perf_counter() - t0:.0f} s)")


def transfer_demo() -> None:
    from datetime import date

    from mdctr.orchestration.config import load_pipeline_config
    from mdctr.orchestration.replay import format_table, replay
    from mdctr.orchestration.stages import Pipeline

    store = REPO / "runs" / "demo-cadence"
    shutil.rmtree(store, ignore_errors=True)
    cfg = load_pipeline_config(REPO / "configs" / "movielens_ads_cadence.yaml").model_copy(update={"store": str(store)})
    print("\n== E-CDCTR replay 1998-04-01 .. 1998-04-22 (monthly TPM, weekly CPM, daily A-CTR)")
    result = replay(Pipeline(cfg), date(1998, 4, 1), date(1998, 4, 22))
    print(format_table(result))


if __name__ == "__main__":
    sys.exit(main())

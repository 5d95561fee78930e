"""`make demo`: the main job on the embedded default data (MovieLens-100K, gender domains).

1. Prepares MovieLens-100K (fetched once into the cache, checksums verified) with the
   gender and ads domain splits and prints each one's per-domain summary.
2. Trains the default backbone (`configs/movielens_gender_shared.yaml`) on TorchRec
   (sharded EBC under DistributedModelParallel, fused fbgemm optimizer) and prints its
   per-domain test metrics. The run directory is `runs/demo-shared` (replaced each time).
3. Knowledge distillation: trains the teacher (`configs/movielens_gender_teacher.yaml`),
   labels the train split once into a teacher-label store, and trains the default student
   with an auxiliary distillation head (`configs/movielens_gender_student.yaml`).
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
    distill_demo(train, metrics)
    transfer_demo()
    return 0


def distill_demo(train, student_alone: dict) -> None:
    from mdctr.platform.config import load_train_config
    from mdctr.platform.labelling import write_labels

    teacher_dir, labels, student_dir = (REPO / "runs" / f"demo-{n}" for n in ("teacher", "labels", "student"))
    for d in (teacher_dir, labels, student_dir):
        shutil.rmtree(d, ignore_errors=True)
    print("\n== distillation: teacher -> labels -> student")
    t0 = time.perf_counter()
    teacher = train(REPO / "configs" / "movielens_gender_teacher.yaml", teacher_dir)
    version = write_labels(teacher_dir, "movielens-100k:gender", store=labels, split="train")
    print(f"teacher WAUC {teacher['wauc']:.4f}; labelled {version.meta['rows']:,} train rows -> version {version.name}")
    cfg = load_train_config(REPO / "configs" / "movielens_gender_student.yaml")
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"store": str(labels)})})
    student = train(cfg, student_dir)
    print(f"student alone WAUC {student_alone['wauc']:.4f}, with auxiliary distillation {student['wauc']:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")


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

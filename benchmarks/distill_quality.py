"""Distillation quality: a teacher that knows more than its students, over 5 seeds.

Settings (``--settings``; each with seeds s = 0..4, teacher and student initialised with s):

- ``ml_window`` (the realistic one): MovieLens-100K gender, temporal split (test: the last 14
  days, valid: the 7 before). The teacher (``configs/movielens_gender_teacher.yaml``: 5.5x
  the student's parameters, a 3-layer FinalMLP) trains on all history *before* the students'
  window (its own random hold-out for early stopping, split seed s) and labels the window
  once into a teacher-label store. Students (``configs/movielens_gender_shared.yaml``)
  train on the last ``--weeks`` weeks (default 4, ``train.window``) before the valid days:
  alone, ``direct`` and ``aux``; all are tested on the following 14 days.
- ``ml_biased``: the same, with a teacher trained for another objective: ``rating >= 5``
  ("loved") where students learn ``rating >= 4`` ("liked"); the auxiliary head is meant to
  keep such a teacher's bias out of the served logit.
- ``synthetic_drift``: the 8-domain synthetic data (``configs/synthetic.yaml``: user
  interests rotate over the 180 days, ``time.drift`` 0.3), temporal split (valid and test:
  18 days each); the teacher has seen the periods before the students' window.
- ``same_data`` (reference; the setting of the first benchmark): random split s, the teacher
  trains on the students' own train split and labels it.

Each distilled mode's weight and temperature are chosen per setting by mean **validation**
WAUC over the seeds from a grid (aux: weight 1, 2, 4, 8, 16 at T 1 and 8 at T 2; direct:
weight 0.3, 0.5, 0.8, 0.9 at T 1 and 0.5 at T 2); the choice and every grid point's validation WAUC are
printed and recorded. Test rows are read only to report. The teacher's figure is its test
WAUC on the students' test rows.

Prints per-domain test AUC and WAUC mean +- std per mode, paired per-seed differences, and
last line ``{"ml_window": {"student", "direct", "aux", "teacher", "aux_minus_student_per_seed",
"aux_minus_direct_per_seed", "chosen", "std", "logloss", "valid"}, "ml_biased": {...}, "synthetic_drift": {...},
"same_data": {...}, "parameters": {...}}`` (mean test WAUC).

Findings with students on the shared config's settings (2026-12-02: epochs averaged,
patience 4, bfloat16; ml_window only): validation student 0.6943, direct w 0.5 0.7097 (the
best-epoch float32 student: 0.7100), best aux w 16 0.7066; test student 0.6897, direct
0.7127, aux 0.7163 (aux - student +0.0266, 5 of 5), teacher 0.7092. Validation does not
move, so the shipped student config keeps its settings. The teacher in bfloat16 (shipped
since): validation 0.7941 (float32 0.7943), test 0.7090, students' validation direct 0.7101,
best aux 0.7072, at 34-45 s a teacher run instead of 70-81 s.

Findings with the FinalMLP student and teacher (2026-12-01, the auxiliary head on both
streams; docs/benchmarks.md has the table): ml_window student 0.6910, aux 0.7064 (+0.0154, 5
of 5 seeds; seeds 5-9: +0.0211, 5 of 5), direct 0.7107, teacher 0.7100; validation picks direct weight 0.5 (0.7101; best
aux 0.7069), the shipped student's setting. ml_biased: aux 0.6999 (+0.0089, 5 of 5), direct
0.6998 (aux - direct +0.0001, 3 of 5; on seeds 5-9: +0.0064, 4 of 5), test log loss aux 0.654,
direct 0.771, student 0.665. synthetic_drift: student 0.6083, aux 0.6667 (+0.0584, 5 of 5),
direct 0.6700 (weight 0.8), teacher 0.6655. same_data: student 0.7899, aux 0.7909, direct
0.7938 (weight 0.5, T 2), teacher 0.7903. With the auxiliary head on stream 1 alone, the best
aux validation WAUC was 0.0027 lower in ml_window and ml_biased (test: aux 0.7100, biased aux
0.6977, synthetic aux 0.6596).

Findings with the former MLP student and teacher (2026-11-30): students on
4 weeks gain a lot from the teacher (ml_window aux - student +0.0279 WAUC, positive on 5 of 5
seeds; synthetic_drift +0.0884), even from a teacher worse than them (ml_biased: teacher
0.6524, student 0.6813, aux 0.6956). ``direct`` ranks better than ``aux`` on MovieLens
(ml_window -0.0075, ml_biased -0.0051, both 0 of 5 seeds), level on synthetic (+0.0005);
with the biased teacher ``direct`` pays in calibration (test log loss 0.696, 0.903 at
weight 0.8; aux 0.668, student 0.659). Validation picks aux weight 8, T 1 in ml_window
(0.7101 vs direct 0.7085), the shipped student's settings. Same data: aux +0.0003.
With longer windows the biased teacher stops helping and ``direct`` starts to hurt: aux -
direct with it +0.0036 (4 of 5 seeds) at ``--weeks 8``, +0.0048 (5 of 5) at 12, where direct
(0.7190) ends below the student alone (0.7235) and aux does not (0.7238); aux - student with
the unbiased teacher +0.0087 (4 of 5) at 8 weeks, +0.0088 (3 of 5) at 12; synthetic_drift at 8
weeks: aux - student +0.0325, aux - direct +0.0025 (both 5 of 5).

Usage: python benchmarks/distill_quality.py [--seeds 0 1 2 3 4] [--weeks 4]
       [--settings ml_window ml_biased synthetic_drift same_data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from mdctr.core.timeutil import DAY, day_ts, iso_day
from mdctr.domains.datasets import resolve_data
from mdctr.domains.movielens import prepare_movielens
from mdctr.domains.spec import load_spec
from mdctr.platform.config import TrainConfig, load_train_config
from mdctr.platform.labelling import write_labels
from mdctr.platform.launcher import resolve_launcher
from mdctr.platform.model import CTRModel, feature_layout
from mdctr.platform.outputs import MetricsOutput
from mdctr.platform.quiet import quiet_library_warnings
from mdctr.platform.run import open_run, prediction_job, train
from _seed_table import summarise

REPO = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = REPO / "configs/movielens_gender_teacher.yaml", REPO / "configs/movielens_gender_shared.yaml"
AUX_GRID = [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (8.0, 1.0), (16.0, 1.0), (8.0, 2.0)]
DIRECT_GRID = [(0.3, 1.0), (0.5, 1.0), (0.8, 1.0), (0.9, 1.0), (0.5, 2.0)]
SYNTHETIC_LOOP = {"batch_size": 2048}  # epochs and patience: the configs' (30, 3)


@dataclass(frozen=True)
class Setting:
    data: str
    #: students train on the last weeks before the valid days, the teacher on what precedes them
    window: bool = True
    #: the teacher learns ``rating >= teacher_threshold`` (MovieLens only)
    teacher_threshold: int | None = None
    loop: dict = field(default_factory=dict)


SETTINGS = {
    "ml_window": Setting("movielens-100k:gender"),
    "ml_biased": Setting("movielens-100k:gender", teacher_threshold=5),
    "synthetic_drift": Setting(f"synthetic:{REPO / 'configs/synthetic.yaml'}", loop=SYNTHETIC_LOOP),
    "same_data": Setting("movielens-100k:gender", window=False),
}


def window_start(data_dir: Path, weeks: int) -> date:
    """The first day of the students' window: ``weeks`` weeks before the valid days."""
    return date.fromisoformat(iso_day(load_spec(data_dir).split.temporal.valid_start - weeks * 7 * DAY))


def config(path: Path, data: str | Path, s: Setting, seed: int, *, teacher: bool, start: date | None,
           distill: dict | None = None) -> TrainConfig:
    raw = load_train_config(path).model_dump(mode="json", exclude={"tune"})
    raw["data"] = str(data)
    raw["train"].update(s.loop, seed=seed, split_seed=seed, window=None, split_kind="random")
    if start is not None:  # the teacher before the window (random hold-out), students on it (temporal)
        raw["train"].update({"window": {"end": start.isoformat()}} if teacher else
                            {"window": {"start": start.isoformat()}, "split_kind": "temporal"})
    raw["distill"] = distill
    return TrainConfig.model_validate(raw)


def parameters(cfg: TrainConfig) -> int:
    spec = load_spec(resolve_data(cfg.data))
    return sum(p.numel() for p in CTRModel(feature_layout(spec, cfg.model, cfg.baseline), cfg.model,
                                           device="meta").parameters())


def teacher_test(run_dir: Path, data_dir: Path, student: TrainConfig, out: Path) -> dict:
    """The teacher's metrics on the students' test rows."""
    job = prediction_job(open_run(run_dir), data_dir, "test", MetricsOutput(out, "eval", "test", show=False),
                         selection=student.train.selection())
    resolve_launcher(None).launch(job)
    return json.loads(out.read_text())


def best_valid_wauc(run_dir: Path) -> float:
    history = json.loads((run_dir / "history.json").read_text())["history"]["all"]
    return max(h["valid_wauc"] for h in history if h.get("valid_wauc") is not None)


def run_setting(name: str, s: Setting, seeds: list[int], weeks: int, tmp: Path) -> tuple[dict, dict]:
    data_dir = resolve_data(s.data)
    teacher_data: Path = data_dir
    if s.teacher_threshold is not None:
        teacher_data = tmp / f"teacher-data-{s.teacher_threshold}"
        if not teacher_data.exists():
            prepare_movielens("gender", teacher_data, label_threshold=s.teacher_threshold)
    start = window_start(data_dir, weeks) if s.window else None
    valid_start = load_spec(data_dir).split.temporal.valid_start
    tests: dict[str, list[dict]] = {"student": [], "teacher": []}
    valids: dict[str, list[float]] = {}
    grid = [("student", None)] + [(f"aux w{w:g} T{t:g}", ("aux", w, t)) for w, t in AUX_GRID] + \
        [(f"direct w{w:g} T{t:g}", ("direct", w, t)) for w, t in DIRECT_GRID]
    print(f"\n== {name}: {s.data}" + (f", students on {start} .. {iso_day(valid_start - DAY)}" if start else ""),
          flush=True)
    for seed in seeds:
        t0 = time.perf_counter()
        store = tmp / f"labels-{name}-{seed}"
        t_cfg = config(TEACHER, teacher_data, s, seed, teacher=True, start=start)
        t_dir = tmp / f"{name}-teacher-{seed}"
        train(t_cfg, t_dir, test=False)
        student_cfg = config(STUDENT, data_dir, s, seed, teacher=False, start=start)
        tests["teacher"].append(teacher_test(t_dir, data_dir, student_cfg, tmp / f"{name}-teacher-{seed}.json"))
        if start is not None:
            write_labels(t_dir, data_dir, store=store, split=None, window=(day_ts(start), valid_start),
                         domains=load_spec(data_dir).domain_names)
        else:
            write_labels(t_dir, data_dir, store=store, split="train", split_seed=seed)
        print(f"{name} seed {seed}: teacher test WAUC {tests['teacher'][-1]['wauc']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for label, d in grid:
            distill = None if d is None else {"store": str(store), "mode": d[0], "weight": d[1], "temperature": d[2]}
            cfg = config(STUDENT, data_dir, s, seed, teacher=False, start=start, distill=distill)
            out = tmp / f"{name}-{label.replace(' ', '_')}-{seed}"
            t0 = time.perf_counter()
            m = train(cfg, out)
            tests.setdefault(label, []).append(m)
            valids.setdefault(label, []).append(best_valid_wauc(out))
            print(f"{name} seed {seed}  {label:<15} valid WAUC {valids[label][-1]:.4f}  test WAUC {m['wauc']:.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return tests, valids


def choose(valids: dict[str, list[float]], mode: str) -> str:
    """The grid point of ``mode`` with the best mean validation WAUC."""
    return max((k for k in valids if k.startswith(mode)), key=lambda k: statistics.mean(valids[k]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--weeks", type=int, default=4, help="the students' window, in weeks before the valid days")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    if args.weeks < 1:
        p.error("--weeks must be >= 1")
    quiet_library_warnings()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            s = SETTINGS[name]
            tests, valids = run_setting(name, s, args.seeds, args.weeks, Path(tmp))
            print(f"\n{name}: mean validation WAUC per grid point")
            for k, v in valids.items():
                print(f"  {k:<15} {statistics.mean(v):.4f}")
            chosen = {m: choose(valids, m) for m in ("aux", "direct")}
            print(f"chosen on validation: aux {chosen['aux']!r}, direct {chosen['direct']!r}")
            picked = {"student": tests["student"], "direct": tests[chosen["direct"]], "aux": tests[chosen["aux"]],
                      "teacher": tests["teacher"]}
            summary = summarise({name: picked}, args.seeds)[name]
            w = {m: [r["wauc"] for r in runs] for m, runs in picked.items()}
            diff = {f"aux_minus_{b}_per_seed": [round(a - x, 5) for a, x in zip(w["aux"], w[b])]
                    for b in ("student", "direct")}
            for k, v in diff.items():
                print(f"{name}: {k.replace('_per_seed', '').replace('_', ' ')}: mean {statistics.mean(v):+.4f}, "
                      f"positive on {sum(x > 0 for x in v)} of {len(v)} seeds {v}")
            logloss = {m: round(statistics.mean(r["logloss"] for r in runs), 4) for m, runs in picked.items()}
            print(f"{name}: mean test log loss " + ", ".join(f"{m} {v:.4f}" for m, v in logloss.items()))
            report[name] = {m: summary[m]["wauc_mean"] for m in picked} | diff | {
                "std": {m: summary[m]["wauc_std"] for m in picked}, "logloss": logloss,
                "chosen": {m: chosen[m] for m in chosen},
                "valid": {k: round(statistics.mean(v), 5) for k, v in valids.items()}}
    t_cfg = load_train_config(TEACHER)
    report["parameters"] = {"teacher": parameters(t_cfg), "student": parameters(load_train_config(STUDENT))}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bad input and faults, across every subcommand: each case must exit 2 with one stderr line
``mdctr: error: ...`` naming the culprit (the flag, path or key), no traceback, and leave
nothing written (the case's workspace and the shared artifacts are unchanged).

Table-driven: a case is an argv template (``{A}``: the shared artifacts of ``conftest.py``,
``{D}``: the dataset their run trained on, ``{O}``: a dataset with other fields, ``{T}``: the
case's own ``tmp_path``, also its working directory), what the line must name, and the damage
done to copies in ``{T}`` first. Every case runs in-process through
:func:`mdctr.cli.main`; a handful also run as a user runs them (a subprocess).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdctr.cli import main

MDCTR = str(Path(sys.executable).parent / "mdctr")


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # split on whitespace after formatting
    culprit: tuple[str, ...]  # each must appear in the error line
    setup: tuple[tuple, ...] = ()
    xfail: str | None = None


def case(id: str, argv: str, *culprit: str, setup: tuple[tuple, ...] = (), xfail: str | None = None) -> Case:
    return Case(id, argv, culprit, setup, xfail)


# -- damage done to copies in {T} ------------------------------------------------------------

def _subst(text: str, A: Path, T: Path) -> str:
    return text.replace("{A}", str(A)).replace("{T}", str(T))


def _apply(op: tuple, A: Path, T: Path) -> None:
    kind, *args = op
    if kind == "cp":  # ("cp", src under A, [dst under T])
        src, dst = A / args[0], T / (args[1] if len(args) > 1 else args[0])
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    elif kind == "write":  # ("write", rel, text)
        (T / args[0]).parent.mkdir(parents=True, exist_ok=True)
        (T / args[0]).write_text(_subst(args[1], A, T))
    elif kind == "edit":  # ("edit", rel, old, new): the text must contain old
        path = T / args[0]
        text = path.read_text()
        old = _subst(args[1], A, T)
        assert old in text, (path, old)
        path.write_text(text.replace(old, _subst(args[2], A, T)))
    elif kind == "rm":
        path = T / args[0]
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif kind == "mkdir":
        (T / args[0]).mkdir(parents=True)
    elif kind == "trunc":  # ("trunc", rel, keep bytes)
        path = T / args[0]
        path.write_bytes(path.read_bytes()[: args[1]])
    else:
        raise ValueError(kind)


#: a non-empty directory (where an --out must not be) and a plain file (where a directory must be)
FULL = ("write", "full/precious.txt", "do not touch")
FILE = ("write", "file.txt", "just a file")
RUN = ("cp", "run")
ADAPTER = ("cp", "adapter-ad")
LABELS = ("cp", "labels")
ADS = ("cp", "ads")


def _manifest_dir(A: Path) -> str:
    return next((A / "labels" / "data").iterdir()).name


# -- the table -------------------------------------------------------------------------------

TRAIN = "train --config {A}/train.yaml --out {T}/out"
EVAL = "evaluate --run {A}/run --out {T}/m.json"
FT = "adapters finetune --base {A}/run --domain ad --data {D} --out {T}/out --epochs 1"
MERGE = "adapters merge --run {A}/run --domain ad --adapter {A}/adapter-ad --out {T}/out"
EXPORT = "adapters export --run {A}/run --adapter {A}/adapter-ad --out {T}/out"
LW = "labels write --teacher {A}/run --data {D} --split valid --store {T}/store"
SYNTH = "data synth --config {A}/synth.yaml --out {T}/out"
PREP = "data prepare movielens-100k --out {T}/out"
PIPE = "--config {A}/cadence.yaml"

USAGE = [
    # data
    case("data-prepare-unknown-option", PREP + " --bogus", "--bogus"),
    case("data-prepare-missing-out", "data prepare movielens-100k", "--out"),
    case("data-prepare-split-seed-type", PREP + " --split-seed abc", "--split-seed"),
    case("data-prepare-split-choice", PREP + " --split bogus", "--split", "bogus"),
    case("data-prepare-split-seed-range", PREP + " --split-seed -1", "--split-seed", "-1"),
    case("data-prepare-unknown-dataset", "data prepare movielens-1m --out {T}/out", "movielens-1m"),
    case("data-synth-missing-config", "data synth --out {T}/out", "--config"),
    case("data-synth-rows-type", SYNTH + " --rows some", "--rows"),
    case("data-synth-rows-range", SYNTH + " --rows 0", "--rows"),
    case("data-synth-seed-range", SYNTH + " --seed -1", "--seed"),
    case("data-validate-unknown-option", "data validate {A}/ads --bogus", "--bogus"),
    case("data-validate-missing-argument", "data validate", "'directory'"),
    # train / evaluate
    case("train-missing-out", "train --config {A}/train.yaml", "--out"),
    case("train-unknown-option", TRAIN + " --epochs 3", "--epochs"),
    case("train-world-size-range", TRAIN + " --world-size 0", "--world-size"),
    case("train-world-size-type", TRAIN + " --world-size x", "--world-size"),
    case("train-workers-range", TRAIN + " --workers 0", "--workers"),
    case("train-workers-world-size", TRAIN + " --workers 2 --world-size 3", "--world-size 3", "2 workers"),
    case("train-seed-range", TRAIN + " --seed -1", "--seed"),
    case("train-split-seed-range", TRAIN + " --split-seed -1", "--split-seed"),
    case("evaluate-split-choice", EVAL + " --split bogus", "--split", "bogus"),
    case("evaluate-missing-run", "evaluate --split test", "--run"),
    # adapters
    case("finetune-rows-choice", FT + " --rows some", "--rows"),
    case("finetune-epochs-range", FT.replace("--epochs 1", "--epochs 0"), "--epochs"),
    case("finetune-patience-range", FT + " --patience 0", "--patience"),
    case("finetune-epochs-type", FT.replace("--epochs 1", "--epochs x"), "--epochs"),
    case("finetune-lr-range", FT + " --lr 0", "--lr"),
    case("finetune-lr-nan", FT + " --lr nan", "--lr"),
    case("finetune-alpha-range", FT + " --alpha 0", "--alpha"),
    case("finetune-rank-range", FT + " --rank 0", "--rank"),
    case("finetune-seed-range", FT + " --seed -1", "--seed"),
    case("finetune-missing-domain", "adapters finetune --base {A}/run --data {D} --out {T}/out", "--domain"),
    case("adapters-list-missing-run", "adapters list", "--run"),
    case("adapters-merge-missing-domain", "adapters merge --run {A}/run --out {T}/out", "--domain"),
    case("adapters-export-unknown-option", EXPORT + " --bogus", "--bogus"),
    # labels
    case("labels-write-split-choice", LW.replace("--split valid", "--split bogus"), "--split", "bogus"),
    case("labels-write-world-size-range", LW + " --world-size 0", "--world-size"),
    case("labels-write-world-size-type", LW + " --world-size abc", "--world-size"),
    case("labels-write-split-seed-range", LW + " --split-seed -1", "--split-seed"),
    case("labels-write-missing-teacher", "labels write --data {D} --store {T}/store", "--teacher"),
    case("labels-list-unknown-option", "labels list --store {A}/labels --bogus", "--bogus"),
    case("labels-show-missing-argument", "labels show --store {A}/labels", "'version'"),
    case("labels-gc-keep-type", "labels gc --keep abc --store {A}/labels", "--keep"),
    case("labels-gc-keep-range", "labels gc --keep -1 --store {A}/labels", "--keep", "-1"),
    case("labels-gc-missing-keep", "labels gc --store {A}/labels", "--keep"),
    # pipeline
    case("pipeline-run-bad-date", "pipeline run tpm --date 1998-13-01 " + PIPE, "--date", "1998-13-01"),
    case("pipeline-run-unknown-stage", "pipeline run weekly --date 2024-01-20 " + PIPE, "weekly"),
    case("pipeline-run-missing-date", "pipeline run tpm " + PIPE, "--date"),
    case("pipeline-replay-to-before-from", "pipeline replay --from 2024-01-20 --to 2024-01-19 " + PIPE, "--to"),
    case("pipeline-replay-bad-from", "pipeline replay --from 2024-02-30 --to 2024-03-01 " + PIPE, "--from"),
    case("pipeline-list-unknown-stage", "pipeline list --stage weekly " + PIPE, "--stage", "weekly"),
    case("pipeline-list-missing-config", "pipeline list", "--config"),
    case("pipeline-show-missing-argument", "pipeline show " + PIPE, "'version'"),
    # a fresh store: a bad date or stage must not create it
    case("pipeline-run-bad-date-fresh-store", "pipeline run tpm --date 2024-1-5 --config {T}/c.yaml", "--date",
         setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "{A}/pstore", "{T}/fresh"))),
    case("pipeline-run-unknown-stage-fresh-store", "pipeline run weekly --date 2024-01-20 --config {T}/c.yaml",
         "weekly", setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "{A}/pstore", "{T}/fresh"))),
]

PATHS = [
    # data
    case("data-synth-config-missing", "data synth --config {T}/nope.yaml --out {T}/out", "{T}/nope.yaml"),
    case("data-synth-config-is-dir", "data synth --config {T}/full --out {T}/out", "{T}/full", setup=(FULL,)),
    case("data-synth-out-is-file", "data synth --config {A}/synth.yaml --out {T}/file.txt", "{T}/file.txt",
         setup=(FILE,)),
    case("data-synth-out-not-empty", "data synth --config {A}/synth.yaml --out {T}/full", "{T}/full", "--overwrite",
         setup=(FULL,)),
    case("data-prepare-out-is-file", "data prepare movielens-100k --out {T}/file.txt", "{T}/file.txt",
         setup=(FILE,)),
    case("data-prepare-out-not-empty", "data prepare movielens-100k --out {T}/full", "{T}/full", setup=(FULL,)),
    case("data-validate-missing", "data validate {T}/nope", "{T}/nope"),
    case("data-validate-is-file", "data validate {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    # train / evaluate
    case("train-config-missing", "train --config {T}/nope.yaml --out {T}/out", "{T}/nope.yaml"),
    case("train-config-is-dir", "train --config {T}/full --out {T}/out", "{T}/full", setup=(FULL,)),
    case("train-out-is-file", "train --config {A}/train.yaml --out {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    case("train-out-not-empty", "train --config {A}/train.yaml --out {T}/full", "{T}/full", setup=(FULL,)),
    case("train-config-data-missing", "train --config {T}/c.yaml --out {T}/out", "{T}/nodata",
         setup=(("write", "c.yaml", "data: {T}/nodata\n"),)),
    case("evaluate-run-missing", "evaluate --run {T}/nope", "{T}/nope"),
    case("evaluate-run-is-file", "evaluate --run {T}/file.txt", "{T}/file.txt", "it is a file", setup=(FILE,)),
    case("train-resume-nothing", "train --config {A}/train.yaml --out {T}/nope --resume", "{T}/nope"),
    case("evaluate-data-missing", EVAL + " --data {T}/nope", "{T}/nope"),
    case("evaluate-data-is-file", EVAL + " --data {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    case("evaluate-out-is-dir", "evaluate --run {A}/run --out {T}/full", "{T}/full", setup=(FULL,)),
    # adapters
    case("finetune-base-missing", FT.replace("{A}/run", "{T}/nope"), "{T}/nope"),
    case("finetune-base-is-file", FT.replace("{A}/run", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("finetune-data-missing", FT.replace("{D}", "{T}/nope"), "{T}/nope"),
    case("finetune-out-is-file", FT.replace("{T}/out", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("finetune-out-not-empty", FT.replace("{T}/out", "{T}/full"), "{T}/full", setup=(FULL,)),
    case("adapters-list-run-missing", "adapters list --run {T}/nope", "{T}/nope"),
    case("adapters-list-adapter-missing", "adapters list --run {A}/run --adapter {T}/nope", "{T}/nope"),
    case("adapters-list-adapter-is-file", "adapters list --run {A}/run --adapter {T}/file.txt", "{T}/file.txt",
         setup=(FILE,)),
    case("adapters-merge-run-is-file", MERGE.replace("{A}/run", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("adapters-merge-adapter-missing", MERGE.replace("{A}/adapter-ad", "{T}/nope"), "{T}/nope"),
    case("adapters-merge-out-is-file", MERGE.replace("{T}/out", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("adapters-merge-out-not-empty", MERGE.replace("{T}/out", "{T}/full"), "{T}/full", setup=(FULL,)),
    case("adapters-export-run-missing", EXPORT.replace("{A}/run", "{T}/nope"), "{T}/nope"),
    case("adapters-export-adapter-is-file", EXPORT.replace("{A}/adapter-ad", "{T}/file.txt"), "{T}/file.txt",
         setup=(FILE,)),
    case("adapters-export-out-is-file", EXPORT.replace("{T}/out", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("adapters-export-out-not-empty", EXPORT.replace("{T}/out", "{T}/full"), "{T}/full", setup=(FULL,)),
    # labels
    case("labels-write-teacher-missing", LW.replace("{A}/run", "{T}/nope"), "{T}/nope"),
    case("labels-write-teacher-is-file", LW.replace("{A}/run", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("labels-write-data-missing", LW.replace("{D}", "{T}/nope"), "{T}/nope"),
    case("labels-write-store-is-file", LW.replace("{T}/store", "{T}/file.txt"), "{T}/file.txt", setup=(FILE,)),
    case("labels-list-store-is-file", "labels list --store {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    case("labels-show-store-is-file", "labels show latest --store {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    case("labels-gc-store-is-file", "labels gc --keep 1 --store {T}/file.txt", "{T}/file.txt", setup=(FILE,)),
    # pipeline
    case("pipeline-run-config-missing", "pipeline run tpm --date 2024-01-20 --config {T}/nope.yaml",
         "{T}/nope.yaml"),
    case("pipeline-replay-config-is-dir", "pipeline replay --from 2024-01-20 --to 2024-01-21 --config {T}/full",
         "{T}/full", setup=(FULL,)),
    case("pipeline-replay-out-is-dir", "pipeline replay --from 2024-01-20 --to 2024-01-21 --out {T}/full " + PIPE,
         "{T}/full", setup=(FULL,)),
    case("pipeline-list-config-missing", "pipeline list --config {T}/nope.yaml", "{T}/nope.yaml"),
    case("pipeline-show-config-missing", "pipeline show tpm-x --config {T}/nope.yaml", "{T}/nope.yaml"),
    case("pipeline-config-data-missing", "pipeline list --config {T}/c.yaml", "{T}/nodata",
         setup=(("write", "c.yaml", "data: {T}/nodata\nstore: {T}/store\n"),)),
    case("pipeline-config-store-is-file", "pipeline list --config {T}/c.yaml", "{T}/file.txt",
         setup=(FILE, ("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "{A}/pstore", "{T}/file.txt"))),
]

BAD_YAML = "train:\n  epochs: [1\n"
MALFORMED = [
    # configs
    case("train-config-malformed-yaml", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "malformed YAML",
         setup=(("write", "c.yaml", BAD_YAML),)),
    case("train-config-not-a-mapping", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "mapping",
         setup=(("write", "c.yaml", "- data\n- model\n"),)),
    case("train-config-empty", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "'data'",
         setup=(("write", "c.yaml", ""),)),
    case("train-config-unknown-key", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "train.epochz",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "  epochs: 1", "  epochz: 1"))),
    case("train-config-wrong-type", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "train.epochs",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "  epochs: 1", "  epochs: many"))),
    case("train-config-embedding-adam-on-cpu", "train --config {T}/c.yaml --out {T}/out", "optim.embedding.type",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "rowwise_adagrad", "adam"))),
    case("train-config-embedding-weight-decay-on-cpu", "train --config {T}/c.yaml --out {T}/out",
         "optim.embedding.weight_decay",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "eps: 1.0e-08\n    weight_decay: 0.0",
                                                 "eps: 1.0e-08\n    weight_decay: 0.001"))),
    case("train-config-dropout-per-layer-count", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml",
         "model.dropout", setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "  dropout: 0.0", "  dropout: [0.1]"))),
    case("train-config-plateau-without-validation", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml",
         "lr_schedule", setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "validation: true", "validation: false"),
                               ("edit", "c.yaml", "decay: none", "decay: plateau"))),
    case("train-config-adapters-lr-in-joint-mode", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml",
         "adapters.lr", setup=(("cp", "train.yaml", "c.yaml"),
                               ("edit", "c.yaml", "baseline: shared", "baseline: shared\nadapters: {mode: joint, lr: 0.001}"))),
    case("train-config-adapters-wrong-type", "train --config {T}/c.yaml --out {T}/out", "{T}/c.yaml", "adapters",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "baseline: shared", "baseline: shared\nadapters: 3"))),
    case("data-synth-config-not-a-mapping", SYNTH.replace("{A}/synth.yaml", "{T}/c.yaml"), "{T}/c.yaml", "mapping",
         setup=(("write", "c.yaml", "just text\n"),)),
    case("data-synth-config-wrong-type", SYNTH.replace("{A}/synth.yaml", "{T}/c.yaml"), "{T}/c.yaml", "rows",
         setup=(("write", "c.yaml", "rows: lots\n"),)),
    case("pipeline-config-unknown-key", "pipeline run tpm --date 2024-01-20 --config {T}/c.yaml", "{T}/c.yaml",
         "tpm.wobble", setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "tpm:\n", "tpm:\n  wobble: 1\n"))),
    case("pipeline-config-malformed-yaml", "pipeline list --config {T}/c.yaml", "{T}/c.yaml", "malformed YAML",
         setup=(("write", "c.yaml", BAD_YAML),)),
    case("pipeline-config-wrong-type", "pipeline show x --config {T}/c.yaml", "{T}/c.yaml", "seed",
         setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "seed: 0", "seed: zero"))),
    # run directories
    case("evaluate-run-no-run-json", "evaluate --run {T}/run", "{T}/run", "run.json", setup=(RUN, ("rm", "run/run.json"))),
    case("evaluate-run-json-malformed", "evaluate --run {T}/run", "{T}/run/run.json",
         setup=(RUN, ("write", "run/run.json", "{oops"))),
    case("evaluate-run-json-no-run-id", "evaluate --run {T}/run", "{T}/run/run.json",
         setup=(RUN, ("write", "run/run.json", "{}"))),
    case("adapters-list-run-json-a-list", "adapters list --run {T}/run", "{T}/run/run.json",
         setup=(RUN, ("write", "run/run.json", "[1, 2]"))),
    case("evaluate-run-config-malformed", "evaluate --run {T}/run", "{T}/run/config.yaml",
         setup=(RUN, ("write", "run/config.yaml", BAD_YAML))),
    case("export-run-config-unknown-key", EXPORT.replace("{A}/run", "{T}/run").replace(" --adapter {A}/adapter-ad", ""),
         "{T}/run/config.yaml", "wobble", setup=(RUN, ("edit", "run/config.yaml", "baseline:", "wobble: 1\nbaseline:"))),
    case("merge-run-no-config", MERGE.replace("{A}/run", "{T}/run"), "{T}/run", "config.yaml",
         setup=(RUN, ("rm", "run/config.yaml"))),
    case("evaluate-run-dataset-yaml-malformed", "evaluate --run {T}/run", "{T}/run/dataset.yaml",
         setup=(RUN, ("write", "run/dataset.yaml", "fields: [\n"))),
    case("labels-write-teacher-no-dataset-yaml", LW.replace("{A}/run", "{T}/run"), "{T}/run", "dataset.yaml",
         setup=(RUN, ("rm", "run/dataset.yaml"))),
    case("evaluate-run-state-malformed", "evaluate --run {T}/run", "{T}/run/checkpoints/state.json",
         setup=(RUN, ("write", "run/checkpoints/state.json", "{oops"))),
    case("finetune-base-state-malformed", FT.replace("{A}/run", "{T}/run"), "{T}/run/checkpoints/state.json",
         setup=(RUN, ("write", "run/checkpoints/state.json", "[]"))),
    case("labels-write-teacher-state-wrong-type", LW.replace("{A}/run", "{T}/run"), "{T}/run/checkpoints/state.json",
         setup=(RUN, ("write", "run/checkpoints/state.json", '{"last_epoch": "x", "best_epoch": 0}'))),
    case("export-run-state-malformed", EXPORT.replace("{A}/run", "{T}/run").replace(" --adapter {A}/adapter-ad", ""),
         "{T}/run/checkpoints/state.json", setup=(RUN, ("write", "run/checkpoints/state.json", "{oops"))),
    case("evaluate-run-checkpoint-truncated", "evaluate --run {T}/run", "{T}/run/checkpoints/epoch-0000",
         setup=(RUN, ("trunc", "run/checkpoints/epoch-0000/__0_0.distcp", 100))),
    # adapters
    case("adapters-list-adapter-json-malformed", "adapters list --run {A}/run --adapter {T}/adapter-ad",
         "{T}/adapter-ad/adapter.json", setup=(ADAPTER, ("write", "adapter-ad/adapter.json", "{oops"))),
    case("merge-adapter-json-no-domain", MERGE.replace("{A}/adapter-ad", "{T}/adapter-ad"),
         "{T}/adapter-ad/adapter.json", "domain",
         setup=(ADAPTER, ("edit", "adapter-ad/adapter.json", '"domain": "ad"', '"domian": "ad"'))),
    case("export-adapter-json-a-list", EXPORT.replace("{A}/adapter-ad", "{T}/adapter-ad"), "{T}/adapter-ad/adapter.json",
         setup=(ADAPTER, ("write", "adapter-ad/adapter.json", "[]"))),
    case("adapters-list-adapter-weights-truncated", "adapters list --run {A}/run --adapter {T}/adapter-ad",
         "{T}/adapter-ad/adapter.safetensors", setup=(ADAPTER, ("trunc", "adapter-ad/adapter.safetensors", 64))),
    case("adapters-list-adapter-no-weights", "adapters list --run {A}/run --adapter {T}/adapter-ad",
         "{T}/adapter-ad", setup=(ADAPTER, ("rm", "adapter-ad/adapter.safetensors"))),
    # label stores
    case("labels-list-manifest-malformed", "labels list --store {T}/labels", "{T}/labels/manifest.json",
         setup=(LABELS, ("write", "labels/manifest.json", "{oops"))),
    case("labels-show-manifest-a-list", "labels show latest --store {T}/labels", "{T}/labels/manifest.json",
         setup=(LABELS, ("write", "labels/manifest.json", "[]"))),
    case("labels-gc-manifest-malformed", "labels gc --keep 0 --store {T}/labels", "{T}/labels/manifest.json",
         setup=(LABELS, ("write", "labels/manifest.json", "{oops"))),
    case("labels-write-manifest-malformed", LW.replace("{T}/store", "{T}/labels"), "{T}/labels/manifest.json",
         setup=(LABELS, ("write", "labels/manifest.json", "{oops"))),
    case("labels-show-manifest-versions-not-list", "labels show latest --store {T}/labels", "{T}/labels/manifest.json",
         setup=(LABELS, ("edit", "labels/manifest.json", '"versions": [', '"versions": 3, "x": ['))),
    # datasets
    case("data-validate-dataset-yaml-malformed", "data validate {T}/ads", "{T}/ads/dataset.yaml",
         setup=(ADS, ("write", "ads/dataset.yaml", "rows: [\n"))),
    case("data-validate-parquet-truncated", "data validate {T}/ads", "{T}/ads/part-00000.parquet",
         setup=(ADS, ("trunc", "ads/part-00000.parquet", 500))),
    case("evaluate-data-parquet-truncated", EVAL + " --data {T}/ads", "{T}/ads/part-00000.parquet",
         setup=(ADS, ("trunc", "ads/part-00000.parquet", 500))),
    case("finetune-data-dataset-yaml-malformed", FT.replace("{D}", "{T}/ads"), "{T}/ads/dataset.yaml",
         setup=(ADS, ("write", "ads/dataset.yaml", "- a list\n"))),
    case("labels-write-data-parquet-truncated", LW.replace("{D}", "{T}/ads"), "{T}/ads/part-00000.parquet",
         setup=(ADS, ("trunc", "ads/part-00000.parquet", 500))),
    case("train-data-dataset-yaml-malformed", "train --config {T}/c.yaml --out {T}/out", "{T}/ads/dataset.yaml",
         setup=(ADS, ("write", "ads/dataset.yaml", "rows: [\n"), ("write", "c.yaml", "data: {T}/ads\n"))),
    case("pipeline-data-parquet-truncated", "pipeline list --config {T}/c.yaml", "{T}/ads/part-00000.parquet",
         setup=(ADS, ("trunc", "ads/part-00000.parquet", 500),
                ("write", "c.yaml", "data: {T}/ads\nstore: {T}/store\n"))),
]

MISMATCH = [
    case("evaluate-data-other-fields", EVAL + " --data {O}", "{O}/dataset.yaml", "fields"),
    case("evaluate-data-unknown-builtin-split", EVAL + " --data movielens-100k:colour", "movielens-100k:colour",
         "unknown split 'colour'"),
    case("finetune-data-unknown-builtin-split", FT.replace("{D}", "movielens-100k:colour"), "movielens-100k:colour"),
    case("train-resume-other-config", "train --config {A}/train.yaml --out {T}/run --resume --seed 5", "{T}/run",
         "--resume", setup=(RUN,)),
    case("finetune-domain-not-in-data", FT.replace("--domain ad", "--domain X"), "'X'"),
    case("finetune-data-other-fields", FT.replace("{D}", "{O}").replace("--domain ad", "--domain F"),
         "{O}/dataset.yaml", "fields"),
    case("finetune-base-unfinished", FT.replace("{A}/run", "{T}/run"), "{T}/run/checkpoints",
         setup=(RUN, ("rm", "run/checkpoints/state.json"))),
    case("merge-domain-without-adapter", MERGE.replace(" --adapter {A}/adapter-ad", ""), "'ad'", "--adapter"),
    case("merge-domain-not-in-run", MERGE.replace("--domain ad", "--domain Z"), "'Z'"),
    case("merge-adapter-of-another-backbone", MERGE.replace("{A}/adapter-ad", "{T}/adapter-ad"),
         "{T}/adapter-ad/adapter.json", "backbone",
         setup=(ADAPTER, ("edit", "adapter-ad/adapter.json", '"base_run_id": "', '"base_run_id": "other-'))),
    case("export-domain-unknown", EXPORT.replace(" --adapter {A}/adapter-ad", "") + " --domain Z", "'Z'"),
    case("export-domain-unknown-with-adapter", EXPORT + " --domain Z", "'Z'"),
    case("export-adapter-passed-twice", EXPORT + " --adapter {T}/adapter-ad", "'ad'", setup=(ADAPTER,)),
    case("labels-write-teacher-unfinished", LW.replace("{A}/run", "{T}/run"), "{T}/run/checkpoints",
         setup=(RUN, ("write", "run/checkpoints/state.json", '{"last_epoch": 0, "best_epoch": -1}'))),
    case("labels-write-teacher-no-checkpoints", LW.replace("{A}/run", "{T}/run"), "{T}/run/checkpoints",
         setup=(RUN, ("rm", "run/checkpoints"))),
    case("labels-write-data-other-fields", LW.replace("{D}", "{O}"), "{O}/dataset.yaml", "fields"),
    case("labels-show-unknown-version", "labels show 20990101-000000-000000-beef --store {A}/labels",
         "20990101-000000-000000-beef"),
    case("train-domains-not-in-data", "train --config {T}/c.yaml --out {T}/out", "'X'",
         setup=(("cp", "train.yaml", "c.yaml"), ("edit", "c.yaml", "  epochs: 1", "  epochs: 1\n  domains: [X]"))),
    case("pipeline-show-unknown-version", "pipeline show actr-nope " + PIPE, "actr-nope"),
    case("pipeline-show-unknown-version-fresh-store", "pipeline show actr-nope --config {T}/c.yaml", "actr-nope",
         setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "{A}/pstore", "{T}/fresh"))),
    case("pipeline-config-unknown-domain", "pipeline list --config {T}/c.yaml", "nope",
         setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "store:", "ad_domains: [nope]\nstore:"))),
    case("pipeline-run-actr-only-without-cpm", "pipeline run actr --only --date 2024-01-20 --config {T}/c.yaml", "CPM",
         setup=(("cp", "pstore"), ("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "{A}/pstore", "{T}/pstore"))),
    # the cadence (the shared config has no cadence: section)
    case("cadence-tick-bad-now", "cadence tick --now yesterday " + PIPE, "--now", "yesterday"),
    case("cadence-tick-bad-executor", "cadence tick --executor k8s --now 2024-01-20 " + PIPE, "--executor", "k8s"),
    case("cadence-tick-no-cadence-section", "cadence tick --executor local --now 2024-01-20 " + PIPE, "cadence",
         "{A}/cadence.yaml"),
    case("cadence-tick-start-not-a-date", "cadence tick --executor local --config {T}/c.yaml", "cadence.start",
         setup=(("cp", "cadence.yaml", "c.yaml"), ("edit", "c.yaml", "store:", "cadence: {start: soon}\nstore:"))),
    case("cadence-tick-zero-attempts", "cadence tick --executor local --config {T}/c.yaml", "max_attempts",
         setup=(("cp", "cadence.yaml", "c.yaml"),
                ("edit", "c.yaml", "store:", "cadence: {start: 2024-01-20, max_attempts: 0}\nstore:"))),
    case("cadence-status-bad-now", "cadence status --now 2024-13-01 " + PIPE, "--now"),
    case("cadence-promote-unknown-version", "cadence promote actr-nope " + PIPE, "actr-nope"),
    case("cadence-rollback-nothing-serves", "cadence rollback " + PIPE, "nothing serves"),
    case("cadence-replay-bad-date", "cadence replay --from 2024-01-20 --to 2024-02-30 " + PIPE, "--to"),
    case("cadence-schedule-unknown-kind", "cadence schedule --print at " + PIPE, "--print", "at"),
    case("cadence-schedule-bad-cron", "cadence schedule --print crontab --cron 61 " + PIPE, "cron"),
    case("cadence-state-url-not-a-url", "cadence status --state-url nonsense " + PIPE, "lineage_url"),
    # tuning
    case("tune-missing-config", "tune --trials 2", "--config"),
    case("tune-config-missing-file", "tune --config {T}/nope.yaml", "{T}/nope.yaml"),
    case("tune-no-space", "tune --config {A}/train.yaml --out {T}/t", "tune.space"),
    case("tune-unknown-path", "tune --config {T}/c.yaml --out {T}/t", "tune.space.optim.dense.lrr",
         setup=(("cp", "train.yaml", "c.yaml"),
                ("edit", "c.yaml", "data:", "tune: {space: {optim.dense.lrr: {float: [0.001, 0.01]}}}\ndata:"))),
    case("tune-empty-range", "tune --config {T}/c.yaml --out {T}/t", "empty range",
         setup=(("cp", "train.yaml", "c.yaml"),
                ("edit", "c.yaml", "data:", "tune: {space: {optim.dense.lr: {float: [0.01, 0.01]}}}\ndata:"))),
    case("tune-zero-trials", "tune --config {T}/c.yaml --out {T}/t --trials 0", "--trials",
         setup=(("cp", "train.yaml", "c.yaml"),
                ("edit", "c.yaml", "data:", "tune: {space: {optim.dense.lr: {float: [0.001, 0.01]}}}\ndata:"))),
    case("tune-show-unknown-study", "tune show --study nope --storage {T}/s.journal", "nope"),
    case("tune-show-latest-no-journal", "tune show --storage {T}/s.journal", "{T}/s.journal"),
    case("tune-storage-is-a-directory", "tune show --study nope --storage {T}/full", "--storage",
         setup=(FULL,)),
]

CASES = [*(("usage", c) for c in USAGE), *(("paths", c) for c in PATHS), *(("artifact", c) for c in MALFORMED),
         *(("mismatch", c) for c in MISMATCH)]


def _params(cases):
    out = []
    for cls, c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        out.append(pytest.param(c, id=f"{cls}-{c.id}", marks=marks))
    return out


# -- running a case ---------------------------------------------------------------------------

def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under the roots: files by size and mtime, directories by presence."""
    snap = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            snap[str(p)] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return snap


def _diff(before: dict, after: dict) -> list[str]:
    return sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


@pytest.fixture
def workspace(artifacts, tmp_path, monkeypatch):
    """The case's working directory ``{T}`` (the default label store is relative to it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MDCTR_LABEL_STORE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def other():
    """``{O}``: a dataset with other fields than the run's (MovieLens-100K gender, from the cache)."""
    from mdctr.domains.datasets import resolve_data

    return resolve_data("movielens-100k:gender")


def _prepare(c: Case, A: Path, T: Path, O: Path) -> tuple[list[str], list[str]]:
    for op in c.setup:
        _apply(op, A, T)
    fmt = dict(A=A, T=T, D=A / "ads", O=O)
    return [a.format(**fmt) for a in c.argv.split()], [s.format(**fmt) for s in c.culprit]


def _check_line(line: str, culprit: list[str], c: Case) -> None:
    assert line.startswith("mdctr: error: "), line
    for s in culprit:
        assert s in line, f"{c.id}: {s!r} not named in {line!r}"


@pytest.mark.parametrize("c", _params(CASES))
def test_bad_input(c: Case, artifacts, other, workspace, capsys):
    argv, culprit = _prepare(c, artifacts, workspace, other)
    before = _snapshot(artifacts, workspace, other)
    capsys.readouterr()
    try:
        rc = main(argv)
    except BaseException as exc:  # a bug: show it, do not let it end the session
        pytest.fail(f"{c.id}: raised {type(exc).__name__}\n{''.join(traceback.format_exception(exc))}")
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    _check_line(lines[0], culprit, c)
    assert _diff(before, _snapshot(artifacts, workspace, other)) == []


# -- as a user runs it --------------------------------------------------------------------------

SUBPROCESS = ["usage-train-world-size-range", "usage-labels-gc-keep-type", "paths-evaluate-run-missing",
              "artifact-labels-list-manifest-malformed", "mismatch-evaluate-data-other-fields"]


@pytest.mark.parametrize("c", [p for p in _params(CASES) if p.id in SUBPROCESS])
def test_bad_input_subprocess(c: Case, artifacts, other, workspace):
    argv, culprit = _prepare(c, artifacts, workspace, other)
    before = _snapshot(artifacts, workspace, other)
    env = {k: v for k, v in os.environ.items() if k != "MDCTR_LABEL_STORE"}
    proc = subprocess.run([MDCTR, *argv], capture_output=True, text=True, cwd=workspace, timeout=300,
                          env={**env, "PYTHONWARNINGS": "ignore"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    _check_line(lines[0], culprit, c)
    assert _diff(before, _snapshot(artifacts, workspace, other)) == []


def test_table_covers_every_subcommand():
    """At least 60 cases, and every subcommand has bad-input cases."""
    assert len(CASES) >= 60
    ids = {c.argv.split()[0] if c.argv.split()[0] in ("train", "evaluate") else " ".join(c.argv.split()[:2])
           for _, c in CASES}
    want = {"data prepare", "data synth", "data validate", "train", "evaluate", "adapters finetune", "adapters list",
            "adapters merge", "adapters export", "labels write", "labels list", "labels show", "labels gc",
            "pipeline run", "pipeline replay", "pipeline list", "pipeline show", "cadence tick", "cadence status",
            "cadence promote", "cadence rollback", "cadence replay", "cadence schedule", "tune show",
            "tune --config"}
    assert want <= ids, want - ids


@pytest.mark.parametrize("argv", [
    "labels list --store {A}/labels",
    "labels show latest --store {A}/labels",
    "labels list --store {T}/no-store-yet",
    "adapters list --run {A}/run --adapter {A}/adapter-ad",
    "pipeline list --stage tpm " + PIPE,
    "data validate {D}",
], ids=lambda a: " ".join(a.split()[:2]))
def test_good_inputs_pass_the_same_checks(argv, artifacts, other, workspace, capsys):
    """The checks above refuse bad input only: the same commands on good input succeed and
    write nothing."""
    argv, _ = _prepare(Case("ok", argv, ()), artifacts, workspace, other)
    before = _snapshot(artifacts, workspace, other)
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""
    assert _diff(before, _snapshot(artifacts, workspace, other)) == []

"""``mdctr labels write``: a teacher run labels a dataset split once, into the label store.

The teacher's best model predicts every row of the split (all ranks, gathered); the logits
are joined with each row's ``ts`` and domain and committed as one version of the
:class:`~mdctr.platform.stores.labels.TeacherLabelStore`, in parts of ``PART_ROWS`` rows,
stamped with the teacher's run id and fingerprint and the data's directory, fingerprint and
``ts`` range.

The teacher's predictions go to a scratch directory inside the store (a hidden
``.tmp-PID-TOKEN`` entry, like a version being written): it is removed when the write ends,
and if the writer is killed, ``labels gc`` or the next write removes it.
"""

from __future__ import annotations

import dataclasses

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mdctr.core.errors import ConfigError
from mdctr.domains.datasets import resolve_data
from mdctr.domains.spec import load_spec
from mdctr.domains.validate import validate_dataset
from mdctr.platform.launcher import Launcher, resolve_launcher
from mdctr.platform.outputs import PredictionsOutput
from mdctr.platform.rundir import RunDir
from mdctr.platform.run import prediction_job
from mdctr.platform.stores.index import IdIndex
from mdctr.platform.stores.labels import TeacherLabelStore
from mdctr.platform.stores.versioned import Version

PART_ROWS = 1 << 20


def _parts(preds: pa.Table, data_dir: Path) -> Iterator[pa.Table]:
    """The predictions with each row's ``ts`` and domain name, ``PART_ROWS`` at a time."""
    spec = load_spec(data_dir)
    cols = [pq.read_table(data_dir / f, columns=["example_id", "ts"]) for f in spec.files]
    index = IdIndex(np.concatenate([c.column("example_id").to_numpy() for c in cols]))
    ts = np.concatenate([c.column("ts").to_numpy() for c in cols])
    names = np.array(spec.domain_names, dtype=object)
    for lo in range(0, preds.num_rows, PART_ROWS):
        part = preds.slice(lo, PART_ROWS)
        eid = part.column("example_id").to_numpy()
        yield pa.table({"example_id": eid, "teacher_logit": part.column("teacher_logit"),
                        "domain": pa.array(names[part.column("domain").to_numpy()], pa.string()),
                        "ts": ts[index.find(eid)[0]]})


def write_labels(teacher: str | Path, data: str | Path, *, store: str | Path, split: str | None = "train",
                 split_seed: int | None = None, world_size: int = 1, window: tuple[int | None, int | None] | None = None,
                 domains: list[str] | None = None, launcher: Launcher | None = None) -> Version:
    """Label ``split`` of ``data`` with the teacher run's best model; commit one version.

    ``window`` (``lo <= ts < hi``) and ``domains`` narrow the rows (default: the teacher's
    own domain selection, every ``ts`` even when the teacher trained on a ``train.window``)."""
    run = RunDir(teacher)
    ident = run.identity()
    data_dir = resolve_data(data)
    spec, _ = validate_dataset(data_dir)
    labels = TeacherLabelStore(store)
    labels.list()  # another kind of store, or a damaged manifest, fails before the teacher predicts
    labels.versions.remove_stale()
    new_store = not labels.root.exists()
    scratch = labels.versions.scratch(create=False)
    out = scratch / "predictions.parquet"
    job = prediction_job(run, data_dir, split, PredictionsOutput(out, "eval"), split_seed=split_seed,
                         world_size=world_size)  # checks the data against the teacher first
    job.selection = dataclasses.replace(job.selection, window=window)  # not the teacher's training window
    if domains is not None:
        job.selection = job.selection.with_domains(domains)
    scratch.mkdir(parents=True)
    try:
        resolve_launcher(launcher).launch(job)
        preds = pq.read_table(out, columns=["example_id", "logit", "domain"]).rename_columns(
            ["example_id", "teacher_logit", "domain"])
        if preds.num_rows == 0:
            what = f"split {split or 'all'}" + (f", window {list(window)}" if window is not None else "") + (
                f", domains {domains}" if domains is not None else "")
            raise ConfigError(f"nothing to label: {what} selects no rows", file=data_dir)
        meta = {"teacher_run_id": ident["run_id"], "teacher_fingerprint": ident["fingerprint"],
                "teacher_dir": str(run.path.resolve()), "teacher_config": run.config.fingerprint(),
                "data_dir": str(data_dir.resolve()), "data_fingerprint": spec.fingerprint, "split": split,
                "split_seed": split_seed, "window": None if window is None else list(window)}
        return labels.write(_parts(preds, data_dir), meta)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if new_store and labels.root.is_dir() and not any(labels.root.iterdir()):
            labels.root.rmdir()  # a failed first write leaves no empty store behind

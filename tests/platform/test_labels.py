"""Teacher-label store, labelling, and student distillation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from mdctr.domains.batching import Batch
from mdctr.domains.spec import load_spec
from mdctr.platform.config import DistillConfig
from mdctr.platform.distill import AuxHeadCTRModel, StudentLogits, TeacherJoin, distill_loss, served_logits
from mdctr.platform.labelling import write_labels
from mdctr.platform.launcher import LocalLauncher
from mdctr.platform.model import feature_layout
from mdctr.platform.run import evaluate, train
from mdctr.platform.stores.labels import TeacherLabelStore

DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # a midnight


def _part(ids, seed=0, domain="F", day=0) -> pa.Table:
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return pa.table({"example_id": ids, "teacher_logit": rng.standard_normal(len(ids)).astype(np.float32),
                     "domain": [domain] * len(ids), "ts": np.full(len(ids), T0 + day * DAY + 60)})


def test_write_read_lookup_range_and_sql(tmp_path):
    store = TeacherLabelStore(tmp_path)
    parts = [_part(np.arange(1000, 0, -1), 1, "F", 0), _part(np.arange(2000, 1500, -1), 2, "M", 3)]
    v = store.write(iter(parts), {"teacher_run_id": "t1"})
    assert v.meta["rows"] == 1500 and v.meta["domains"] == ["F", "M"] and v.meta["teacher_run_id"] == "t1"
    assert (v.meta["ts_min"], v.meta["ts_max"]) == (T0 + 60, T0 + 3 * DAY + 60)
    reader = store.reader("latest")
    q = np.array([5, 1999, 1200, 0])
    logits, found = reader.lookup(q)
    np.testing.assert_array_equal(found, [True, True, False, False])
    want = {int(i): x for p in parts for i, x in zip(p["example_id"].to_numpy(), p["teacher_logit"].to_numpy())}
    assert logits[0] == want[5] and logits[1] == want[1999] and logits[2] == 0
    assert store.read_range(domain="M").num_rows == 500
    assert store.read_range(start=T0 + DAY).num_rows == 500 and store.read_range(end=T0 + DAY).num_rows == 1000
    got = duckdb.sql(f"SELECT domain, count(*) FROM read_parquet({store.files()}) GROUP BY 1 ORDER BY 1").fetchall()
    assert got == [("F", 1000), ("M", 500)]


def test_versions_latest_at_or_before_named_and_gc(tmp_path):
    store = TeacherLabelStore(tmp_path)
    a = store.write([_part(range(10), day=0)], {})
    b = store.write([_part(range(10), day=5)], {})
    assert [v.name for v in store.list()] == [a.name, b.name] and a.name < b.name
    assert store.resolve("latest").name == b.name
    day = date.fromtimestamp(T0 + 3 * DAY)
    assert store.resolve("latest", at_or_before=day).name == a.name  # b's data reaches past that day
    assert store.resolve(a.name).name == a.name
    with pytest.raises(ValueError, match="no teacher-label version with data before"):
        store.resolve("latest", at_or_before=date.fromtimestamp(T0 - DAY))
    assert store.gc(keep=1) == [a.name]
    assert [v.name for v in store.list()] == [b.name]


@pytest.mark.parametrize("parts, match", [
    ([_part([1, 2, 2])], "duplicate example_id"),
    ([_part([1, 2]), _part([2, 3])], "duplicate example_id"),
    ([], "no rows"),
])
def test_bad_runs_commit_nothing(tmp_path, parts, match):
    store = TeacherLabelStore(tmp_path)
    with pytest.raises(ValueError, match=match):
        store.write(parts, {})
    assert store.list() == [] and not list(tmp_path.glob(".tmp-*"))


WRITER = """
import sys, time, numpy as np, pyarrow as pa
from mdctr.platform.stores.labels import TeacherLabelStore
def parts():
    for i in range(1000):
        ids = np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64)
        yield pa.table({"example_id": ids, "teacher_logit": np.ones(1000, np.float32), "domain": ["F"] * 1000,
                        "ts": np.zeros(1000, np.int64)})
        if i == 2:
            print("writing", flush=True)
            time.sleep(60)
TeacherLabelStore(sys.argv[1]).write(parts(), {"teacher_run_id": "crashing"})
"""


def test_crash_mid_write_loses_nothing_committed(tmp_path):
    store = TeacherLabelStore(tmp_path)
    committed = [store.write([_part(range(i * 100, i * 100 + 100), seed=i)], {"n": i}) for i in range(2)]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fresh = TeacherLabelStore(tmp_path)
    assert [v.name for v in fresh.list()] == [v.name for v in committed]
    assert fresh.resolve("latest").name == committed[-1].name
    for i, v in enumerate(committed):  # every committed label is readable and unchanged
        logits, found = fresh.reader(v.name).lookup(np.arange(i * 100, i * 100 + 100))
        assert found.all()
        np.testing.assert_array_equal(logits, _part(range(i * 100, i * 100 + 100), seed=i)["teacher_logit"].to_numpy())
    assert len(list(tmp_path.glob(".tmp-*"))) == 1  # the killed writer's parts: invisible
    fresh.gc()
    assert not list(tmp_path.glob(".tmp-*"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _batch(labels, ids) -> Batch:
    n = len(labels)
    return Batch(None, torch.zeros(n, 0), torch.tensor(labels, dtype=torch.float32), torch.zeros(n, dtype=torch.long),
                 torch.tensor(ids))


def test_join_and_losses(tmp_path):
    store = TeacherLabelStore(tmp_path)
    store.write([pa.table({"example_id": np.array([10, 11], np.int64), "teacher_logit": np.array([2.0, -1.0], np.float32),
                           "domain": ["F", "F"], "ts": np.zeros(2, np.int64)})], {})
    batch = TeacherJoin(store.reader())(_batch([1.0, 0.0, 1.0], [10, 11, 12]))
    torch.testing.assert_close(batch.targets["teacher_logit"], torch.tensor([2.0, -1.0, 0.0]))
    assert batch.targets["has_teacher"].tolist() == [True, True, False]
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.5], [-0.4, 2.0]])
    aux = distill_loss(DistillConfig(mode="aux", weight=0.7, temperature=2.0))(StudentLogits(logits[:, 0], logits[:, 1]),
                                                                                 batch)
    soft = torch.sigmoid(torch.tensor([2.0, -1.0]) / 2.0)
    want = (F.binary_cross_entropy_with_logits(logits[:, 0], batch.labels)
            + 0.7 * F.binary_cross_entropy_with_logits(logits[:2, 1], soft))  # row 3 has no teacher label
    torch.testing.assert_close(aux, want)
    direct = distill_loss(DistillConfig(mode="direct", weight=0.25))(logits[:, 0], batch)
    target = torch.tensor([0.75 + 0.25 * torch.sigmoid(torch.tensor(2.0)), 0.25 * torch.sigmoid(torch.tensor(-1.0)), 1.0])
    torch.testing.assert_close(direct, F.binary_cross_entropy_with_logits(logits[:, 0], target))


def test_teacher_labels_then_student(ml_gender, make_config, tmp_path):
    teacher_cfg = make_config(ml_gender, model={"embedding_dim": 24, "hidden": [96, 48]}, train={"epochs": 2})
    train(teacher_cfg, tmp_path / "teacher")
    store = tmp_path / "labels"
    # a killed writer's scratch (its PID is gone) is removed by the next write; the
    # predictions go to a hidden scratch entry inside the store, removed when done
    stale = store / f".tmp-{_dead_pid()}-0badf00d"
    stale.mkdir(parents=True)
    (stale / "predictions.parquet").write_bytes(b"x" * 1000)
    scratch: list[Path] = []

    class Recording:
        def launch(self, job):
            scratch.append(job.output.out)
            assert not stale.exists()
            LocalLauncher().launch(job)

    v = write_labels(tmp_path / "teacher", ml_gender, store=store, launcher=Recording())
    assert len(scratch) == 1 and scratch[0].parent.parent == store.absolute()
    assert scratch[0].parent.name.startswith(f".tmp-{os.getpid()}-") and not scratch[0].parent.exists()
    assert not list(store.glob(".tmp-*"))
    # a write that fails after predicting leaves neither scratch nor an empty new store
    with pytest.raises(ValueError, match="selects no rows"):
        write_labels(tmp_path / "teacher", ml_gender, store=tmp_path / "empty", window=(0, 1))
    assert not (tmp_path / "empty").exists()
    assert v.meta["rows"] == 79_900 and v.meta["split"] == "train" and v.meta["domains"] == ["F", "M"]
    # the stored logits are the teacher's predictions
    teacher_pred = TeacherLabelStore(store).reader().logits
    assert teacher_pred.std() > 0.3
    student = make_config(ml_gender, train={"epochs": 2},
                          distill={"teacher_labels": "latest", "store": str(store), "mode": "aux", "weight": 0.5})
    metrics = train(student, tmp_path / "student")
    assert 0.7 < metrics["auc"] < 0.85 and set(metrics["domains"]) == {"F", "M"}
    run = json.loads((tmp_path / "student" / "run.json").read_text())
    assert run["teacher_labels"] == v.name
    # evaluate rebuilds the student (with its auxiliary head) and scores the served head
    again = evaluate(tmp_path / "student", ml_gender, split="test")
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    # one output type in training and eval: the served logit and the auxiliary one, which
    # sits on the tower's last hidden layer; metrics read the served logit only
    layout = feature_layout(load_spec(ml_gender), student.model, student.baseline)
    m = AuxHeadCTRModel(layout, student.model, device="cpu")
    batch = next(layout.reader(ml_gender).batches("test", batch_size=64, shuffle=False))
    trained = m.train()(batch.sparse, batch.dense, batch.domain)
    served = m.eval()(batch.sparse, batch.dense, batch.domain)
    assert isinstance(trained, StudentLogits) and isinstance(served, StudentLogits)
    assert served.served.shape == served.aux.shape == (64,)
    torch.testing.assert_close(served.served, trained.served)  # no dropout: the same in both modes
    torch.testing.assert_close(served_logits(served), served.served)
    assert not torch.allclose(served.served, served.aux)
    _, hidden = m.tower(torch.cat([m.pooled(batch.sparse, batch.domain), batch.dense], 1),
                        m.pooled(batch.sparse, batch.domain).view(64, -1, student.model.embedding_dim),
                        return_hidden=True)
    torch.testing.assert_close(served.aux, m.aux_head(hidden).squeeze(-1))


def test_labels_of_another_dataset_are_refused(ml_gender, make_config, tmp_path):
    store = TeacherLabelStore(tmp_path / "labels")
    store.write([_part(range(10))], {"data_fingerprint": "not-this-data"})
    cfg = make_config(ml_gender, distill={"store": str(tmp_path / "labels")})
    with pytest.raises(ValueError, match="label another dataset"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_labels_before_a_date_that_has_none(ml_gender, make_config, tmp_path):
    TeacherLabelStore(tmp_path / "labels").write([_part(range(10))], {})  # data of 2023-11
    cfg = make_config(ml_gender, distill={"store": str(tmp_path / "labels"), "labels_before": "2020-01-01"})
    with pytest.raises(ValueError, match="no teacher-label version with data before 2020-01-01"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- integrity, paths and scratch of the label store ------------------------------------------------


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _extra(d: Path) -> None:
    (d / "part-00009.parquet").write_bytes((d / "part-00000.parquet").read_bytes())


LABEL_DAMAGE = [
    # id, damage to the version directory, the file the error names, message fragment
    ("flipped-byte", lambda d: _flip(d / "part-00001.parquet", 1234), "part-00001.parquet", "store file is corrupt"),
    ("flipped-footer-byte", lambda d: _flip(d / "part-00000.parquet", -20), "part-00000.parquet",
     "store file is corrupt"),
    ("truncated", lambda d: _truncate(d / "part-00000.parquet"), "part-00000.parquet", "store file is corrupt"),
    ("deleted-part", lambda d: (d / "part-00001.parquet").unlink(), "part-00001.parquet", "store file is missing"),
    ("extra-part", _extra, "part-00009.parquet", "file not recorded in manifest.json"),
]


@pytest.mark.parametrize("damage, name, match", [d[1:] for d in LABEL_DAMAGE], ids=[d[0] for d in LABEL_DAMAGE])
def test_damaged_label_version_is_refused_naming_the_file(tmp_path, damage, name, match):
    from mdctr.core.errors import ArtifactError
    from mdctr.platform.stores.labels import LabelReader

    store = TeacherLabelStore(tmp_path)
    v = store.write([_part(np.arange(5000), 1), _part(np.arange(5000, 9000), 2, "M")], {})
    good = store.write([_part(np.arange(10), 3)], {})
    LabelReader(v)  # intact
    damage(v.path)
    bad = v.path / name
    for read in (lambda: store.reader(v.name), lambda: LabelReader(store.resolve(v.name)),
                 lambda: store.read_range(v.name, domain="F")):
        with pytest.raises(ArtifactError) as info:
            read()
        line = str(info.value)
        assert "\n" not in line and line.startswith(f"{bad}: ") and match in line and f"version '{v.name}'" in line
    assert store.reader(good.name).lookup(np.arange(10))[1].all()  # other versions stay readable


def test_label_manifest_pointing_outside_the_store_is_refused_by_the_cli(tmp_path):
    """``labels gc`` on a manifest whose dir leaves the store: exit 2, one line naming
    manifest.json, the outside directory untouched (and nothing of the store deleted)."""
    root, outside = tmp_path / "labels", tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("mine")
    store = TeacherLabelStore(root)
    store.write([_part(range(10))], {})
    store.write([_part(range(10))], {})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["versions"][0]["dir"] = "../outside"
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in (root / "data").iterdir())
    mdctr = str(Path(sys.executable).parent / "mdctr")
    for args in (["labels", "gc", "--keep", "0"], ["labels", "gc", "--keep", "5"], ["labels", "list"],
                 ["labels", "show", "latest"]):
        proc = subprocess.run([mdctr, *args, "--store", str(root)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mdctr: error: {root / 'manifest.json'}: "), proc.stderr
        assert "'../outside' is outside the store's data/ directory" in lines[0]
        assert (outside / "precious.txt").read_text() == "mine"
        assert sorted(p.name for p in (root / "data").iterdir()) == before


def test_a_copied_label_store_reads_its_own_files(tmp_path):
    import shutil

    a = TeacherLabelStore(tmp_path / "a")
    v = a.write([_part(range(100), 1)], {})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = TeacherLabelStore(tmp_path / "b")
    assert b.resolve(v.name).path == tmp_path / "b" / v.path.relative_to(tmp_path / "a")
    shutil.rmtree(tmp_path / "a")
    assert b.reader(v.name).lookup(np.arange(100))[1].all()


def test_teacher_before_the_window_labels_the_students_weeks(ml_gender, make_config, tmp_path):
    """The realistic setting: a teacher trained on the history before the students' window
    (its own random hold-out) labels the window once; a student trains on the window alone
    (temporal split) and every one of its training rows has a teacher label."""
    from mdctr.core.timeutil import day_ts
    from mdctr.domains.splits import TRAIN, temporal_parts

    start = date(1998, 3, 5)
    teacher = make_config(ml_gender, train={"epochs": 1, "window": {"end": start.isoformat()}})
    train(teacher, tmp_path / "teacher", test=False)
    spec = load_spec(ml_gender)
    v = write_labels(tmp_path / "teacher", ml_gender, store=tmp_path / "labels", split=None,
                     window=(day_ts(start), spec.split.temporal.valid_start))
    t = duckdb.sql(f"SELECT example_id, ts FROM read_parquet('{ml_gender / spec.files[0]}')").fetchnumpy()
    labelled = set(TeacherLabelStore(tmp_path / "labels").reader(v.name).ids.tolist())
    in_window = (t["ts"] >= day_ts(start)) & (temporal_parts(t["ts"], spec.split.temporal) == TRAIN)
    assert labelled == set(t["example_id"][in_window].tolist()) and len(labelled) > 10_000
    assert v.meta["window"] == [day_ts(start), spec.split.temporal.valid_start]
    student = make_config(ml_gender, train={"epochs": 2, "split_kind": "temporal", "window": {"start": "1998-03-05"}},
                          distill={"store": str(tmp_path / "labels"), "mode": "aux", "weight": 8.0})
    metrics = train(student, tmp_path / "student")
    assert f"training on {len(labelled)} rows (train)" in (tmp_path / "student" / "train.log").read_text()
    assert metrics["n"] == int((t["ts"] >= spec.split.temporal.test_start).sum())
    assert 0.6 < metrics["wauc"] < 0.8

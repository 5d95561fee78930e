"""The three stages: versions, lineage, idempotency, no leakage from after the stage's date."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from mdctr.core.timeutil import day_ts
from mdctr.domains.spec import load_spec, save_spec
from mdctr.domains.validate import data_fingerprint
from mdctr.orchestration.stages import Pipeline
from mdctr.platform import checkpoint as ckpt
from mdctr.platform.rundir import RunDir

MARCH_1, MARCH_2 = date(2024, 3, 1), date(2024, 3, 2)


def _model_state(rec) -> dict[str, torch.Tensor]:
    return ckpt.read_entries(RunDir(rec.path).best_checkpoint())


def _run_all(pipe: Pipeline):
    tpm, _ = pipe.run("tpm", MARCH_1)
    cpm, _ = pipe.run("cpm", MARCH_1)
    actr, _ = pipe.run("actr", MARCH_2, evaluate_next_day=True)
    return tpm, cpm, actr


@pytest.fixture(scope="module")
def ran(ads_data, pipeline_config, tmp_path_factory):
    pipe = Pipeline(pipeline_config(ads_data, tmp_path_factory.mktemp("store")))
    return pipe, _run_all(pipe)


def test_stages_write_versions_with_lineage(ran):
    pipe, (tpm, cpm, actr) = ran
    assert tpm.version_id.startswith("tpm-2024-03-01-") and cpm.version_id.startswith("cpm-2024-03-01-")
    # A-CTR lineage names the exact CPM version and TPM snapshot months it consumed
    assert actr.inputs["cpm"] == cpm.version_id
    assert actr.inputs["tpm_months"] == ["2024-03"] and actr.inputs["tpm_versions"] == [tpm.version_id]
    assert cpm.inputs["tpm_versions"] == [tpm.version_id]
    # data windows: TPM 60 days, CPM 14 days of organic rows, A-CTR the 2 days before its date
    assert (tpm.window_start, tpm.window_end) == ("2024-01-01", "2024-03-01")
    assert (cpm.window_start, cpm.window_end) == ("2024-02-16", "2024-03-01")
    assert (actr.window_start, actr.window_end) == ("2024-02-29", "2024-03-02")
    # row counts match the data
    t = pq.read_table(pipe.data_dir / "part-00000.parquet", columns=["ts", "domain"])
    in_window = pc.and_(pc.greater_equal(t["ts"], day_ts(date(2024, 2, 29))), pc.less(t["ts"], day_ts(MARCH_2)))
    assert actr.rows == int(pc.sum(pc.and_(in_window, pc.equal(t["domain"], "ad"))).as_py())
    assert actr.rows > 100
    # the next-day evaluation scored the ad rows of March 2 with a real AUC
    nd = actr.metrics["next_day"]
    assert nd["n"] > 50 and 0.5 < nd["auc"] < 1.0
    for rec in (tpm, cpm, actr):
        assert pipe.lineage.get(rec.version_id) == rec
        assert (Path(rec.path) / "stage.json").exists() and (Path(rec.path) / "config.yaml").exists()
        assert len(list((Path(rec.path) / "checkpoints").glob("epoch-*"))) == 1  # the model only


def test_rerun_is_idempotent(ran):
    pipe, (tpm, cpm, actr) = ran
    before = sorted(p.name for p in (pipe.root / "versions").iterdir())
    for stage, day, rec in (("tpm", MARCH_1, tpm), ("cpm", MARCH_1, cpm), ("actr", MARCH_2, actr)):
        again, created = pipe.run(stage, day)
        assert not created and again == rec
    assert sorted(p.name for p in (pipe.root / "versions").iterdir()) == before
    assert len(pipe.lineage.list("actr")) == 1 and len(pipe.embeddings.months()) == 1


def test_tpm_snapshot_holds_the_tpm_tables(ran):
    pipe, (tpm, _, _) = ran
    state = _model_state(tpm)
    users = pq.read_table(pipe.embeddings.files("user")[0])
    ids = users.column("id").to_numpy()
    vectors = np.stack(users.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, state["ebc.embedding_bags.t_user_id.weight"].numpy()[ids])
    assert tpm.inputs["user_rows"] == len(ids)
    # plain DuckDB SQL over the committed files
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet({pipe.embeddings.files('item')})").fetchall()[0][0]
    assert n == tpm.inputs["item_rows"] > 100


def test_actr_starts_from_the_cpm(ads_data, pipeline_config, tmp_path, ran):
    _, (_, cpm, actr) = ran
    a, c = _model_state(actr), _model_state(cpm)
    # fine-tuning moved the weights, but from the CPM's: closer to the CPM than a fresh start
    pipe = Pipeline(pipeline_config(ads_data, tmp_path / "scratch", init_from_cpm=False))
    pipe.run("tpm", MARCH_1)
    scratch, _ = pipe.run("actr", MARCH_2)
    s = _model_state(scratch)
    w = "tower.mlp.layers.0.weight"
    assert not torch.equal(a[w], c[w])
    assert (a[w] - c[w]).norm() < 0.5 * (s[w] - c[w]).norm()
    # ...except the output head (actr.init_exclude), which starts fresh as in the scratch model
    h = "tower.mlp.head.weight"
    assert (a[h] - s[h]).norm() < (a[h] - c[h]).norm()
    assert scratch.inputs["cpm"] is None


def test_actr_without_cpm_fails_clearly(ads_data, pipeline_config, tmp_path):
    pipe = Pipeline(pipeline_config(ads_data, tmp_path / "s"))
    with pytest.raises(ValueError, match="no CPM version at or before 2024-03-02"):
        pipe.run("actr", MARCH_2)
    assert not (tmp_path / "s" / "versions").exists() or not any((tmp_path / "s" / "versions").iterdir())


def _poison_after(src: Path, dst: Path, day: date) -> int:
    """Copy the dataset, flipping labels and scrambling ids of every row on or after ``day``."""
    shutil.copytree(src, dst)
    f = dst / "part-00000.parquet"
    t = pq.read_table(f)
    late = pc.greater_equal(t["ts"], day_ts(day))
    cols = {n: t[n] for n in t.column_names}
    cols["label"] = pc.if_else(late, pc.subtract(1, t["label"]), t["label"]).cast(t["label"].type)
    cols["user_id"] = pc.if_else(late, pc.add(pc.multiply(t["user_id"], 7), 1), t["user_id"])
    cols["user_id"] = pc.if_else(pc.greater_equal(cols["user_id"], 400), t["user_id"], cols["user_id"])
    poisoned = pa.table(cols, schema=t.schema)
    pq.write_table(poisoned, f, row_group_size=pq.ParquetFile(src / "part-00000.parquet").metadata.row_group(0).num_rows)
    # a changed dataset is a new dataset: its dataset.yaml records the new positives and fingerprint
    spec = load_spec(dst)
    positives = poisoned.group_by("domain").aggregate([("label", "sum")]).to_pydict()
    positives = dict(zip(positives["domain"], positives["label_sum"]))
    domains = [d.model_copy(update={"positives": positives.get(d.name, 0)}) for d in spec.domains]
    save_spec(spec.model_copy(update={"domains": domains, "fingerprint": data_fingerprint([f])}), dst)
    return int(pc.sum(late).as_py())


def test_rows_on_or_after_the_date_never_reach_training(ads_data, pipeline_config, tmp_path, ran):
    _, (tpm, cpm, actr) = ran
    poisoned = tmp_path / "poisoned"
    assert _poison_after(ads_data, poisoned, MARCH_1) > 1000
    pipe = Pipeline(pipeline_config(poisoned, tmp_path / "store"))
    tpm2, cpm2, _ = _run_all(pipe)
    for a, b in ((tpm, tpm2), (cpm, cpm2)):
        sa, sb = _model_state(a), _model_state(b)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{a.stage}: {k} differs when only future rows changed"
    assert tpm2.metrics == tpm.metrics and cpm2.metrics == cpm.metrics


def test_actr_never_sees_its_own_date(ads_data, pipeline_config, tmp_path, ran):
    _, (_, _, actr) = ran
    poisoned = tmp_path / "poisoned"
    assert _poison_after(ads_data, poisoned, MARCH_2) > 1000
    _, _, actr2 = _run_all(Pipeline(pipeline_config(poisoned, tmp_path / "store")))
    sa, sb = _model_state(actr), _model_state(actr2)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # ...while its next-day evaluation (the poisoned day itself) does see the change
    assert actr2.metrics["next_day"]["auc"] < 0.5 < actr.metrics["next_day"]["auc"]


@pytest.mark.slow
def test_stages_at_world_size_two(ads_data, pipeline_config, tmp_path, ran):
    """Two gloo processes per stage: the same windows and lineage, the TPM snapshot read back
    from a sharded checkpoint, and next-day AUC close to the one-process run's."""
    _, (tpm1, _, actr1) = ran
    cfg = pipeline_config(ads_data, tmp_path / "store").model_copy(update={"world_size": 2})
    tpm, cpm, actr = _run_all(Pipeline(cfg))
    assert actr.inputs == {"cpm": cpm.version_id, "tpm_months": ["2024-03"], "tpm_versions": [tpm.version_id]}
    assert (tpm.rows, actr.rows) == (tpm1.rows, actr1.rows) and tpm.inputs["user_rows"] == tpm1.inputs["user_rows"]
    assert actr.metrics["next_day"]["n"] == actr1.metrics["next_day"]["n"]
    assert abs(actr.metrics["next_day"]["auc"] - actr1.metrics["next_day"]["auc"]) < 0.05


def test_a_stage_version_is_a_run_for_evaluate_export_and_finetune(ran, tmp_path):
    """An A-CTR version is a run directory: ``evaluate`` rebuilds its snapshot-history model
    and scores it, ``export`` scripts it with the history as inputs and gives the same
    logits, and ``finetune`` trains an adapter on its frozen backbone."""
    from mdctr.adapters.export import export
    from mdctr.adapters.onboard import finetune
    from mdctr.adapters.run import evaluate
    from mdctr.platform.history import SnapshotInput
    from mdctr.platform.outputs import PredictionsOutput, read_predictions
    from mdctr.platform.launcher import LocalLauncher
    from mdctr.platform.run import prediction_job

    pipe, (_, _, actr) = ran
    version = RunDir(actr.path)
    assert version.kind == "stage" and version.run_id == actr.version_id
    assert version.model_info["snapshots"]["months"] == ["2024-03"]
    metrics = evaluate(actr.path, pipe.data_dir, split=None, out=tmp_path / "eval.json")
    assert set(metrics["domains"]) == {"ad"} and 0.5 < metrics["auc"] < 1  # the version's own domain
    assert metrics["n"] == metrics["domains"]["ad"]["n"] > 0

    # the exported TorchScript model, fed the same snapshot vectors, gives the same logits
    export(actr.path, tmp_path / "serving")
    meta = json.loads((tmp_path / "serving" / "model.json").read_text())
    assert meta["history"]["entities"] == {"user": "user_id", "item": "item_id"} and "history_vectors" in meta["inputs"]
    scripted = torch.jit.load(str(tmp_path / "serving" / "model.pt"))
    job = prediction_job(version, pipe.data_dir, "test", PredictionsOutput(tmp_path / "p.parquet", "eval"))
    LocalLauncher().launch(job)
    want = read_predictions(tmp_path / "p.parquet")
    transform = version.transform()
    assert isinstance(transform, SnapshotInput)
    join = transform(version.layout())
    reader = version.layout().reader(pipe.data_dir, raw_fields=list(transform.raw_fields))
    got = []
    for b in reader.batches("test", job.selection, batch_size=512, shuffle=False):
        b = join(b)
        vec = torch.stack([b.inputs[f"history.{e}.vectors"] for e in ("user", "item")], 1)
        found = torch.stack([b.inputs[f"history.{e}.found"] for e in ("user", "item")], 1)
        got.append(scripted(b.sparse.values(), b.sparse.lengths(), b.dense, b.domain, vec, found))
    torch.testing.assert_close(torch.cat(got), want.logits, atol=1e-5, rtol=1e-5)

    # an adapter for the ad domain on the A-CTR's frozen backbone, from rows before its date
    adapter = finetune(actr.path, "ad", pipe.data_dir, tmp_path / "adapter", epochs=1,
                       window=(None, day_ts(MARCH_2)))
    assert adapter["base_run_id"] == actr.version_id and adapter["domain"] == "ad"
    assert 0.4 < adapter["metrics"]["domains"]["ad"]["auc"] < 1 and adapter["parameters"] > 0


# -- paths relative to the store, intact versions only, empty windows ----------------------------------


def _copy_store(pipe: Pipeline, pipeline_config, ads_data, dst: Path) -> Pipeline:
    shutil.copytree(pipe.root, dst)
    return Pipeline(pipeline_config(ads_data, dst))


def test_lineage_paths_are_relative_and_a_copied_store_reads_its_own_versions(ran, ads_data, pipeline_config,
                                                                             tmp_path, capsys):
    import sqlite3

    from mdctr.cli import main
    from mdctr.core.config import dump_model

    pipe, (tpm, cpm, actr) = ran
    with sqlite3.connect(pipe.root / "lineage.sqlite") as con:
        stored = dict(con.execute("SELECT version_id, path FROM versions").fetchall())
    assert stored == {r.version_id: f"versions/{r.version_id}" for r in (tpm, cpm, actr)}
    assert json.loads((Path(actr.path) / "stage.json").read_text())["path"] == f"versions/{actr.version_id}"
    copy = _copy_store(pipe, pipeline_config, ads_data, tmp_path / "copy")
    for rec in (tpm, cpm, actr):
        got = copy.lineage.get(rec.version_id)
        assert Path(got.path) == (tmp_path / "copy" / "versions" / rec.version_id).absolute()
        assert got == rec.__class__(**{**rec.to_dict(), "path": got.path})
    again, created = copy.run("actr", MARCH_2)
    assert not created and again.path.startswith(str(tmp_path / "copy"))
    assert RunDir(again.path).run_id == actr.version_id
    assert copy.latest("cpm", MARCH_2).path.startswith(str(tmp_path / "copy"))
    # `pipeline show` prints the usable (absolute) path of the copy
    dump_model(pipeline_config(ads_data, tmp_path / "copy"), tmp_path / "p.yaml")
    assert main(["pipeline", "show", actr.version_id, "--config", str(tmp_path / "p.yaml")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert Path(shown["path"]).is_dir() and shown["path"].startswith(str(tmp_path / "copy"))


@pytest.mark.parametrize("bad", ["../elsewhere", "/ABS", "versions/../../elsewhere", "", "SYMLINK"],
                         ids=["parent", "absolute", "dotdot", "empty", "symlink-out"])
def test_lineage_path_outside_the_store_is_refused(ran, ads_data, pipeline_config, tmp_path, bad):
    import sqlite3

    from mdctr.core.errors import ArtifactError

    pipe, (_, _, actr) = ran
    copy = _copy_store(pipe, pipeline_config, ads_data, tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(Path(actr.path), elsewhere)
    if bad == "SYMLINK":
        (tmp_path / "copy" / "versions" / "link").symlink_to(elsewhere, target_is_directory=True)
        bad = "versions/link"
    bad = bad.replace("/ABS", str(elsewhere))
    with sqlite3.connect(tmp_path / "copy" / "lineage.sqlite") as con:
        con.execute("UPDATE versions SET path = ? WHERE version_id = ?", (bad, actr.version_id))
    for read in (lambda: copy.lineage.get(actr.version_id), lambda: copy.lineage.list("actr"),
                 lambda: copy.run("actr", MARCH_2)):
        with pytest.raises(ArtifactError) as info:
            read()
        line = str(info.value)
        assert "\n" not in line and line.startswith(f"{(tmp_path / 'copy' / 'lineage.sqlite').resolve()}: ")
        assert f"version '{actr.version_id}': recorded path {bad!r} is outside the store" in line


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _biggest_checkpoint_file(version: Path) -> Path:
    return max((p for p in (version / "checkpoints").rglob("*") if p.is_file() and p.name != "checksums.json"),
               key=lambda p: p.stat().st_size)


DAMAGED = [
    # id, stage, damage to the recorded version directory, message fragment
    ("checkpoints-deleted", "actr", lambda d: shutil.rmtree(d / "checkpoints"), "run has no finished checkpoint"),
    ("best-epoch-deleted", "cpm", lambda d: [shutil.rmtree(e) for e in (d / "checkpoints").glob("epoch-*")],
     "best checkpoint is missing"),
    ("flipped-byte", "actr", lambda d: _flip_byte(_biggest_checkpoint_file(d)), "checkpoint file is corrupt"),
    ("checksums-deleted", "tpm", lambda d: [p.unlink() for p in (d / "checkpoints").rglob("checksums.json")],
     "checkpoint has no checksums.json"),
    ("state-unreadable", "actr", lambda d: (d / "checkpoints" / "state.json").write_text("{"), "unreadable"),
    ("stage-json-deleted", "cpm", lambda d: (d / "stage.json").unlink(), "no stage.json"),
    ("run-json-deleted", "actr", lambda d: (d / "run.json").unlink(), "no run.json"),
    ("config-deleted", "actr", lambda d: (d / "config.yaml").unlink(), "not a run directory (no config.yaml)"),
]


@pytest.mark.parametrize("stage, damage, match", [d[1:] for d in DAMAGED], ids=[d[0] for d in DAMAGED])
def test_damaged_recorded_version_is_refused(ran, ads_data, pipeline_config, tmp_path, stage, damage, match):
    from mdctr.core.errors import ArtifactError

    pipe, recs = ran
    rec = {r.stage: r for r in recs}[stage]
    day = date.fromisoformat(rec.date)
    copy = _copy_store(pipe, pipeline_config, ads_data, tmp_path / "copy")
    version = tmp_path / "copy" / "versions" / rec.version_id
    damage(version)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "copy").rglob("*"))
    with pytest.raises(ArtifactError) as info:
        copy.run(stage, day)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{version.absolute()}: damaged {stage} version (")
    assert match in line and "remove this directory to run the stage for this date again" in line, line
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "copy").rglob("*")) == before  # nothing written


def test_a_removed_damaged_version_is_run_again(ran, ads_data, pipeline_config, tmp_path):
    pipe, (_, _, actr) = ran
    copy = _copy_store(pipe, pipeline_config, ads_data, tmp_path / "copy")
    version = Path(copy.lineage.get(actr.version_id).path)
    shutil.rmtree(version / "checkpoints")
    shutil.rmtree(version)  # the recovery the error names
    again, created = copy.run("actr", MARCH_2)
    assert created and again == copy.lineage.get(actr.version_id) and again.path == str(version)
    assert ckpt.intact(RunDir(version).best_checkpoint())
    assert len(copy.lineage.list("actr")) == 1


def test_lost_lineage_row_of_a_damaged_version_is_refused(ran, ads_data, pipeline_config, tmp_path):
    """A committed version whose lineage insert was lost is recorded again only if intact."""
    import sqlite3

    from mdctr.core.errors import ArtifactError

    pipe, (_, cpm, _) = ran
    copy = _copy_store(pipe, pipeline_config, ads_data, tmp_path / "copy")
    with sqlite3.connect(tmp_path / "copy" / "lineage.sqlite") as con:
        con.execute("DELETE FROM versions WHERE version_id = ?", (cpm.version_id,))
    version = tmp_path / "copy" / "versions" / cpm.version_id
    state = (version / "checkpoints" / "state.json").read_text()
    (version / "checkpoints" / "state.json").unlink()
    with pytest.raises(ArtifactError, match="damaged cpm version"):
        copy.run("cpm", MARCH_1)
    assert copy.lineage.get(cpm.version_id) is None
    (version / "checkpoints" / "state.json").write_text(state)
    again, created = copy.run("cpm", MARCH_1)
    assert not created and again.version_id == cpm.version_id and again.path == str(version.absolute())


@pytest.mark.parametrize("stage, day, window", [
    ("tpm", date(2023, 12, 1), "2023-10-02..2023-12-01"),
    ("cpm", date(2024, 1, 1), "2023-12-18..2024-01-01"),
    ("actr", date(2024, 1, 1), "2023-12-30..2024-01-01"),
    ("actr", date(2024, 6, 1), "2024-05-30..2024-06-01"),  # after the data ends
])
def test_a_window_without_rows_commits_nothing(ads_data, pipeline_config, tmp_path, stage, day, window):
    from mdctr.core.errors import ConfigError

    pipe = Pipeline(pipeline_config(ads_data, tmp_path / "store"))
    with pytest.raises(ConfigError) as info:
        pipe.run(stage, day)
    line = str(info.value)
    assert line == f"{ads_data}: stage {stage} for {day}: its window {window} has no rows to train on"
    from mdctr.orchestration.stages import get_stage

    rows, domains = get_stage(stage).window(pipe, day)
    assert domains == (pipe.organic if stage != "actr" else pipe.ad) and pipe.window_rows(rows, domains) == 0
    assert not (tmp_path / "store" / "versions").exists() or not any((tmp_path / "store" / "versions").iterdir())
    assert pipe.lineage.list() == [] and pipe.embeddings.months() == []


def test_a_stage_that_trained_on_no_rows_commits_nothing(ads_data, pipeline_config, tmp_path, monkeypatch):
    """Rows in the window but none trained on (e.g. all in the window's valid part): the
    stage's StageRun says rows 0 and the pipeline refuses to commit it."""
    import dataclasses

    from mdctr.core.errors import ConfigError
    from mdctr.orchestration.stages import registry
    from mdctr.orchestration.stages.registry import StageRun

    def no_rows(pipe, day, out, vid, **kw):
        (out / "model.bin").write_bytes(b"x")
        return StageRun((day_ts(day) - 86_400, day_ts(day)), 0, {}, {})

    monkeypatch.setitem(registry.STAGES, "actr", dataclasses.replace(registry.STAGES["actr"], run=no_rows))
    pipe = Pipeline(pipeline_config(ads_data, tmp_path / "store"))
    with pytest.raises(ConfigError, match="stage actr for 2024-03-02: its window 2024-03-01..2024-03-02 has no rows"):
        pipe.run("actr", MARCH_2)
    versions = tmp_path / "store" / "versions"
    assert not versions.exists() or list(versions.iterdir()) == []
    assert pipe.lineage.list() == []


@pytest.mark.parametrize("stage, files, problem", [
    ("labels", ["stage.json"], None),
    ("labels", [], "no stage.json"),
    ("finetune", ["stage.json", "adapter.json", "adapter.safetensors"], None),
    ("finetune", ["stage.json", "adapter.json"], "no adapter.safetensors"),
    ("finetune", ["stage.json", "adapter.safetensors"], "no adapter.json"),
    ("tpm", ["stage.json"], "no run.json"),
])
def test_versions_that_are_not_runs_need_their_own_files(tmp_path, stage, files, problem):
    from mdctr.orchestration.stages.pipeline import _damage

    for f in files:
        (tmp_path / f).write_text("{}")
    assert _damage(stage, tmp_path) == problem


@pytest.mark.parametrize("stage", ["tpm", "cpm", "actr"])
def test_a_stage_train_window_is_refused(stage, tmp_path):
    """Stage rows come from ``window_days``; a ``train.window`` there would be ignored, so it
    is an error naming the key."""
    from pydantic import ValidationError

    from mdctr.orchestration.config import PipelineConfig

    with pytest.raises(ValidationError, match=rf"{stage}.train.window: a stage's rows are its window_days"):
        PipelineConfig.model_validate({"data": "d", "store": str(tmp_path),
                                       stage: {"train": {"window": {"start": "1998-01-01"}}}})

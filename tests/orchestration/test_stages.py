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
    pq.write_table(pa.table(cols, schema=t.schema), f, row_group_size=pq.ParquetFile(src / "part-00000.parquet").metadata.row_group(0).num_rows)
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

"""Ray Train across two nodes: a two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head and one worker node, 1 CPU each), and a 2-worker
:class:`~mdctr.orchestration.ray.train.RayTrainLauncher` run whose ranks land on different
nodes. Checked from inside the workers (each rank records its Ray node id) and against a
local world-size-2 run of the same config.

The cluster binds loopback only (:func:`~mdctr.orchestration.ray.train.loopback_only`),
keeps everything (session, ``ray_current_cluster``) in its own temp dir, and is torn down
with ``cluster.shutdown()`` only: it stops exactly the nodes this module started.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest

from mdctr.platform.job import TrainerHooks
from mdctr.platform.run import train, train_jobs
from tests.platform.conftest import _make_config

pytestmark = pytest.mark.slow

AUC_TOL = 0.003
EPOCHS = 2


@pytest.fixture(scope="module")
def two_nodes():
    """A connected two-node cluster (head + 1 worker node, 1 CPU each); yields the node ids."""
    pytest.importorskip("ray")
    from mdctr.orchestration.ray.train import loopback_only
    from mdctr.platform.distributed import loopback_interface

    temp = tempfile.mkdtemp(prefix="ray-mn-")  # short: Ray's socket paths live under it
    saved_tmpdir = os.environ.get("RAY_TMPDIR")
    # Cluster writes the address file ``<RAY_TMPDIR>/ray/ray_current_cluster``: keep it in ours,
    # not in the machine's shared /tmp/ray
    os.environ["RAY_TMPDIR"] = temp
    Path(temp, "ray").mkdir()
    cluster = None
    with loopback_only():  # every listener on 127.0.0.1, no usage stats, no token
        import ray
        from ray import cloudpickle
        from ray.cluster_utils import Cluster

        # the hooks below travel to the workers by value (this module is not on their path)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            node_args = dict(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=temp)
            cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
            cluster.add_node(**node_args)
            cluster.wait_for_nodes()
            # gloo between the workers over loopback too: both nodes are on this machine
            ray.init(address=cluster.address,
                     runtime_env={"env_vars": {"GLOO_SOCKET_IFNAME": loopback_interface()}})
            nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2, ray.nodes()
            assert ray.cluster_resources().get("CPU") == 2
            yield nodes
        finally:
            if ray.is_initialized():
                ray.shutdown()  # the driver's connection only
            if cluster is not None:
                cluster.shutdown()  # the two nodes this fixture started, nothing else
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            if saved_tmpdir is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = saved_tmpdir
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ml_gender() -> Path:
    from mdctr.domains.datasets import resolve_data

    # a path on this machine's disk: both "nodes" are processes on this machine, so every
    # worker sees the dataset (and the run directory) at the same path; on a real multi-node
    # cluster they would have to be on shared storage
    return resolve_data("movielens-100k:gender")


def _config(data: Path):
    return _make_config(data, model={"hidden": [32, 16]}, train={"epochs": EPOCHS, "patience": 2}, world_size=2)


@dataclass
class RecordNode(TrainerHooks):
    """Every rank writes ``rank<r>.json`` (its Ray node id, pid, hostname) into ``out``."""

    out: Path

    def on_epoch_end(self, epoch: int, metrics: dict, checkpoint: Path | None) -> bool:
        import socket

        import ray
        import torch.distributed as dist

        rank = dist.get_rank()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "epoch": epoch, "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(), "host": socket.gethostname()}))
        return False


def _with_hooks(hooks, cfg, data_dir, run_dir, resume):
    return [replace(job, hooks=hooks) for job in train_jobs(cfg, data_dir, run_dir, resume)]


def test_two_ranks_on_two_nodes_match_local_ranks(two_nodes, ml_gender, tmp_path, monkeypatch):
    import ray.train
    from ray.train import ScalingConfig

    from mdctr.orchestration.ray.train import RayTrainLauncher

    # RayTrainLauncher builds ScalingConfig(num_workers, use_gpu) itself (PACK, the default);
    # with 1 CPU per node the two workers could only land on different nodes anyway, and
    # STRICT_SPREAD (a ScalingConfig option in Ray 2.60) makes it a hard requirement
    monkeypatch.setattr(ray.train, "ScalingConfig", partial(ScalingConfig, placement_strategy="STRICT_SPREAD"))
    seen = tmp_path / "nodes"
    t0 = time.perf_counter()
    metrics = train(_config(ml_gender), tmp_path / "ray", planner=partial(_with_hooks, RecordNode(seen)),
                    launcher=RayTrainLauncher(2, storage_path=tmp_path / "ray-storage"))
    ray_s = time.perf_counter() - t0
    monkeypatch.undo()

    ranks = {r: json.loads((seen / f"rank{r}.json").read_text()) for r in (0, 1)}
    print(f"\nranks: {ranks}")
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    assert {r["node_id"] for r in ranks.values()} == set(two_nodes)
    assert ranks[0]["pid"] != ranks[1]["pid"] and os.getpid() not in (ranks[0]["pid"], ranks[1]["pid"])
    assert all(r["epoch"] == EPOCHS - 1 for r in ranks.values())

    t0 = time.perf_counter()
    local = train(_config(ml_gender), tmp_path / "local")  # LocalLauncher, world size 2
    local_s = time.perf_counter() - t0
    print(f"test AUC: ray (2 nodes) {metrics['auc']:.6f} ({ray_s:.1f}s), local world size 2 {local['auc']:.6f} "
          f"({local_s:.1f}s), diff {abs(metrics['auc'] - local['auc']):.6f}")
    assert 0.7 < metrics["auc"] < 0.85
    assert abs(metrics["auc"] - local["auc"]) <= AUC_TOL
    assert abs(metrics["wauc"] - local["wauc"]) <= AUC_TOL
    state = json.loads((tmp_path / "ray" / "checkpoints" / "state.json").read_text())
    assert state["last_epoch"] == EPOCHS - 1
    assert not list((tmp_path / "ray-storage").iterdir())  # Ray Train's copies are removed

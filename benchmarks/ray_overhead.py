"""What running on Ray costs: ``mdctr submit`` vs. a direct command, and Ray Train workers
vs. local ranks.

(a) Submit overhead. A warm local cluster (``mdctr cluster up --num-cpus 2`` with
``MDCTR_STATE`` in a temp dir; ``mdctr cluster down`` at the end, always). The pipeline of
``configs/movielens_ads_cadence.yaml`` (store moved to a temp dir) is prepared once,
directly: ``pipeline run tpm --date 1998-03-01`` and ``pipeline run cpm --date 1998-03-02``
(their epochs cut to ``--prep-epochs``: they are not timed). Then, ``--rounds`` times, the
A-CTR stage ``pipeline run actr --date 1998-03-02`` is timed (wall clock of the whole
command, interpreter start-up included) once directly and once through
``mdctr submit -- pipeline run actr ...`` (submission, the job's own ``mdctr`` process, log
streaming, status), each on a fresh copy of the prepared store (so both do exactly the same
work, and each submission has its own config file, hence its own submission id), the order
alternating between rounds so both sides see the same machine.
``submit_overhead_s`` = median(submit) - median(direct).

(b) Ray Train throughput. The same 2-rank job (MovieLens-100K gender, ``shared``, MLP
64-32, embedding dim 16, batch 1024, ``--epochs`` epochs) with
``RayTrainLauncher(num_workers=2)`` on the warm cluster vs. the local 2-process launcher,
alternating, ``--rounds`` times. Throughput is taken from the run's ``history.json``: train
rows x epochs / sum of the epochs' ``seconds`` (an epoch's seconds cover its training pass,
validation and checkpoint), so worker start-up (Ray's placement group and actors, the local
launcher's process spawn) is excluded. ``ray_train_ratio`` = median Ray examples/s / median
local examples/s.

Last line: one JSON object (``submit_overhead_s``, ``ray_train_ratio`` and the raw times).

Usage: python benchmarks/ray_overhead.py [--rounds 3] [--epochs 2] [--prep-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MDCTR = str(VENV_BIN / "mdctr") if (VENV_BIN / "mdctr").exists() else "mdctr"
CADENCE = REPO / "configs" / "movielens_ads_cadence.yaml"
ACTR_DATE = "1998-03-02"


def run_mdctr(env: dict, *args: str, timeout: float = 900, expect: str | None = None) -> float:
    """Run ``mdctr args``; its wall time in seconds (raises with the output's tail on failure,
    or when ``expect`` is not a line start of its output)."""
    t0 = time.perf_counter()
    r = subprocess.run([MDCTR, *args], env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
        raise RuntimeError(f"mdctr {' '.join(args)} exited {r.returncode}:\n{tail}")
    if expect is not None and not any(ln.startswith(expect) for ln in r.stdout.splitlines()):
        raise RuntimeError(f"mdctr {' '.join(args)} did not print '{expect}...':\n{r.stdout[-2000:]}")
    return seconds


def write_config(raw: dict, store: Path, path: Path) -> Path:
    path.write_text(yaml.safe_dump({**raw, "store": str(store)}, sort_keys=False))
    return path


def submit_overhead(env: dict, work: Path, rounds: int, prep_epochs: int, log) -> dict:
    raw = yaml.safe_load(CADENCE.read_text())
    for stage in ("tpm", "cpm"):  # preparation only: not timed
        raw[stage]["train"] = {**raw[stage]["train"], "epochs": prep_epochs}
    base = work / "store-base"
    cfg = write_config(raw, base, work / "base.yaml")
    prep = {"tpm": run_mdctr(env, "pipeline", "run", "tpm", "--date", "1998-03-01", "--config", str(cfg),
                             expect="created "),
            "cpm": run_mdctr(env, "pipeline", "run", "cpm", "--date", ACTR_DATE, "--config", str(cfg),
                             expect="created ")}
    log(f"prepared the store: tpm {prep['tpm']:.1f}s, cpm {prep['cpm']:.1f}s")
    times: dict[str, list[float]] = {"direct": [], "submit": []}
    for i in range(rounds):
        order = ("direct", "submit") if i % 2 == 0 else ("submit", "direct")
        for how in order:
            store = work / f"store-{how}-{i}"
            shutil.copytree(base, store)
            cfg = write_config(raw, store, work / f"{how}-{i}.yaml")
            argv = ["pipeline", "run", "actr", "--date", ACTR_DATE, "--config", str(cfg)]
            # "created <version>": the stage really trained (a fresh store), on either side
            seconds = run_mdctr(env, *(["submit", "--"] if how == "submit" else []), *argv, expect="created ")
            times[how].append(round(seconds, 3))
            log(f"round {i}: actr {how} {seconds:.2f}s")
            shutil.rmtree(store, ignore_errors=True)
    return {"prep_s": {k: round(v, 2) for k, v in prep.items()}, "actr_direct_s": times["direct"],
            "actr_submit_s": times["submit"],
            "submit_overhead_s": round(statistics.median(times["submit"]) - statistics.median(times["direct"]), 3)}


def examples_per_s(run_dir: Path, train_rows: int) -> tuple[float, list[float]]:
    history = json.loads((run_dir / "history.json").read_text())["history"]
    epochs = [h for rows in history.values() for h in rows if h["train_loss"] is not None]
    seconds = [h["seconds"] for h in epochs]
    return train_rows * len(epochs) / sum(seconds), seconds


def train_ratio(info, work: Path, rounds: int, epochs: int, log) -> dict:
    from mdctr.domains.batching import DatasetReader
    from mdctr.domains.datasets import resolve_data
    from mdctr.orchestration.ray.cluster import apply_client_env
    from mdctr.orchestration.ray.train import RayTrainLauncher, loopback_only
    from mdctr.platform.config import TrainConfig
    from mdctr.platform.distributed import loopback_interface
    from mdctr.platform.run import train

    data = resolve_data("movielens-100k:gender")
    cfg = TrainConfig.model_validate({
        "data": str(data), "baseline": "shared", "world_size": 2,
        "model": {"tower": "mlp", "embedding_dim": 16, "hidden": [64, 32]},
        "train": {"epochs": epochs, "batch_size": 1024, "patience": epochs, "seed": 0, "prefetch": 1}})
    train_rows = DatasetReader(data).num_rows("train")
    apply_client_env(info)  # loopback cluster: no token, listeners on 127.0.0.1
    import ray

    raw: dict[str, list] = {"ray": [], "local": []}
    wall: dict[str, list] = {"ray": [], "local": []}
    epoch_s: dict[str, list] = {"ray": [], "local": []}
    with loopback_only():
        ray.init(address=info.address, runtime_env={"env_vars": {"GLOO_SOCKET_IFNAME": loopback_interface()}},
                 logging_level="WARNING", log_to_driver=False)
        try:
            for i in range(rounds):
                order = ("ray", "local") if i % 2 == 0 else ("local", "ray")
                for how in order:
                    out = work / f"train-{how}-{i}"
                    t0 = time.perf_counter()
                    train(cfg, out, launcher=RayTrainLauncher(2) if how == "ray" else None)
                    wall[how].append(round(time.perf_counter() - t0, 2))
                    rate, seconds = examples_per_s(out, train_rows)
                    raw[how].append(round(rate, 1))
                    epoch_s[how].append(seconds)
                    log(f"round {i}: train {how} {rate:.0f} examples/s (epochs {seconds}, wall {wall[how][-1]}s)")
                    shutil.rmtree(out, ignore_errors=True)
        finally:
            ray.shutdown()  # this driver's connection only
    return {"train_rows": train_rows, "epochs": epochs, "ray_examples_per_s": raw["ray"],
            "local_examples_per_s": raw["local"], "ray_epoch_s": epoch_s["ray"], "local_epoch_s": epoch_s["local"],
            "ray_wall_s": wall["ray"], "local_wall_s": wall["local"],
            "ray_train_ratio": round(statistics.median(raw["ray"]) / statistics.median(raw["local"]), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="timed repetitions of each side (both parts)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of part (b)")
    p.add_argument("--prep-epochs", type=int, default=1, help="epochs of the (untimed) TPM/CPM preparation")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local cluster")
    args = p.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # short: the cluster's temp dir goes under MDCTR_STATE (Ray's socket paths are limited)
    work = Path(tempfile.mkdtemp(prefix="rb-"))
    state = work / "s"
    env = {**os.environ, "MDCTR_STATE": str(state), "RAY_USAGE_STATS_ENABLED": "0"}
    result: dict = {}
    try:
        t0 = time.perf_counter()
        run_mdctr(env, "cluster", "up", "--num-cpus", str(args.num_cpus), timeout=180)
        result["cluster_up_s"] = round(time.perf_counter() - t0, 2)
        log(f"cluster up in {result['cluster_up_s']}s")
        result.update(submit_overhead(env, work, args.rounds, args.prep_epochs, log))
        os.environ["MDCTR_STATE"] = str(state)  # this process reads the cluster's record too
        from mdctr.orchestration.ray.cluster import load

        result.update(train_ratio(load(), work, args.rounds, args.epochs, log))
    finally:
        try:
            run_mdctr(env, "cluster", "down", timeout=120)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    out = {"submit_overhead_s": result.pop("submit_overhead_s"), "ray_train_ratio": result.pop("ray_train_ratio"),
           "rounds": args.rounds, **result}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

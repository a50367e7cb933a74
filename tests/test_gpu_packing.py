"""GPU packing through Ray without a GPU: a local cluster of two worker nodes with one CPU and one
logical GPU each, a sweep asking {cpu: 0.5, gpu: 0.5}: four trials at once, two per GPU, each
recording Ray's GPU ids; and a sweep asking for a GPU no node has stops at once with one line.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_spec(folder: Path, name: str, resources: dict, trials: int = 4) -> Path:
    spec = {"name": name, "base": {"preset": "split_digits", "num_tasks": 3, "iters": 500, "batch_size": 32},
            "space": {"beta": [0.01, 0.02, 0.05, 0.1][:trials]}, "search": {"algorithm": "grid", "max_concurrent": 4},
            "num_samples": trials, "resources": resources,
            "mlflow": {"experiment": name, "tracking_uri": f"sqlite:///{folder}/mlflow.db"},
            "storage_path": str(folder / "ray_results")}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("gc")  # short: Ray's socket paths under it must stay < 108 bytes
    env = {**os.environ, "HNET_CLUSTER_DIR": str(state), "HNET_RAY_PORT": str(free_port()),
           "HNET_DASHBOARD_PORT": str(free_port()), "RAY": str(Path(sys.executable).parent / "ray"),
           "HNET_WORKER_CPUS": "1", "HNET_WORKER_GPUS": "1"}
    start = subprocess.run(["bash", str(SCRIPT), "start", "2"], env=env, capture_output=True, text=True, timeout=300)
    if start.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    for line in (state / "env").read_text().split()[1:]:
        key, value = line.split("=", 1)
        env[key] = value
    env["RAY_DEDUP_LOGS"] = "0"
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=300)


def test_four_trials_share_two_gpus(gpu_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    spec = write_spec(tmp_path, "packing", {"cpu": 0.5, "gpu": 0.5})
    run = subprocess.run([sys.executable, "-m", "hnet.cli", "sweep", "run", str(spec), "--address",
                          gpu_cluster["RAY_ADDRESS"]], cwd=tmp_path, env=gpu_cluster, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    (sweep_log,) = tmp_path.glob("ray_results/*/sweep.log")  # the trials' own lines: in the sweep's log
    log = sweep_log.read_text()

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("packing").experiment_id], "tags.role = 'trial'")
    assert len(runs) == 4
    assert all(r.data.tags["gpu_ids"] == "0" and r.data.tags["device"] == "cpu" for r in runs)
    per_node = sorted(sum(r.data.tags["ray_node_id"] == node for r in runs)
                      for node in {r.data.tags["ray_node_id"] for r in runs})
    assert per_node == [2, 2]  # two trials on each node's one GPU
    # No CUDA here: every trial said once that it trains on the CPU.
    assert log.count("but CUDA is not available on this node; training on the CPU") == 4, log[-3000:]

    # All four ran at the same time: the latest start precedes the earliest end.
    sweep_dir = next((tmp_path / "ray_results").iterdir())
    (state,) = sweep_dir.glob("experiment_state-*.json")  # each trial's last result, as Tune saved it
    last = [json.loads(metadata)["last_result"] for _, metadata in json.loads(state.read_text())["trial_data"]]
    spans = [(r["timestamp"] - r["time_total_s"], r["timestamp"]) for r in last]
    assert len(spans) == 4
    starts, ends = [s for s, _ in spans], [e for _, e in spans]
    assert max(starts) < min(ends), spans


def test_resources_no_node_has_fail_at_once(tmp_path):
    spec = write_spec(tmp_path, "no_gpu", {"cpu": 1, "gpu": 0.5}, trials=2)
    started = time.time()
    run = subprocess.run([sys.executable, "-m", "hnet.cli", "sweep", "run", str(spec)], cwd=tmp_path,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("hnet: error:")]
    assert len(errors) == 1 and "0.5 GPU" in errors[0] and "0 GPU" in errors[0], run.stderr
    assert time.time() - started < 120
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()

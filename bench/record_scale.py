#!/usr/bin/env python3
"""The MLflow record at scale: N trial runs written by the sweep's own writer, then read back.

Writes one sweep of N finished 10-task trials (synthetic accuracies; the configuration, tags,
params, per-task metrics and accuracy-matrix tag exactly as ``sweeps.mlflow_logging`` writes a
real trial) into a fresh SQLite store, then times the readers: ``load_trials`` (with every
accuracy matrix), the whole `hnet report` command, and the MLflow UI's landing query (the trial
runs, best first, first page of 100; before and after SQLite's statistics, which the end of a sweep
and `hnet ui` refresh) and one trial's accuracy matrix. With ``--server`` the same reads go
through an `mlflow server` on that store (127.0.0.1).

    python bench/record_scale.py --trials 1000 10000 --server
"""
from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.runs import load_trials
from hnet.counts import count_weights
from hnet.results import summarize
from sweeps.mlflow_logging import TrialRecorder, start_parent_run
from sweeps.record import to_tune_config
from sweeps.spec import parse_spec
from sweeps.store import analyze_store, open_store

TASKS = 10


def write_sweep(uri: str, trials: int) -> float:
    """N finished trials through the sweep's writer; returns seconds."""
    spec = parse_spec({"name": "record", "base": {"preset": "permuted_mnist", "num_tasks": TASKS},
                       "space": {"chunk_size": [1000, 2000, 4000], "beta": {"low": 1e-4, "high": 1.0, "log": True}},
                       "mlflow": {"experiment": "record", "tracking_uri": uri}})
    base = spec.base.to_flat_params()
    writer = TrialRecorder(spec, start_parent_run(spec, "record-1", "ray_results"), "record-1")
    rng = random.Random(0)
    started = time.perf_counter()
    for i in range(trials):
        cfg = spec.base.replace(chunk_size=rng.choice([1000, 2000, 4000]), beta=10 ** rng.uniform(-4, 0))
        matrix = [[rng.uniform(80, 99) for _ in range(t + 1)] for t in range(TASKS)]
        counts = count_weights(cfg)
        result = {"tasks_done": TASKS, "acc_matrix": matrix, **{k: v for k, v in summarize(matrix).items()
                                                               if not isinstance(v, list)},
                  "compression_ratio": counts.compression_ratio, "hnet_weights": counts.hnet_weights,
                  "target_weights": counts.target_weights, "train_seconds": 60.0, "device": "cpu", "node_id": "n"}
        writer._write(f"t{i:05d}", to_tune_config(cfg, base, f"t{i:05d}", 0), result, "completed", None)
        if (i + 1) % 1000 == 0:
            print(f"  wrote {i + 1} trials, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    writer._write_table(force=True)  # the sweep's trial table, as at the end of a sweep
    return time.perf_counter() - started


def time_reads(uri: str, folder: Path) -> dict[str, float]:
    out = {}
    started = time.perf_counter()
    frame = load_trials("record", uri, with_matrix=True)
    out["load_trials_s"] = time.perf_counter() - started
    assert frame["acc_matrix"].map(len).eq(TASKS).all(), "a trial's matrix is missing"
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("hnet")), "report", "record", "--tracking-uri", uri,
                    "--out", str(folder / "report")], check=True, capture_output=True)
    out["hnet_report_s"] = time.perf_counter() - started
    client = open_store(uri, create=False)
    experiment = client.get_experiment_by_name("record").experiment_id
    started = time.perf_counter()
    page = client.search_runs([experiment], "tags.role = 'trial'", order_by=["metrics.acc_after_mean DESC"],
                              max_results=100)
    out["ui_landing_s"] = time.perf_counter() - started
    assert len(page) == 100
    started = time.perf_counter()
    assert client.get_run(frame.loc[0, "run_id"]).data.tags["acc_matrix"]
    out["one_matrix_s"] = time.perf_counter() - started  # one trial's accuracy matrix: one read
    out["trials"] = len(frame)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, nargs="+", default=[1000])
    ap.add_argument("--server", action="store_true", help="also read through an mlflow server on the store")
    args = ap.parse_args()
    print(f"{'N':>7}{'store':>8}{'write s':>9}{'load_trials s':>15}{'hnet report s':>15}{'UI landing s':>14}"
          f"{'1 matrix s':>12}{'store KB/trial':>16}", flush=True)
    for n in args.trials:
        with tempfile.TemporaryDirectory(prefix="record-scale-") as tmp:
            folder = Path(tmp)
            uri = f"sqlite:///{folder}/mlflow.db"
            wrote = write_sweep(uri, n)
            size = sum(f.stat().st_size for f in folder.glob("mlflow.db*")) / 1024 / n
            reads = time_reads(uri, folder)
            print(f"{n:>7}{'sqlite':>8}{wrote:>9.0f}{reads['load_trials_s']:>15.2f}{reads['hnet_report_s']:>15.2f}"
                  f"{reads['ui_landing_s']:>14.2f}{reads['one_matrix_s']:>12.3f}{size:>16.1f}   no statistics",
                  flush=True)
            started = time.perf_counter()
            analyze_store(uri)  # what the end of a sweep and `hnet ui` do
            analyzed = time.perf_counter() - started
            reads = time_reads(uri, folder)
            print(f"{n:>7}{'sqlite':>8}{'':>9}{reads['load_trials_s']:>15.2f}{reads['hnet_report_s']:>15.2f}"
                  f"{reads['ui_landing_s']:>14.2f}{reads['one_matrix_s']:>12.3f}{'':>16}   after ANALYZE "
                  f"({analyzed:.1f} s)", flush=True)
            if args.server:
                port = free_port()
                server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host",
                                           "127.0.0.1", "--port", str(port), "--backend-store-uri", uri,
                                           "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    http = f"http://127.0.0.1:{port}"
                    for _ in range(120):
                        try:
                            socket.create_connection(("127.0.0.1", port), timeout=1).close()
                            break
                        except OSError:
                            time.sleep(0.5)
                    reads = time_reads(http, folder)
                    print(f"{n:>7}{'server':>8}{'':>9}{reads['load_trials_s']:>15.2f}{reads['hnet_report_s']:>15.2f}"
                          f"{reads['ui_landing_s']:>14.2f}{reads['one_matrix_s']:>12.3f}", flush=True)
                finally:
                    server.terminate()
                    server.wait(30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sweeps at scale: the same N near-trivial trials through both backends, seconds per trial.

Each run is a whole `hnet sweep run` command in a fresh process (Ray started and stopped by it,
MLflow SQLite store, a checkpoint after every task), on a generated spec of trivial trials
(split_digits, 3 tasks x 10 iterations, random search, no compression limit). Printed per run:
wall seconds, seconds per trial, trials per second, the driver's peak resident memory (the
`hnet` process only: not Ray's daemons nor the trial workers), and what the run left on disk
per finished trial (Tune's storage; the MLflow store with its artifacts); for the Ray backend the
most trials that ran at one moment (`peak`: from each trial's start and last result as Tune's driver
saw them).

    python bench/sweep_scale.py --trials 200                       # both backends, 2 slots
    python bench/sweep_scale.py --trials 100 1000 --slots 2 --no-pool
    python bench/sweep_scale.py --trials 200 --scan 2 4 8 --no-pool   # slots = fractional CPUs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HNET = [str(Path(sys.executable).with_name("hnet"))]  # the installed command, as a user runs it


def trivial_spec(trials: int, slots: int, folder: Path) -> Path:
    cores = len(os.sched_getaffinity(0))
    spec = {
        "name": "scale", "base": {"preset": "split_digits", "num_tasks": 3, "iters": 10, "batch_size": 32},
        "runtime": {"threads": 1},
        "space": {"beta": {"low": 1e-4, "high": 1.0, "log": True}, "chunk_size": [500, 1000, 2000, 4000],
                  "hnet_activation": ["relu", "elu"], "chunk_emb_dim": [8, 12, 24]},
        "search": {"algorithm": "random", "seed": 0, "max_concurrent": slots}, "num_samples": trials,
        "resources": {"cpu": min(1.0, cores / slots)},  # more slots than cores: fractional CPUs
        "mlflow": {"experiment": "scale", "tracking_uri": f"sqlite:///{folder}/mlflow.db"},
        "storage_path": str(folder / "ray_results")}
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def timed(command: list[str], log: Path) -> tuple[float, int, int]:
    """Wall seconds, exit status and peak resident bytes of the command's own process."""
    peak = 0
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        status = Path(f"/proc/{proc.pid}/status")

        def watch() -> None:  # the kernel's high-water mark of the process's resident memory (Linux)
            nonlocal peak
            while proc.poll() is None:
                try:
                    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
                except OSError:  # it ended
                    return
                if hwm:  # (not yet while the process starts)
                    peak = max(peak, int(hwm[0].split()[1]) * 1024)
                time.sleep(0.2)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        rc = proc.wait()
        wall = time.perf_counter() - started
        thread.join()
    return wall, rc, peak


def peak_running(storage: Path) -> int:
    """The most trials running at one moment, from each trial's start and last result as Tune's driver
    saw them (its saved state)."""
    (state,) = storage.glob("*/experiment_state-*.json")
    meta = [json.loads(metadata) for _, metadata in json.loads(state.read_text())["trial_data"]]
    events = sorted([(m["start_time"], 1) for m in meta] + [(m["last_result_time"], -1) for m in meta])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def run(backend: str, trials: int, slots: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sweep-scale-") as tmp:
        folder = Path(tmp)
        spec = trivial_spec(trials, slots, folder)
        command = [*HNET, "sweep", "run", str(spec)]
        if backend == "pool":
            command += ["--backend", "pool", "--workers", str(slots), "--results", str(folder / "pool.jsonl")]
        wall, rc, rss = timed(command, folder / "log.txt")
        if rc != 0:
            sys.exit(f"sweep_scale: {backend} run failed (exit {rc}):\n" + (folder / "log.txt").read_text()[-3000:])
        finished = trials
        if backend == "ray":
            import mlflow

            runs = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db").search_runs(
                [mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db").get_experiment_by_name("scale").experiment_id],
                filter_string="tags.role = 'trial' and attributes.status = 'FINISHED'", max_results=50_000)
            finished = len(runs)
        running = peak_running(folder / "ray_results") if backend == "ray" else slots
        tune_bytes = folder_bytes(folder / "ray_results")
        mlflow_bytes = folder_bytes(folder / "mlartifacts") + sum(
            f.stat().st_size for f in folder.glob("mlflow.db*"))
    return {"backend": backend, "trials": trials, "slots": slots, "finished": finished, "peak_running": running,
            "wall_s": wall,
            "s_per_trial": wall / trials, "trials_per_s": trials / wall, "driver_peak_mb": rss / 2**20,
            "tune_kb_per_trial": tune_bytes / 1024 / trials, "mlflow_kb_per_trial": mlflow_bytes / 1024 / trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, nargs="+", default=[200], help="N (several: the scan over N)")
    ap.add_argument("--slots", type=int, default=2, help="trials at once (pool workers, Ray max_concurrent)")
    ap.add_argument("--scan", type=int, nargs="*", default=[], help="also the Ray backend at these slot counts")
    ap.add_argument("--no-pool", action="store_true", help="Ray backend only")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()

    rows = []
    header = (f"{'backend':<8}{'N':>6}{'slots':>6}{'finished':>9}{'peak':>5}{'wall s':>9}{'s/trial':>9}{'trials/s':>9}"
              f"{'driver MB':>10}{'tune KB/trial':>14}{'mlflow KB/trial':>16}")
    print(f"{len(os.sched_getaffinity(0))} cores; trivial trials: split_digits, 3 tasks x 10 it, random search")
    print(header, flush=True)
    plan = [(b, n, args.slots) for n in args.trials for b in (["ray"] if args.no_pool else ["pool", "ray"])]
    plan += [("ray", args.trials[0], s) for s in args.scan if ("ray", args.trials[0], s) not in plan]
    for backend, n, slots in plan:
        row = run(backend, n, slots)
        rows.append(row)
        print(f"{backend:<8}{n:>6}{slots:>6}{row['finished']:>9}{row['peak_running']:>5}{row['wall_s']:>9.1f}{row['s_per_trial']:>9.3f}"
              f"{row['trials_per_s']:>9.2f}{row['driver_peak_mb']:>10.0f}{row['tune_kb_per_trial']:>14.1f}"
              f"{row['mlflow_kb_per_trial']:>16.1f}", flush=True)
    for n in args.trials:
        pool = [r for r in rows if r["backend"] == "pool" and r["trials"] == n]
        ray = [r for r in rows if r["backend"] == "ray" and r["trials"] == n and r["slots"] == args.slots]
        if pool and ray:
            print(f"N={n}, {args.slots} slots: ray/pool seconds per trial {ray[0]['s_per_trial'] / pool[0]['s_per_trial']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

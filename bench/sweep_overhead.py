#!/usr/bin/env python3
"""Sweep overhead: N tiny trials through Ray Tune + Optuna + MLflow against the same N in a plain loop.

Both sides train the same N configurations (drawn by the sweep's own searcher) on offline
digits. The Tune side is the full `hnet sweep run` path (local Ray start included, trials
in parallel on the CPUs, MLflow SQLite logging, a checkpoint per task); the plain side calls
`hnet.trainer.train` in a loop in this process. With `--fig-a7 DATA_ROOT` it also runs the
fig_a7_splitmnist spec for `--fig-a7-trials` trials at `--fig-a7-iters` iterations per task
and prints trials per hour (and the estimate at the spec's full 2,000 iterations).

    python bench/sweep_overhead.py [--trials 8] [--fig-a7 ../shared/data --fig-a7-trials 6]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from hnet.trainer import train
from sweeps.cli import resolve_spec_path
from sweeps.runner import run_sweep
from sweeps.search import SweepSearcher, train_config_of
from sweeps.spec import load_spec, parse_spec


def tiny_spec(trials: int, folder: Path):
    return parse_spec({
        "name": "overhead", "base": {"preset": "split_digits", "num_tasks": 3, "iters": 40, "batch_size": 32},
        "runtime": {"threads": 1},
        "space": {"beta": [0.001, 0.01, 0.1, 1.0], "chunk_size": [500, 1000, 2000, 4000],
                  "hnet_activation": ["relu", "elu"]},
        "search": {"algorithm": "random", "seed": 0, "max_concurrent": os.cpu_count()}, "num_samples": trials,
        "mlflow": {"experiment": "overhead", "tracking_uri": f"sqlite:///{folder}/mlflow.db"},
        "storage_path": str(folder / "ray_results")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--fig-a7", metavar="DATA_ROOT", help="also time the fig_a7_splitmnist spec on real MNIST")
    ap.add_argument("--fig-a7-trials", type=int, default=6)
    ap.add_argument("--fig-a7-iters", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = tiny_spec(args.trials, folder)
        searcher = SweepSearcher(spec)
        configs = [searcher.suggest(f"t{i}") for i in range(args.trials)]
        started = time.perf_counter()
        for config in configs:
            train(train_config_of(config), runtime=spec.runtime)
        plain = time.perf_counter() - started

        started = time.perf_counter()
        summary = run_sweep(spec)
        tuned = time.perf_counter() - started
        assert summary["stats"]["trials_completed"] == args.trials, summary["stats"]

    cpus = os.cpu_count()
    print(f"\n{args.trials} tiny trials (split_digits, 3 tasks x 40 iterations), {cpus} CPUs")
    print(f"{'path':<44}{'wall s':>9}{'s/trial':>9}")
    print(f"{'plain loop (sequential, this process)':<44}{plain:>9.1f}{plain / args.trials:>9.2f}")
    print(f"{'hnet sweep run (Ray Tune+Optuna+MLflow)':<44}{tuned:>9.1f}{tuned / args.trials:>9.2f}")
    print(f"ratio sweep/plain: {tuned / plain:.2f}x wall; overhead per trial with {cpus} trials in parallel: "
          f"{(tuned - plain / cpus) / args.trials:.2f} s")

    if args.fig_a7:
        with tempfile.TemporaryDirectory() as tmp:
            spec = load_spec(resolve_spec_path("fig_a7_splitmnist"), {"num_samples": args.fig_a7_trials})
            spec.set_base(iters=args.fig_a7_iters)
            spec.runtime = spec.runtime.replace(data_root=str(Path(args.fig_a7).resolve()), threads=1)
            spec.tracking_uri, spec.storage_path = f"sqlite:///{tmp}/mlflow.db", f"{tmp}/ray_results"
            started = time.perf_counter()
            summary = run_sweep(spec)
            hours = (time.perf_counter() - started) / 3600
        done = summary["stats"]["trials_completed"]
        print(f"\nfig_a7_splitmnist on real MNIST, {args.fig_a7_iters} iterations/task: {done} trials in "
              f"{hours * 3600:.0f} s = {done / hours:.0f} trials/hour on this machine "
              f"(~{done / hours * args.fig_a7_iters / 2000:.0f} trials/hour at the spec's 2,000 iterations/task)")


if __name__ == "__main__":
    main()

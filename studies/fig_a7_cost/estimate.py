#!/usr/bin/env python3
"""CPU hours a Fig. A7 study would take: each of a spec's first N draws timed for a few real training
steps in every task (synthetic data of the benchmark's shape), then scaled to the full budget.

    python studies/fig_a7_cost/estimate.py fig_a7_permutedmnist --draws 30 --iters 5000 --threads 1 > OUT.txt

Per architecture: the median step of each task (after one warm-up step) times ``--iters``, summed over
the tasks; steps grow with the task index because Eq. 2 covers every earlier task.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.iteration_speed import IterationTimer, synthetic_benchmark  # noqa: E402
from hnet.config import Runtime  # noqa: E402
from hnet.trainer import train  # noqa: E402
from sweeps.space import plan  # noqa: E402
from sweeps.cli import resolve_spec_path  # noqa: E402
from sweeps.spec import load_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--iters", type=int, default=5000, help="the study's iterations per task")
    parser.add_argument("--steps", type=int, default=3, help="steps timed per task (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    configs = plan(load_spec(resolve_spec_path(args.spec))).configs[:args.draws]
    runtime = Runtime(threads=args.threads)
    total = 0.0
    print(f"{args.spec}: first {len(configs)} draws, {args.iters} it/task, CPU {args.threads} thread(s), "
          f"torch {torch.__version__}, reg_form auto")
    print(f"{'#':>3} {'hidden':>10} {'chunk emb':>9} {'chunk':>6} {'ratio':>7} {'form':>8} "
          f"{'first step s':>12} {'last step s':>11} {'hours':>6}")
    for i, cfg in enumerate(configs, 1):
        timer = IterationTimer()
        run = cfg.replace(iters=args.steps)
        started = time.perf_counter()
        result = train(run, synthetic_benchmark(run, n_train=1024, n_test=64), callbacks=[timer], runtime=runtime)
        per_task = [statistics.median(timer.times[t][1:]) / 1e3 for t in range(cfg.num_tasks)]
        hours = args.iters * sum(per_task) / 3600
        total += hours
        print(f"{i:>3} {str(list(cfg.hnet_hidden)):>10} {cfg.chunk_emb_dim:>9} {cfg.chunk_size:>6} "
              f"{result['compression_ratio']:>7.4f} {runtime.reg_form_for(cfg):>8} {per_task[0]:>12.3f} "
              f"{per_task[-1]:>11.3f} {hours:>6.2f}   ({time.perf_counter() - started:.0f} s to time)", flush=True)
    print(f"total {total:.1f} core-hours for {len(configs)} architectures, {total / len(configs):.2f} h each on average")


if __name__ == "__main__":
    main()

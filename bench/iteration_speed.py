#!/usr/bin/env python3
"""Milliseconds per training iteration of the paper's two MNIST presets, beside hypnettorch.

Times the real trainer loop (``hnet.trainer.train``: batch draw, hypernetwork, target,
regularizer, Adam) on synthetic data of MNIST shape, on the first task (no regularizer)
and the last (4 resp. 9 earlier tasks in the regularizer), with 1 and 2 CPU threads.
Variants: the preset as shipped (factored regularizer + lookahead), the peer's protocol
(no lookahead) with the factored and with the direct regularizer.

With ``--peer-python`` the reference implementation is timed in the same run through
``shared/bench/peer_hypnettorch.py`` (its own virtual environment; see bench/README.md)
and the ratios are printed side by side.

    python bench/iteration_speed.py [--threads 2 1] [--iters 40] [--peer-python peer-venv/bin/python]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hnet.config import preset
from hnet.data import Benchmark, Split, Task
from hnet.trainer import Callback, train

PEER_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer_hypnettorch.py"


def synthetic_benchmark(cfg, n_train: int = 4096, n_test: int = 256) -> Benchmark:
    """Random uint8 images of the benchmark's shape: no dataset needed, same code path."""
    g = torch.Generator().manual_seed(0)
    d, k = cfg.spec.input_dim, cfg.spec.classes_per_task
    images = {"train": torch.randint(0, 256, (n_train, d), dtype=torch.uint8, generator=g),
              "test": torch.randint(0, 256, (n_test, d), dtype=torch.uint8, generator=g)}
    permuted = cfg.benchmark.startswith("permuted")
    tasks = [Task(train=Split(torch.arange(n_train), torch.randint(0, k, (n_train,), generator=g)), val=None,
                  test=Split(torch.arange(n_test), torch.randint(0, k, (n_test,), generator=g)),
                  permutation=torch.randperm(d, generator=g) if permuted and t else None)
             for t in range(cfg.num_tasks)]
    return Benchmark(cfg.benchmark, images, 1 / 255, tasks)


class IterationTimer(Callback):
    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.last = None

    def on_task_start(self, task, cfg) -> None:
        self.last = time.perf_counter()

    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        now = time.perf_counter()
        self.times.setdefault(task, []).append((now - self.last) * 1e3)
        self.last = now


def time_preset(name: str, threads: int, iters: int, warmup: int, **changes) -> dict[str, float]:
    cfg = preset(name).replace(iters=warmup + iters, threads=threads, device="cpu", **changes)
    timer = IterationTimer()
    train(cfg, synthetic_benchmark(cfg), callbacks=[timer])
    last = cfg.num_tasks - 1
    return {"first": statistics.median(timer.times[0][warmup:]), "last": statistics.median(timer.times[last][warmup:])}


def run_peer(python: str, threads: list[int], iters: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        cmd = [python, str(PEER_SCRIPT), "--threads", *map(str, threads), "--iters", str(iters),
               "--warmup", str(warmup), "--rounds", "1", "--no-batched-extra", "--wait-quiet", "0",
               "--retries", "0", "--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads(out.read_text())["summary"]
    peer = {}
    for key, name in (("A", "split_mnist"), ("B", "permuted_mnist")):
        for t in threads:
            row = summary[key][f"threads_{t}"]
            first = next(v for k, v in row.items() if k.startswith("task1_prev0_median"))
            last = next(v for k, v in row.items() if k.endswith("_median_ms") and not k.startswith("task1_"))
            peer[name, t] = {"first": first, "last": last}
    return peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--iters", type=int, default=40, help="timed iterations per task")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--presets", nargs="+", default=["split_mnist", "permuted_mnist"])
    ap.add_argument("--peer-python", help="python of a venv with hypnettorch (times the reference side by side)")
    args = ap.parse_args()

    variants = {"preset (factored, lookahead)": {"reg_form": "factored"},
                "no lookahead, factored": {"lookahead": False, "reg_form": "factored"},
                "no lookahead, direct": {"lookahead": False, "reg_form": "direct"}}
    peer = run_peer(args.peer_python, args.threads, args.iters, args.warmup) if args.peer_python else {}
    print(f"ms per training iteration (median of {args.iters}), CPU, torch {torch.__version__}")
    print(f"{'preset':<16}{'threads':>8}  {'variant':<30}{'first task':>11}{'last task':>11}{'peer last':>11}{'speed-up':>10}")
    for name in args.presets:
        for threads in args.threads:
            ref = peer.get((name, threads))
            if ref:
                print(f"{name:<16}{threads:>8}  {'hypnettorch (peer, no lookahead)':<30}{ref['first']:>11.1f}{ref['last']:>11.1f}")
            for label, changes in variants.items():
                ms = time_preset(name, threads, args.iters, args.warmup, **changes)
                ratio = f"{ref['last'] / ms['last']:.1f}x" if ref and "no lookahead" in label else ""
                peer_last = f"{ref['last']:.1f}" if ref else ""
                print(f"{name:<16}{threads:>8}  {label:<30}{ms['first']:>11.1f}{ms['last']:>11.1f}{peer_last:>11}{ratio:>10}",
                      flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Fig. A7 trials per hour on one GPU with 1, 2, 4, 8 trials sharing it.

Each concurrency level N starts N worker processes on the same GPU: that is how Ray runs
trials with ``resources: {gpu: 1/N}`` (one worker process per trial, the GPU shared by
time-slicing). Every worker loads the data once (as a reused Tune actor does), then trains
full-budget trials of random architectures from the sweep spec's space (compression
filter applied), the same list for every N, until a common deadline. Throughput counts
every training iteration done in the window (the unfinished trials' share included) and
converts to trials per hour at the spec's budget; evaluation and set-up between tasks and
trials are inside the window.

    python bench/gpu_throughput.py --data-root DIR [--spec sweeps/configs/fig_a7_splitmnist.yaml]
        [--concurrency 1 2 4 8] [--window 60] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any

from hnet.config import Runtime, TrainConfig
from sweeps.space import plan
from sweeps.spec import load_spec



class _Deadline(Exception):
    pass


def worker(index: int, configs: list[dict], data_root: str, device: str, threads: int, cuda_graph: bool,
           ready: Any, start: Any, deadline_box: Any, results: Any) -> None:
    import torch

    from hnet.data import load_benchmark
    from hnet.trainer import Callback, train

    torch.set_num_threads(threads)
    done = {"iters": 0, "trials": 0, "iters_in_window": 0}

    class Count(Callback):
        def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
            done["iters"] += 1
            if done["iters"] % 50 == 0 and time.time() > deadline_box.value:
                raise _Deadline

    # Warm-up outside the window: CUDA context, data on the GPU, cuBLAS handles.
    runtime = Runtime(data_root=data_root, device=device, threads=threads, cuda_graph=cuda_graph)
    first = TrainConfig.from_dict(configs[0]).replace(iters=20, num_tasks=2)
    train(first, load_benchmark(first, device, data_root), runtime=runtime)
    ready.wait()
    start.wait()
    done["iters"] = 0
    for values in configs:
        cfg = TrainConfig.from_dict(values)
        try:
            train(cfg, load_benchmark(cfg, device, data_root), callbacks=[Count()], runtime=runtime)
            done["trials"] += 1
        except _Deadline:
            break
    torch.cuda.synchronize()
    results.put({"worker": index, "iters": done["iters"], "trials": done["trials"],
                 "max_memory_mb": torch.cuda.max_memory_allocated() / 2**20})


def measure(configs: list[TrainConfig], concurrency: int, window: float, data_root: str, device: str,
            cores: int, cuda_graph: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, start = ctx.Barrier(concurrency + 1), ctx.Barrier(concurrency + 1)
    deadline, results = ctx.Value("d", 0.0), ctx.Queue()
    threads = max(1, cores // concurrency)
    procs = [ctx.Process(target=worker, args=(i, [c.to_dict() for c in configs[i::concurrency]], data_root, device,
                                              threads, cuda_graph, ready, start, deadline, results)) for i in range(concurrency)]
    for p in procs:
        p.start()
    ready.wait()
    deadline.value = time.time() + window
    began = time.perf_counter()
    start.wait()
    rows = [results.get() for _ in procs]
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    iters_per_trial = configs[0].iters * configs[0].num_tasks
    total_iters = sum(r["iters"] for r in rows)
    return {"concurrency": concurrency, "cuda_graph": cuda_graph, "window_s": elapsed, "threads_per_trial": threads,
            "iterations": total_iters, "trials_finished": sum(r["trials"] for r in rows),
            "iters_per_second": total_iters / elapsed,
            "trials_per_hour": total_iters / elapsed * 3600 / iters_per_trial,
            "max_memory_mb_per_trial": max(r["max_memory_mb"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="sweeps/configs/fig_a7_splitmnist.yaml")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--window", type=float, default=60.0, help="seconds of training per concurrency level")
    ap.add_argument("--step", nargs="+", choices=["graph", "eager"], default=["graph", "eager"],
                    help="training step replayed as a CUDA graph, launched kernel by kernel, or both")
    ap.add_argument("--trials", type=int, default=64, help="architectures drawn (the same list for every level)")
    ap.add_argument("--out", help="write the rows as JSON")
    args = ap.parse_args()
    import torch

    spec = load_spec(args.spec)
    spec.num_samples, spec.seeds = args.trials, 1
    configs = plan(spec).configs
    cores = len(os.sched_getaffinity(0))
    name = torch.cuda.get_device_name(args.device)
    iters_per_trial = configs[0].iters * configs[0].num_tasks
    print(f"{spec.name}: {iters_per_trial} iterations per trial on {name}, {cores} CPU cores, "
          f"{args.window:.0f} s per level", flush=True)
    rows = []
    for mode in args.step:
        for n in args.concurrency:
            row = measure(configs, n, args.window, args.data_root, args.device, cores, mode == "graph")
            rows.append(row)
            print(f"{mode:>5}, {n} per GPU: {row['trials_per_hour']:7.0f} trials/h  ({row['iters_per_second']:.0f} it/s, "
                  f"{row['trials_finished']} finished, {row['max_memory_mb_per_trial']:.0f} MB each)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "spec": spec.name, "iters_per_trial": iters_per_trial, "cores": cores,
                       "architectures": [c.to_flat_params() for c in configs], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

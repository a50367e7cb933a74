#!/usr/bin/env python3
"""Run every trial of a sweep spec on one GPU with N worker processes, without Ray.

The lent GPU machines of this project have PyTorch but no Ray, Optuna or MLflow (nothing can
be installed there). This runs a spec's trials the way Ray runs them with
``resources: {gpu: 1/N}``: N worker processes share the GPU, each trains one trial after
another (data loaded once per process). Grid specs are expanded in full, random specs are
drawn from their categorical space within the compression range; every configuration runs
with the spec's ``seeds``. One JSON line per finished trial (config, counts, accuracy matrix,
timings) goes to ``--out``, in the order trials finish.

    python bench/gpu_pool.py SPEC.yaml --data-root DIR --workers 8 --out results.jsonl [--set key=value ...]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from typing import Any

from hnet.config import Runtime, TrainConfig, split_fields
from hnet.counts import count_weights
from sweeps.spec import SweepSpec, load_spec


def sample_architectures(spec: SweepSpec, n: int, seed: int = 0) -> list[TrainConfig]:
    """Random draws of the spec's categorical space (as its random search), within its compression range."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        values: dict[str, Any] = {}
        for key, choice in spec.space.items():
            if key == "hnet_hidden" and isinstance(choice, dict):
                values[key] = [rng.choice(choice["sizes"]) for _ in range(rng.choice(choice["layers"]))]
            else:
                values[key] = rng.choice(choice)
        cfg = spec.trial_config(values)
        if spec.compression_min <= count_weights(cfg).compression_ratio <= spec.compression_max:
            out.append(cfg)
    return out


def spec_configs(spec: SweepSpec) -> list[TrainConfig]:
    """The spec's configurations (grid: all points in range; otherwise num_samples random draws), each with every seed."""
    if spec.algorithm == "grid":
        keys = list(spec.space)
        configs = [spec.trial_config(dict(zip(keys, point))) for point in itertools.product(*spec.space.values())]
        configs = [c for c in configs if spec.compression_min <= count_weights(c).compression_ratio <= spec.compression_max]
    else:
        configs = sample_architectures(spec, spec.num_samples, spec.search_seed)
    # Seed by seed, each in a fixed shuffled order: a run cut short still covers the whole space.
    random.Random(0).shuffle(configs)
    return [c.replace(seed=c.seed + s) for s in range(spec.seeds) for c in configs]


def _run(values: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hnet.trainer import train

    result = train(TrainConfig.from_dict(values), runtime=Runtime.from_dict(runtime))
    result["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--workers", type=int, default=8, help="trials sharing the GPU at once")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="JSON lines, one per finished trial")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config field")
    ap.add_argument("--time-limit", type=float, default=0, help="stop starting trials after this many seconds (0: none)")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    experiment, runtime = split_fields(dict(item.split("=", 1) for item in args.set))
    spec.set_base(**experiment)
    cores = len(os.sched_getaffinity(0))
    runtime = spec.runtime.replace(data_root=args.data_root, device=args.device,
                                   **{"threads": max(1, cores // args.workers), **runtime}).to_dict()
    configs = spec_configs(spec)
    # from_dict: fields a line predates take their defaults, so it matches the config it trained
    done_before = {json.dumps(TrainConfig.from_dict(json.loads(line)["config"]).to_dict(), sort_keys=True)
                   for line in open(args.out) if line.strip()} if os.path.exists(args.out) else set()
    configs = [c for c in configs if json.dumps(c.to_dict(), sort_keys=True) not in done_before]  # a part run before
    print(f"{spec.name}: {len(configs)} trials to run ({len(done_before)} already in {args.out}), "
          f"{args.workers} at a time", flush=True)

    def stop(signum: int, frame: object) -> None:  # else the workers run on as orphans, each finishing its trial
        for child in mp.active_children():
            child.terminate()
        os._exit(128 + signum)  # every finished trial is already written and flushed

    signal.signal(signal.SIGTERM, stop)
    started = time.perf_counter()
    done = 0
    with open(args.out, "a") as out, cf.ProcessPoolExecutor(
            args.workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(_run, c.to_dict(), runtime) for c in configs[:args.workers]}
        queue = iter(configs[args.workers:])
        while pending:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                out.write(json.dumps(result) + "\n")
                out.flush()
                done += 1
                elapsed = time.perf_counter() - started
                print(f"[{done}/{len(configs)} {elapsed:.0f}s] " + " ".join(
                    f"{k}={result['config'][k]}" for k in [*spec.space, "seed"] if k in result["config"]) + ": "
                      f"acc_after_mean {result['acc_after_mean']:.2f}", flush=True)
                if not args.time_limit or elapsed < args.time_limit:
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(_run, nxt.to_dict(), runtime))
    elapsed = time.perf_counter() - started
    print(f"{done} trials in {elapsed:.0f} s: {done / elapsed * 3600:.0f} trials per hour", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

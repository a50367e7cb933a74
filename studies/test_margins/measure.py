"""Training results behind the test suite's thresholds, per seed, on this CPU's kernels.

Run once per CPU code path, e.g.
    for cap in default avx2 avx512; do for t in 1 2; do
        ATEN_CPU_CAPABILITY=$cap python studies/test_margins/measure.py --threads $t --seeds 0 1 2 3 4 \
            >> studies/test_margins/results.jsonl; done; done
and read the spread with `python studies/test_margins/summary.py`. Each line: the case, the seed,
the code path and the numbers its test compares with a threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from hnet.config import preset
from hnet.data import load_benchmark
from hnet.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def forgetting(seed: int) -> dict:
    """tests/test_trainer.py: the regularizer keeps task 1, fine-tuning forgets it (permuted_digits)."""
    cfg = preset("permuted_digits").replace(seed=seed)
    bench = load_benchmark(cfg)
    p, f = train(cfg, bench), train(cfg.replace(beta=0.0), bench)
    return {"protected_during0": p["acc_during"][0], "protected_after0": p["acc_after"][0],
            "protected_mean": p["acc_after_mean"], "finetuned_during0": f["acc_during"][0],
            "finetuned_after0": f["acc_after"][0], "finetuned_mean": f["acc_after_mean"],
            "protected_forgetting": p["forgetting"], "finetuned_forgetting": f["forgetting"]}


def cl3_finetune(seed: int) -> dict:
    """tests/test_scenarios.py: class-incremental fine-tuning keeps only the last task."""
    r = train(preset("split_digits").replace(method="finetune", scenario="cl3", num_tasks=3, iters=100, seed=seed))
    return {"last": r["acc_after"][-1], "max_earlier": max(r["acc_after"][:-1])}


def idx_mnist(seed: int) -> dict:
    """tests/test_cli.py: split_mnist, 2 tasks x 20 iterations on the tiny IDX MNIST the test writes."""
    from test_cli import write_idx_mnist

    with tempfile.TemporaryDirectory() as tmp:
        write_idx_mnist(Path(tmp) / "data")
        cfg = preset("split_mnist").replace(num_tasks=2, iters=20, seed=seed)
        r = train(cfg, load_benchmark(cfg, data_root=str(Path(tmp) / "data")))
    return {"acc_after_mean": r["acc_after_mean"]}


def cluster_trial(seed: int) -> dict:
    """tests/test_cluster.py: a split_digits trial, 5 tasks x 400 iterations, batch 32, seed varied."""
    r = train(preset("split_digits").replace(num_tasks=5, iters=400, batch_size=32, seed=seed))
    return {"acc_after_mean": r["acc_after_mean"]}


CASES = {"forgetting": forgetting, "cl3_finetune": cl3_finetune, "idx_mnist": idx_mnist, "cluster_trial": cluster_trial}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    where = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
             "torch": torch.__version__, "env": os.environ.get("ATEN_CPU_CAPABILITY", "")}
    for case in args.cases:
        for seed in args.seeds:
            print(json.dumps({"case": case, "seed": seed, **where, **CASES[case](seed)}), flush=True)

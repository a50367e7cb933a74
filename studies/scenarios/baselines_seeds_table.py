#!/usr/bin/env python3
"""Table of the baselines over seeds (issue 42) from the pool's results file of the spec
baselines_seeds_splitmnist:

    hnet sweep run baselines_seeds_splitmnist --backend pool --workers 1 --set threads=1 \\
        --data-root DATA --results docs/scenarios/baselines_seeds_splitmnist.jsonl
    python studies/scenarios/baselines_seeds_table.py docs/scenarios/baselines_seeds_splitmnist.jsonl

Prints one markdown row per (method, scenario): mean ± std (n), every seed's test accuracy after
all tasks, the lowest, and task 0's accuracy at the end (where forgetting shows first).
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

PAPER = {("ewc", "cl1"): "99.12 ± 0.11", ("ewc", "cl2"): "64.32 ± 1.90",
         ("si", "cl1"): "99.09 ± 0.15", ("si", "cl2"): "65.36 ± 1.57"}  # Table 1 (van de Ven & Tolias 2019)


def main(path: str) -> None:
    rows = defaultdict(list)
    for line in open(path):
        result = json.loads(line)
        cfg = result["config"]
        rows[cfg["method"], cfg["scenario"]].append((cfg["seed"], result["acc_after_mean"], result["acc_matrix"][-1][0]))
    print("| method | scenario | mean ± std (n) | paper | lowest | per seed (acc after; task 0 at the end) |")
    print("|---|---|---|---|---|---|")
    for (method, scenario), runs in sorted(rows.items()):
        runs.sort()
        accs = [acc for _, acc, _ in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        seeds = ", ".join(f"{seed}: {acc:.2f} ({first:.1f})" for seed, acc, first in runs)
        print(f"| {method} | {scenario} | {statistics.mean(accs):.2f} ± {std:.2f} (n={len(accs)}) | "
              f"{PAPER.get((method, scenario), '-')} | {min(accs):.2f} | {seeds} |")


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Fig. 3a's shape from one long run: each task's test accuracy right after it was learned ("during")
and after the last task ("after"), by task index; writes fig3a.png, per_task.csv and summary.json.

    hnet train --preset permuted_mnist_100 --num-tasks 30 --iters 500 --data-root DATA --out RUN
    python studies/long_sequences/plot.py RUN/results.json --out docs/long_sequences
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results.json of an `hnet train` run")
    ap.add_argument("--out", type=Path, default=Path("docs/long_sequences"))
    args = ap.parse_args()
    result = json.loads(args.results.read_text())
    during, after = result["acc_during"], result["acc_after"]
    cfg = result["config"]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "per_task.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "acc_during", "acc_after"])
        writer.writerows([t, round(d, 2), round(a, 2)] for t, (d, a) in enumerate(zip(during, after)))
    summary = {"preset_fields": {k: cfg[k] for k in ("benchmark", "num_tasks", "iters", "hnet_hidden", "chunk_size",
                                                     "task_emb_dim", "chunk_emb_dim", "beta", "lr", "reg_subset",
                                                     "multi_head", "seed")},
               "acc_during_mean": statistics.mean(during), "acc_after_mean": statistics.mean(after),
               "compression_ratio": result["compression_ratio"], "hnet_weights": result["hnet_weights"],
               "target_weights": result["target_weights"], "train_seconds": sum(result["task_seconds"])}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    tasks = range(1, len(after) + 1)
    ax.plot(tasks, during, "o-", ms=3, label=f"during (mean {summary['acc_during_mean']:.2f} %)")
    ax.plot(tasks, after, "s-", ms=3, label=f"after all {len(after)} tasks (mean {summary['acc_after_mean']:.2f} %)")
    ax.set_ylim(max(0, min(during + after) - 15), 100)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("task")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg['benchmark']}, {len(after)} tasks, {cfg['iters']} it/task, "
                 f"compression {result['compression_ratio']:.2f}")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "fig3a.png", dpi=120)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Plot and tabulate bench/gpu_throughput.py results (several JSON files: eager, graph, graph + MPS).

    python bench/plot_gpu_throughput.py docs/gpu/throughput_*.json --out docs/gpu/throughput.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    print("| step | trials per GPU | trials per hour | iterations/s | GPU memory per trial (MB) |")
    print("|---|---|---|---|---|")
    device = ""
    for path in args.files:
        data = json.loads(path.read_text())
        device = data["device"]
        label = path.stem.removeprefix("throughput_").replace("_", " ")
        label = {"mps": "CUDA graph + MPS", "graph": "CUDA graph, time-sliced", "eager": "eager, time-sliced"}.get(label, label)
        rows = data["rows"]
        ax.plot([r["concurrency"] for r in rows], [r["trials_per_hour"] for r in rows], "o-", label=label)
        for r in rows:
            print(f"| {label} | {r['concurrency']} | {r['trials_per_hour']:.0f} | {r['iters_per_second']:.0f} | "
                  f"{r['max_memory_mb_per_trial']:.0f} |")
    ax.axhline(1000, color="grey", ls=":", label="goal: 1,000 trials/h")
    ax.set(xscale="log", xticks=[1, 2, 4, 8], xticklabels=["1", "2", "4", "8"], xlabel="trials sharing the GPU",
           ylabel="full-budget Fig. A7 trials per hour", title=f"SplitMNIST Fig. A7 trials on one {device}")
    ax.minorticks_off()
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()

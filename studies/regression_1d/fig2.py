#!/usr/bin/env python3
"""Fig. 2 of the paper: the 1-D regression toy after all three tasks, protected (β 0.005) vs
fine-tuned hypernetwork (β 0): each task's fit with the weights generated from its embedding.

    python studies/regression_1d/fig2.py [--seed 0] [--out docs/regression_1d]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hnet.config import Runtime, preset  # noqa: E402
from hnet.data import POLYNOMIAL_TASKS, load_benchmark  # noqa: E402
from hnet.models import target_forward  # noqa: E402
from hnet.trainer import Callback, train  # noqa: E402


class KeepModels(Callback):
    def on_models(self, target, learner, bench) -> None:
        self.target, self.learner = target, learner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/regression_1d"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    summary = {}
    for ax, (beta, title) in zip(axes, ((0.005, "hypernetwork, output regularizer β = 0.005"),
                                        (0.0, "hypernetwork fine-tuned, β = 0"))):
        cfg = preset("regression_1d").replace(beta=beta, seed=args.seed)
        bench, keep = load_benchmark(cfg), KeepModels()
        result = train(cfg, bench, callbacks=[keep], runtime=Runtime(threads=1))
        summary[f"beta={beta}"] = {"mse_after": result["acc_after"], "mse_during": result["acc_during"]}
        weights = keep.learner.task_weights(cfg.num_tasks)
        for t, (f, (low, high)) in enumerate(POLYNOMIAL_TASKS):
            grid = torch.linspace(low - 0.5, high + 0.5, 200)
            with torch.no_grad():
                fit = target_forward(keep.target, weights[t], grid[:, None])[:, 0]
            color = f"C{t}"
            ax.plot(grid, f(grid), color=color, lw=1, ls="--")
            ax.plot(grid, fit, color=color, lw=2, label=f"task {t + 1} (MSE {result['acc_after'][t]:.3g})")
            train_split = bench.tasks[t].train
            ax.scatter(bench.inputs(t, "train", train_split.rows)[:, 0], train_split.labels, color=color, s=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylim(-4, 4)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("y")
    fig.suptitle(f"Fig. 2: three 1-D regression tasks learned in sequence, fits after the last (seed {args.seed}); "
                 "dashed: ground truth, dots: training data", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "fig2.png", dpi=130)
    (args.out / "fig2.json").write_text(json.dumps({"seed": args.seed, **summary}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

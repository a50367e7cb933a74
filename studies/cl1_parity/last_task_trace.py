#!/usr/bin/env python3
"""Accuracy of the last task while it is learned, every few iterations (test, and validation
where a split is held out): whether its final accuracy is a settled value or one sample of the
noise a constant learning rate keeps up (docs/init_history.md, "Since 2026-12-01: a cosine learning rate
within each task — parity").

    python studies/cl1_parity/last_task_trace.py --preset split_mnist --set lr_schedule=constant --seeds 0 1 \\
        --set val_fraction=0.1 --data-root ../shared/data --threads 1 --out docs/cl1_parity/trace.jsonl
    python studies/cl1_parity/last_task_trace.py --out docs/cl1_parity/trace.jsonl --plot docs/cl1_parity/trace.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from hnet.config import Runtime, resolve, split_fields
from hnet.evaluation import evaluate
from hnet.progress import ProgressBar
from hnet.trainer import Callback, train


class LastTaskTrace(Callback):
    """Scores every task learned so far each ``every`` iterations of the last task."""

    def __init__(self, cfg, every: int, eval_batch_size: int) -> None:
        self.cfg, self.every, self.eval_batch_size, self.points = cfg, every, eval_batch_size, []

    def on_models(self, target, learner, bench) -> None:
        self.target, self.learner, self.bench = target, learner, bench

    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        if task != self.cfg.num_tasks - 1 or (iteration + 1) % self.every:
            return
        weights = self.learner.task_weights(task + 1)
        point = {"iteration": iteration + 1}
        for part in ("test", "val") if self.cfg.val_fraction > 0 else ("test",):
            accs = evaluate(self.cfg, self.target, weights, self.bench, task + 1, part, self.eval_batch_size)[0]
            point[part] = accs[-1]
            point[f"{part}_mean"] = sum(accs) / len(accs)
        self.points.append(point)


def plot(lines: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for line in lines:
        its = [p["iteration"] for p in line["points"]]
        style = "-" if line["config"]["lr_schedule"] == "cosine" else ":"
        ax.plot(its, [p["test"] for p in line["points"]], style,
                label=f"{line['config']['lr_schedule']}, seed {line['seed']}")
    ax.set_xlabel("iteration of the last task")
    ax.set_ylabel("last task, test accuracy (%)")
    ax.set_ylim(98, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="split_mnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--every", type=int, default=50, help="iterations between two scores")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON lines, one per seed (appended)")
    ap.add_argument("--plot", metavar="PNG", help="only draw what --out holds")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot:
        plot([json.loads(line) for line in out.read_text().splitlines()], Path(args.plot))
        return
    overrides, run = split_fields(dict(item.split("=", 1) for item in args.set))
    if args.every < 1:
        ap.error("--every must be >= 1")
    runtime = Runtime(data_root=args.data_root, threads=args.threads).replace(**run).validate()
    base = resolve(args.preset, overrides).validate()
    if args.every > base.iters:
        ap.error(f"--every {args.every} is more than the {base.iters} iterations of a task")
    for seed in args.seeds:
        cfg = base.replace(seed=seed)
        trace = LastTaskTrace(cfg, args.every, runtime.eval_batch_size)
        result = train(cfg, callbacks=[ProgressBar(), trace], runtime=runtime)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps({"preset": args.preset, "seed": seed, "config": cfg.to_dict(),
                                "acc_after_mean": result["acc_after_mean"], "points": trace.points}) + "\n")
        print(f"seed {seed}: last task {trace.points[-1]['test']:.2f} (test), mean {result['acc_after_mean']:.2f}")


if __name__ == "__main__":
    main()

"""Progress bar per task (a trainer callback)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import TrainConfig
from .trainer import Callback


class ProgressBar(Callback):
    """One tqdm bar per task on stderr; losses refreshed every ``every`` iterations."""

    def __init__(self, every: int = 50) -> None:
        self.every, self.bar = every, None

    def on_task_start(self, task: int, cfg: TrainConfig) -> None:
        self.bar = tqdm(total=cfg.iters, desc=f"task {task + 1}/{cfg.num_tasks}", file=sys.stderr,
                        unit="it", dynamic_ncols=True, leave=True)

    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        if iteration % self.every == 0 or iteration + 1 == self.bar.total:
            post = {"loss": f"{loss_task.item():.4f}"}
            if loss_reg is not None:
                post["reg"] = f"{loss_reg.item():.3g}"
            self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
        row = summary["acc_matrix"][-1]
        self.bar.set_postfix({"acc": f"{row[-1]:.2f}", "mean": f"{sum(row) / len(row):.2f}"})
        self.bar.close()

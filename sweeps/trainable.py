"""The Ray Tune trainable: one hnet continual-learning run, reported after every task.

Each report carries a checkpoint (the trainer's own task-boundary checkpoint), so a
failed, preempted or restored trial continues at its last finished task, not at task 0.
The trainer itself knows nothing of Ray: ``TuneReporter`` is just a trainer callback.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from hnet.data import load_benchmark
from hnet.trainer import Callback, resolve_device, train

from .search import train_config_of


def trial_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Tune metrics after a task: running means over the tasks learned so far."""
    keys = ("tasks_done", "acc_after_mean", "acc_during_mean", "forgetting", "compression_ratio", "hnet_weights",
            "target_weights", "task_embedding_weights", "num_chunks", "train_seconds", "iters_per_second",
            "val_acc_after_mean", "val_acc_during_mean")
    metrics = {k: summary[k] for k in keys if k in summary}
    metrics["acc_matrix"] = summary["acc_matrix"]  # small (tasks x tasks); the MLflow logger needs it
    return metrics


class TuneReporter(Callback):
    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
        with tempfile.TemporaryDirectory(prefix="hnet-ckpt-") as folder:
            shutil.copy(checkpoint, Path(folder) / "checkpoint.pt")
            tune.report(trial_metrics(summary), checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable. ``config``: flat TrainConfig fields (see sweeps.search)."""
    cfg = train_config_of(config)
    work = Path(tempfile.mkdtemp(prefix="hnet-trial-"))
    try:
        local_checkpoint = work / "checkpoint.pt"
        restored = tune.get_checkpoint()
        if restored:  # retry or restore: continue after the last finished task
            with restored.as_directory() as folder:
                shutil.copy(Path(folder) / "checkpoint.pt", local_checkpoint)
            resumed_at = torch.load(local_checkpoint, weights_only=True)["next_task"]
            print(f"hnet trial: resuming at task {resumed_at} of {cfg.num_tasks} (0-based)", flush=True)
        bench = load_benchmark(cfg, resolve_device(cfg.device))  # raw data cached per worker process
        train(cfg, bench, callbacks=[TuneReporter()], checkpoint=local_checkpoint, resume=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

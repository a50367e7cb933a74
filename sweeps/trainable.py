"""The Ray Tune trainable: one hnet continual-learning run, reported after every task.

Each report carries a checkpoint (the trainer's own task-boundary checkpoint), so a
failed, preempted or restored trial continues at its last finished task, not at task 0.
The trainer itself knows nothing of Ray: ``TuneReporter`` is just a trainer callback.
"""
from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import ray
import torch
from ray import tune

from hnet.config import Runtime
from hnet.data import load_benchmark
from hnet.results import RESULT_METRICS
from hnet.diagnostics import DeadUnits
from hnet.trainer import Callback, resolve_device, train

from .search import train_config_of


def trial_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Tune metrics after a task: running means over the tasks learned so far."""
    metrics = {k: summary[k] for k in ("tasks_done", *RESULT_METRICS) if k in summary}
    metrics["acc_matrix"] = summary["acc_matrix"]  # small (tasks x tasks); the MLflow logger needs it
    return metrics


class TuneReporter(Callback):
    def __init__(self, placement: dict[str, str]) -> None:
        self.placement = placement  # where the trial runs: node, device, Ray's GPU ids (MLflow tags)

    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
        with tempfile.TemporaryDirectory(prefix="hnet-ckpt-") as folder:
            shutil.copy(checkpoint, Path(folder) / "checkpoint.pt")
            tune.report(trial_metrics(summary) | self.placement, checkpoint=tune.Checkpoint.from_directory(folder))


def placement(runtime: Runtime) -> tuple[Runtime, dict[str, str]]:
    """The trial's device and CPU threads from what Ray assigned it.

    Ray exposes only the assigned GPUs (CUDA_VISIBLE_DEVICES), so ``auto`` picks the first of
    them; threads default to the trial's CPU share. A trial given a GPU on a node without CUDA
    (logical GPUs, as in tests) trains on the CPU and says so once.
    """
    context = ray.get_runtime_context()
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    cpus = context.get_assigned_resources().get("CPU", 1.0)
    if runtime.threads == 0:
        runtime = runtime.replace(threads=max(1, int(cpus)))
    device = resolve_device(runtime.device)
    if gpu_ids and device.type != "cuda":
        print(f"hnet trial: Ray assigned GPU {','.join(gpu_ids)} but CUDA is not available on this node; "
              f"training on the CPU", flush=True)
    name = f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
    return runtime, {"node_id": context.get_node_id(), "device": name, "gpu_ids": ",".join(gpu_ids)}


def stored_checkpoints(fs, trial_folder: str) -> list[tune.Checkpoint]:
    """Every checkpoint folder in a trial's storage folder (``fs``: a pyarrow file system, shared or object store)."""
    import pyarrow.fs

    found = fs.get_file_info(pyarrow.fs.FileSelector(trial_folder, allow_not_found=True))
    return [tune.Checkpoint(path=info.path, filesystem=fs) for info in found
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")]


# What torch.load raises on a checkpoint file cut off at some byte (measured on every 1/300 of one:
# EOFError when empty, "negative seek value" ValueErrors, zip RuntimeErrors); a node killed while
# it copies a checkpoint into the trial folder leaves such a file.
UNREADABLE = (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError)


def read_next_task(path: Path) -> int | None:
    """The next task a trainer checkpoint file resumes at, or None when it cannot be read."""
    try:
        return int(torch.load(path, weights_only=True)["next_task"])
    except UNREADABLE:
        return None


def newest_readable(candidates: Iterable[tune.Checkpoint | None],
                    local_copy: Path | None = None) -> tuple[tune.Checkpoint | None, int | None]:
    """The checkpoint with the most finished tasks among ``candidates`` and the task it resumes at
    ((None, None) when none can be read); with ``local_copy`` its file is copied there."""
    best, best_next = None, None
    for checkpoint in filter(None, candidates):
        try:
            with checkpoint.as_directory() as folder:
                next_task = read_next_task(Path(folder) / "checkpoint.pt")
                if next_task is None:
                    print(f"hnet trial: skipped the unreadable checkpoint {checkpoint.path}", flush=True)
                elif best_next is None or next_task > best_next:
                    best, best_next = checkpoint, next_task
                    if local_copy:
                        shutil.copy(Path(folder) / "checkpoint.pt", local_copy)
        except OSError:  # a checkpoint folder that vanished or cannot be fetched
            continue
    return best, best_next


def restore_latest(local_checkpoint: Path) -> int | None:
    """Copy the checkpoint with the most finished tasks to ``local_checkpoint``; its next task, or None.

    Tune hands back the checkpoint its experiment state recorded. A driver killed between two
    saves of that state recorded an older one than the trial folder holds, so look there too.
    """
    storage = tune.get_context().get_storage()
    stored = stored_checkpoints(storage.storage_filesystem, storage.trial_fs_path)
    return newest_readable([tune.get_checkpoint(), *stored], local_checkpoint)[1]


def run_trial(config: dict[str, Any], runtime: dict[str, Any] | None = None) -> None:
    """Tune function trainable. ``config``: flat TrainConfig fields (see sweeps.search); ``runtime``:
    the spec's Runtime fields (bound with ``tune.with_parameters``)."""
    cfg = train_config_of(config)
    work = Path(tempfile.mkdtemp(prefix="hnet-trial-"))
    try:
        local_checkpoint = work / "checkpoint.pt"
        resumed_at = restore_latest(local_checkpoint)  # retry or restore: continue after the last finished task
        if resumed_at is not None:
            print(f"hnet trial: resuming at task {resumed_at} of {cfg.num_tasks} (0-based)", flush=True)
        run, where = placement(Runtime.from_dict(runtime or {}))
        bench = load_benchmark(cfg, resolve_device(run.device), run.data_root)  # raw data cached per worker process
        reporter = TuneReporter(where)
        result = train(cfg, bench, callbacks=[reporter, DeadUnits()], checkpoint=local_checkpoint, resume=True, runtime=run)
        if resumed_at == cfg.num_tasks:
            # Every task had finished before the restart, but the driver died before it saw the last
            # report: report it again, or Tune ends the trial with its older result (a "pruned" run).
            reporter.on_task_end(cfg.num_tasks - 1, result, local_checkpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""The Ray Tune trainable: one hnet continual-learning run, reported after every task.

Each report carries a checkpoint (the trainer's own task-boundary checkpoint), so a
failed, preempted or restored trial continues at its last finished task, not at task 0; the
trial deletes its older checkpoints once a newer one is stored. A finished trial's checkpoint
is replaced by a *receipt* (``write_receipt``: its final result, no weights) unless the spec keeps
it, so a sweep of thousands of trials leaves kilobytes per trial. The trainer itself knows nothing
of Ray: ``TuneReporter`` is just a trainer callback.
"""
from __future__ import annotations

import io
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow.fs
import ray
import torch
from ray import tune

from hnet.config import Runtime
from hnet.data import load_benchmark
from hnet.results import RESULT_METRICS
from hnet.diagnostics import DeadUnits
from hnet.trainer import Callback, resolve_device, train

from .record import from_tune_config, task_result

CHECKPOINT_FILE = "checkpoint.pt"
RECEIPT_KEYS = ("tasks_done", *RESULT_METRICS, "acc_matrix", "node_id", "device", "gpu_ids")  # what a re-report needs


class TuneReporter(Callback):
    def __init__(self, placement: dict[str, str]) -> None:
        self.placement = placement  # where the trial runs: node, device, Ray's GPU ids (MLflow tags)

    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
        report_with_file(task_result(summary) | self.placement, checkpoint)


def report_with_file(metrics: dict[str, Any], checkpoint: Path) -> None:
    """Report to Tune with ``checkpoint`` (a file) as the trial's new checkpoint, then delete the trial's
    other checkpoints: Tune has stored the new one when ``report`` returns (and keeps every checkpoint
    otherwise: its own ``num_to_keep`` forces a save of the whole experiment state at every checkpoint).
    By name, not by index: a resumed trial's folder can hold checkpoints of higher index than the one
    Tune numbers next."""
    with tempfile.TemporaryDirectory(prefix="hnet-ckpt-") as folder:
        shutil.copy(checkpoint, Path(folder) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    storage = tune.get_context().get_storage()
    fs, stored = storage.storage_filesystem, f"{storage.trial_fs_path}/{storage.checkpoint_dir_name}"
    for old in stored_checkpoints(fs, storage.trial_fs_path):
        if old.path != stored:
            fs.delete_dir(old.path)


def write_receipt(checkpoint: tune.Checkpoint, result: dict[str, Any], num_tasks: int) -> None:
    """Replace a finished trial's checkpoint by its final result, without weights (a few KB). Tune's
    saved state may still name it: a driver killed before saving the trial as finished restores the
    trial, which reports the receipt's result again (``run_trial``) instead of training anew."""
    fs = checkpoint.filesystem
    buffer = io.BytesIO()
    torch.save({"next_task": num_tasks, "final_result": {k: result[k] for k in RECEIPT_KEYS if k in result}}, buffer)
    fs.create_dir(checkpoint.path)  # (gone, if something deleted it: the receipt is a checkpoint all the same)
    with fs.open_output_stream(f"{checkpoint.path}/{CHECKPOINT_FILE}.tmp") as out:
        out.write(buffer.getvalue())
    fs.move(f"{checkpoint.path}/{CHECKPOINT_FILE}.tmp", f"{checkpoint.path}/{CHECKPOINT_FILE}")


def placement(runtime: Runtime) -> tuple[Runtime, dict[str, str]]:
    """The trial's device and CPU threads from what Ray assigned it.

    Ray exposes only the assigned GPUs (CUDA_VISIBLE_DEVICES), so ``auto`` picks the first of
    them; threads default to the trial's CPU share. A trial given a GPU on a node without CUDA
    (logical GPUs, as in tests) trains on the CPU and says so once.
    """
    context = ray.get_runtime_context()
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    runtime = runtime.with_cpu_share(context.get_assigned_resources().get("CPU", 1.0))
    device = resolve_device(runtime.device)
    if gpu_ids and device.type != "cuda":
        print(f"hnet trial: Ray assigned GPU {','.join(gpu_ids)} but CUDA is not available on this node; "
              f"training on the CPU", flush=True)
    name = f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
    return runtime, {"node_id": context.get_node_id(), "device": name, "gpu_ids": ",".join(gpu_ids)}


def stored_checkpoints(fs, trial_folder: str) -> list[tune.Checkpoint]:
    """Every checkpoint folder in a trial's storage folder (``fs``: a pyarrow file system, shared or object store)."""
    found = fs.get_file_info(pyarrow.fs.FileSelector(trial_folder, allow_not_found=True))
    return [tune.Checkpoint(path=info.path, filesystem=fs) for info in found
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")]


# What torch.load raises on a checkpoint file cut off at some byte (measured on every 1/300 of one:
# EOFError when empty, "negative seek value" ValueErrors, zip RuntimeErrors); a node killed while
# it copies a checkpoint into the trial folder leaves such a file.
UNREADABLE = (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError)


def read_next_task(path: Path) -> int | None:
    """The next task a trainer checkpoint file (or a receipt) resumes at, or None when it cannot be read."""
    try:
        return int(torch.load(path, weights_only=True)["next_task"])
    except UNREADABLE:
        return None


def read_receipt(path: Path) -> dict[str, Any] | None:
    """The final result a receipt holds (None: a trainer checkpoint)."""
    return torch.load(path, weights_only=True).get("final_result")


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


def run_trial(config: dict[str, Any], base: dict[str, str], runtime: dict[str, Any]) -> None:
    """Tune function trainable. ``config``: the trial's fields that differ from the sweep's ``base``
    (``sweeps.record.to_tune_config``); ``base`` and ``runtime`` (the spec's Runtime fields) are bound
    with ``tune.with_parameters``."""
    cfg = from_tune_config(config, base)
    work = Path(tempfile.mkdtemp(prefix="hnet-trial-"))
    try:
        local_checkpoint = work / CHECKPOINT_FILE
        resumed_at = restore_latest(local_checkpoint)  # retry or restore: continue after the last finished task
        receipt = read_receipt(local_checkpoint) if resumed_at is not None else None
        if receipt is not None:  # it had finished; the driver died before saving that: report it again
            report_with_file(receipt, local_checkpoint)
            return
        if resumed_at is not None:
            print(f"hnet trial: resuming at task {resumed_at} of {cfg.num_tasks} (0-based)", flush=True)
        run, where = placement(Runtime.from_dict(runtime))
        bench = load_benchmark(cfg, resolve_device(run.device), run.data_root)  # raw data cached per worker process
        reporter = TuneReporter(where)
        result = train(cfg, bench, callbacks=[reporter, DeadUnits()], checkpoint=local_checkpoint, resume=True, runtime=run)
        if resumed_at == cfg.num_tasks:
            # Every task had finished before the restart, but the driver died before it saw the last
            # report: report it again, or Tune ends the trial with its older result (a "pruned" run).
            reporter.on_task_end(cfg.num_tasks - 1, result, local_checkpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)

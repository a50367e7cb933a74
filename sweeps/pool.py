"""The pool backend of `hnet sweep run`: a spec's trials on this machine, without Ray.

For one machine, typically a GPU box that has PyTorch but not Ray, Optuna or MLflow:
``workers`` processes each train one trial after another (data loaded once per process),
sharing the machine's cores or its GPU. The trials are the spec's own (``sweeps.space``: grid or
random search, the same trials in the same order as the Ray backend). Each finished trial appends
its result record (``hnet.trainer.train``'s result, one JSON line) to ``results``
(``sweeps.results_file``); a trial already in that file is not run again, and a trial cut off (time
limit of a session, SIGTERM, a crash) resumes after its last finished task from the checkpoint it
left in ``checkpoints`` (deleted once its record is written), so a study continues where it stopped
by running the same command again (or the Ray backend with the same ``--results``).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hnet.config import Runtime, TrainConfig

from .results_file import done_configs
from .space import config_id, config_key, plan, trials
from .spec import SweepSpec


def checkpoint_path(checkpoints: Path, cfg: TrainConfig) -> Path:
    """Where a trial of the pool keeps its progress: one file per configuration."""
    return checkpoints / f"{config_id(cfg)}.pt"


def _run_trial(values: dict[str, Any], runtime: dict[str, Any], label: str, checkpoint: str) -> dict[str, Any]:
    """In a worker process: train one trial (resuming from ``checkpoint`` if it holds finished tasks),
    a line per finished task on stdout."""
    import torch

    from hnet.diagnostics import DeadUnits
    from hnet.trainer import Callback, train

    class TaskLine(Callback):
        def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
            print(f"  {label}: task {task + 1}/{values['num_tasks']} done, acc_after_mean "
                  f"{summary['acc_after_mean']:.2f}, {summary['train_seconds']:.0f} s", flush=True)

    result = train(TrainConfig.from_dict(values), runtime=Runtime.from_dict(runtime),
                   callbacks=[TaskLine(), DeadUnits()], checkpoint=checkpoint, resume=True)
    result["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() and \
        runtime["device"] != "cpu" else "cpu"
    return result


def run_pool(spec: SweepSpec, results: Path, workers: int, time_limit: float = 0) -> tuple[int, int, int]:
    """Run the spec's trials not yet in ``results``, ``workers`` at a time. With ``time_limit``
    (seconds) no trial starts after it (running ones finish). Returns (finished, failed, not started);
    a failed trial is reported and not written, so running again retries it. Trials checkpoint after
    every task into ``<results name>.checkpoints/`` beside ``results``."""
    cores = len(os.sched_getaffinity(0))
    runtime = spec.runtime.replace(threads=spec.runtime.threads or max(1, cores // workers)).to_dict()
    done_before = done_configs(results)
    todo = [c for c in trials(spec, plan(spec).configs) if config_key(c) not in done_before]
    shown = [k for k in spec.space if k != "chunk_size"] + ["chunk_size", "seed"]
    print(f"{spec.name}: {len(todo)} trials to run ({len(done_before)} already in {results}), {workers} at a time, "
          f"device {runtime['device']}, {runtime['threads']} thread(s) each", flush=True)

    def stop(signum: int, frame: object) -> None:  # else the workers run on as orphans, each finishing its trial
        for child in mp.active_children():
            child.terminate()
        os._exit(128 + signum)  # every finished trial is already written and flushed

    signal.signal(signal.SIGTERM, stop)
    results.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = results.parent / f"{results.stem}.checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    started, finished, failed = time.perf_counter(), 0, 0
    queue = iter(enumerate(todo))
    running: dict[cf.Future, tuple[str, Path]] = {}  # a submitted trial's label and checkpoint
    with open(results, "a") as out, cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        def submit() -> cf.Future | None:
            if time_limit and time.perf_counter() - started >= time_limit:
                return None
            i, cfg = next(queue, (None, None))
            if cfg is None:
                return None
            label = f"trial {i + 1}/{len(todo)} " + " ".join(f"{k}={getattr(cfg, k)}" for k in shown)
            checkpoint = checkpoint_path(checkpoints, cfg)
            try:
                future = pool.submit(_run_trial, cfg.to_dict(), runtime, label, str(checkpoint))
            except BrokenProcessPool:  # a worker died (killed for memory?): finish what runs, start nothing
                return None
            print(f"  {label}: " + ("resumed from its checkpoint" if checkpoint.exists() else "started"), flush=True)
            running[future] = label, checkpoint
            return future

        pending = {f for f in (submit() for _ in range(workers)) if f}
        while pending:
            ready, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in ready:
                label, checkpoint = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # e.g. TrainingDiverged: the other trials go on
                    failed += 1
                    reason = (str(exc).splitlines() or [""])[0]
                    print(f"  {label}: failed: {type(exc).__name__}: {reason}", flush=True)
                    pending |= {f for f in [submit()] if f}
                    continue
                out.write(json.dumps(result) + "\n")
                out.flush()
                checkpoint.unlink(missing_ok=True)  # the record holds it all now
                finished += 1
                print(f"[{finished + failed} done, {time.perf_counter() - started:.0f} s] {label}: "
                      f"acc_after_mean {result['acc_after_mean']:.2f}, compression_ratio "
                      f"{result['compression_ratio']:.4f}", flush=True)
                pending |= {f for f in [submit()] if f}
    left = len(todo) - finished - failed
    print(f"{finished} trials finished, {failed} failed, {left} not started, in {time.perf_counter() - started:.0f} s"
          + ("; run the same command again to continue" if left or failed else ""), flush=True)
    return finished, failed, left


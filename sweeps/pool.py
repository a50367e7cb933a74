"""The pool backend of `hnet sweep run`: a spec's trials on this machine, without Ray.

For one machine, typically a GPU box that has PyTorch but perhaps not Ray, Optuna or MLflow:
``workers`` processes each train one trial after another (data loaded once per process),
sharing the machine's cores or its GPU. The trials are the spec's own (``sweeps.space``: grid or
random search, the same trials in the same order as the Ray backend). Each finished trial appends
its result record (``hnet.trainer.train``'s result, one JSON line) to ``results``
(``sweeps.results_file``); a trial already in that file is not run again, and a trial cut off (time
limit of a session, SIGTERM, a crash) resumes after its last finished task from the checkpoint it
left in ``checkpoints`` (deleted once its record is written), so a study continues where it stopped
by running the same command again (or the Ray backend with the same ``--results``). Where MLflow
is installed, the trials are recorded in the spec's tracking store as well, exactly as a Ray sweep
records them (``sweeps.mlflow_logging.TrialRecorder``): ``hnet ui`` and ``hnet report`` show a pool
study like any other.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import queue
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hnet.config import Runtime, TrainConfig

from .results_file import done_configs
from .record import task_result, to_tune_config
from .space import config_id, group_and_seed, plan, trials
from .spec import SweepSpec


def _run_trial(values: dict[str, Any], runtime: dict[str, Any], label: str, checkpoint: str, trial_id: str,
               progress: Any = None) -> dict[str, Any]:
    """In a worker process: train one trial (resuming from ``checkpoint`` if it holds finished tasks),
    a line per finished task on stdout and, for the MLflow record, its result on ``progress``."""
    import torch

    from hnet.diagnostics import DeadUnits
    from hnet.trainer import Callback, train

    class TaskLine(Callback):
        def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None:
            print(f"  {label}: task {task + 1}/{values['num_tasks']} done, acc_after_mean "
                  f"{summary['acc_after_mean']:.2f}, {summary['train_seconds']:.0f} s", flush=True)
            if progress is not None:
                progress.put((trial_id, task_result(summary)))

    result = train(TrainConfig.from_dict(values), runtime=Runtime.from_dict(runtime),
                   callbacks=[TaskLine(), DeadUnits()], checkpoint=checkpoint, resume=True)
    result["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() and \
        runtime["device"] != "cpu" else "cpu"
    return result


def open_record(spec: SweepSpec, results: Path):
    """The study's MLflow sweep (``sweeps.mlflow_logging.pool_sweep``), or None where MLflow is not installed."""
    try:
        from .mlflow_logging import pool_sweep
        from .store import ensure_store
    except ImportError:
        print(f"hnet sweep: MLflow is not installed: the trials are recorded in {results} only", flush=True)
        return None
    ensure_store(spec.tracking_uri)
    return pool_sweep(spec, results)


def run_pool(spec: SweepSpec, results: Path, workers: int, time_limit: float = 0) -> tuple[int, int, int]:
    """Run the spec's trials not yet in ``results``, ``workers`` at a time. With ``time_limit``
    (seconds) no trial starts after it (running ones finish). Returns (finished, failed, not started);
    a failed trial is reported and not written, so running again retries it. Trials checkpoint after
    every task into ``<results name>.checkpoints/`` beside ``results``. Where MLflow is installed the
    trials are also recorded in the spec's store, as a Ray sweep records them."""
    runtime = spec.runtime.with_cpu_share(len(os.sched_getaffinity(0)) / workers).to_dict()
    done_before = done_configs(results)
    planned = plan(spec)
    todo = trials(spec, planned.configs, done_before)
    results.parent.mkdir(parents=True, exist_ok=True)
    sweep = open_record(spec, results) if todo else None  # (recorder, file naming the MLflow sweep) or None
    print(f"{spec.name}: {len(todo)} trials to run ({len(done_before)} already in {results}), {workers} at a time, "
          f"device {runtime['device']}, {runtime['threads']} thread(s) each", flush=True)
    pool = Pool(spec, todo, results, runtime, time_limit, sweep[0] if sweep else None)
    finished, failed = pool.run(workers)
    left = len(todo) - finished - failed
    if sweep:
        sweep[0].flush(table=True)
        if not left and not failed:  # the study is whole: its sweep ends (a later run starts a new one)
            from .mlflow_logging import finish_parent_run
            from .store import analyze_store

            finish_parent_run(spec.tracking_uri, sweep[0].parent_run_id, {
                "trials": len(done_before) + finished, "trials_completed": finished, "trials_failed": failed,
                "sweep_wall_seconds": pool.seconds(), **planned.stats()})
            sweep[1].unlink()
            analyze_store(spec.tracking_uri)
    print(f"{finished} trials finished, {failed} failed, {left} not started, in {pool.seconds():.0f} s"
          + ("; run the same command again to continue" if left or failed else ""), flush=True)
    return finished, failed, left


class Pool:
    """The pool's loop: keeps ``workers`` trials running (none started after ``time_limit``), writes each
    finished one to ``results`` and, with a ``recorder``, reports every task and end to MLflow."""

    def __init__(self, spec: SweepSpec, todo: list[TrainConfig], results: Path, runtime: dict[str, Any],
                 time_limit: float, recorder: Any = None) -> None:
        self.spec, self.results, self.runtime, self.time_limit, self.recorder = spec, results, runtime, time_limit, recorder
        self.queue = iter(enumerate(todo))
        self.total = len(todo)
        self.base = spec.base.to_flat_params()
        self.checkpoints = results.parent / f"{results.stem}.checkpoints"  # <trial id>.pt: a trial's progress
        self.shown = [k for k in spec.space if k != "chunk_size"] + ["chunk_size", "seed"]  # in a trial's label
        self.progress = None  # with a recorder: the queue the workers send each finished task's result on
        self.running: dict[cf.Future, tuple[str, str, Path]] = {}  # a submitted trial's label, id and checkpoint
        self.tune_configs: dict[str, dict[str, Any]] = {}  # trial id -> its Tune config (the record's encoding)
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def run(self, workers: int) -> tuple[int, int]:
        """Returns (finished, failed)."""
        def stop(signum: int, frame: object) -> None:  # else the workers run on as orphans, each finishing its trial
            for child in mp.active_children():
                child.terminate()
            os._exit(128 + signum)  # every finished trial is already written and flushed

        signal.signal(signal.SIGTERM, stop)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        context = mp.get_context("spawn")
        manager = context.Manager() if self.recorder else None  # workers' per-task results -> the recorder
        self.progress = manager.Queue() if manager else None
        finished = failed = 0
        try:
            with open(self.results, "a") as out, cf.ProcessPoolExecutor(workers, mp_context=context) as executor:
                pending = {f for f in (self.submit(executor) for _ in range(workers)) if f}
                while pending:
                    ready, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                    self.report_progress()
                    for future in ready:
                        if self.finish(future, out, finished + failed):
                            finished += 1
                        else:
                            failed += 1
                        pending |= {f for f in [self.submit(executor)] if f}
        finally:
            if manager:
                manager.shutdown()
        return finished, failed

    def submit(self, executor: cf.ProcessPoolExecutor) -> cf.Future | None:
        if self.time_limit and self.seconds() >= self.time_limit:
            return None
        i, cfg = next(self.queue, (None, None))
        if cfg is None:
            return None
        label = f"trial {i + 1}/{self.total} " + " ".join(f"{k}={getattr(cfg, k)}" for k in self.shown)
        trial_id = config_id(cfg)  # one per configuration and seed: its MLflow run and its checkpoint
        checkpoint = self.checkpoints / f"{trial_id}.pt"
        self.tune_configs[trial_id] = to_tune_config(cfg, self.base, *group_and_seed(self.spec, cfg))
        try:
            future = executor.submit(_run_trial, cfg.to_dict(), self.runtime, label, str(checkpoint), trial_id,
                                     self.progress)
        except BrokenProcessPool:  # a worker died (killed for memory?): finish what runs, start nothing
            return None
        print(f"  {label}: " + ("resumed from its checkpoint" if checkpoint.exists() else "started"), flush=True)
        self.running[future] = label, trial_id, checkpoint
        return future

    def report_progress(self) -> None:
        """Hand the tasks the workers finished to the recorder."""
        while self.progress is not None:
            try:
                trial_id, result = self.progress.get_nowait()
            except queue.Empty:
                return
            self.recorder.result(trial_id, self.tune_configs[trial_id], result)

    def finish(self, future: cf.Future, out: Any, ended_before: int) -> bool:
        """Write an ended trial (its result line, its end in MLflow); returns whether it finished."""
        label, trial_id, checkpoint = self.running.pop(future)
        try:
            result = future.result()
        except Exception as exc:  # e.g. TrainingDiverged: the other trials go on
            reason = (str(exc).splitlines() or [""])[0]
            print(f"  {label}: failed: {type(exc).__name__}: {reason}", flush=True)
            if self.recorder:
                self.recorder.failed(trial_id, self.tune_configs[trial_id], None)
            return False
        out.write(json.dumps(result) + "\n")
        out.flush()
        checkpoint.unlink(missing_ok=True)  # the record holds it all now
        if self.recorder:
            self.recorder.completed(trial_id, self.tune_configs[trial_id], task_result(result))
        print(f"[{ended_before + 1} done, {self.seconds():.0f} s] {label}: acc_after_mean {result['acc_after_mean']:.2f}, "
              f"compression_ratio {result['compression_ratio']:.4f}", flush=True)
        return True

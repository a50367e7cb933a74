"""Run a sweep: Ray Tune schedules trials, Optuna searches, MLflow records.

A sweep lives in ``<storage_path>/<sweep_id>`` (Tune's experiment folder, holding the
trial checkpoints and ``hnet_sweep.json`` with the MLflow parent run id). ``resume`` finds
the newest unfinished sweep of a spec there and lets Tune finish it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .spec import SpecError, SweepSpec

STATE_FILE = "hnet_sweep.json"
SEARCH_STATS = "search_stats.json"  # architectures drawn / rejected by the compression filter

# Tune warns on every checkpoint of short trials; a sweep checkpoints at every task by design.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table: trial status and our metrics


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _storage_root(spec: SweepSpec) -> str:
    """Local paths become absolute (Tune changes into trial folders); URIs pass through."""
    return spec.storage_path if "://" in spec.storage_path else str(Path(spec.storage_path).resolve())


def _read_state(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / STATE_FILE).read_text())


def _sweep_dirs(spec: SweepSpec) -> list[Path]:
    root = Path(_storage_root(spec))
    if "://" in str(spec.storage_path) or not root.exists():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and (d / STATE_FILE).exists()
             and _read_state(d).get("name") == spec.name]
    return sorted(found, key=lambda d: d.name)


def init_ray(address: str | None, check_for: SweepSpec | None = None) -> None:
    """Start or attach Ray; with ``check_for``, fail if no node can hold one of its trials."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # local: a private Ray instance, dashboard off, loopback only
            ray.init(include_dashboard=False, log_to_driver=True)
    if check_for is not None:
        check_resources(check_for)


def check_resources(spec: SweepSpec) -> None:
    """Fail at once, rather than leave trials PENDING forever, when no alive node can hold one trial.

    (A cluster with an autoscaler may add such nodes later: ``--no-resource-check``.)
    """
    import ray

    need = {"CPU": spec.cpus_per_trial, "GPU": spec.gpus_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return
    have = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes) or "no nodes"
    raise SpecError(f"no node of the cluster can run a trial: each asks for {spec.cpus_per_trial:g} CPU and "
                    f"{spec.gpus_per_trial:g} GPU, the nodes have {have} (resources in the spec; "
                    f"--no-resource-check waits for an autoscaler instead)")


def run_sweep(spec: SweepSpec, address: str | None = None, resume: bool = False,
              resource_check: bool = True) -> dict[str, Any]:
    """Run (or resume) a sweep to the end; returns a summary with the best trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .mlflow_logging import MLflowTrialLogger, finish_parent_run, start_parent_run
    from .search import SweepSearcher
    from .trainable import run_trial
    from .tune_state import STATE_BACKUP, ExperimentStateBackup, repair_tune_state

    storage = _storage_root(spec)
    started = time.time()
    trainable = tune.with_resources(run_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    if resume:
        candidates = [d for d in _sweep_dirs(spec) if not _read_state(d).get("finished")]
        if not candidates:
            raise SpecError(f"--resume: no unfinished sweep named {spec.name!r} under {storage}")
        sweep_dir = candidates[-1]
        state = _read_state(sweep_dir)
        init_ray(address, spec if resource_check else None)
        if repair_tune_state(sweep_dir):
            print(f"hnet sweep: Tune's experiment state was cut off when the driver died; "
                  f"restored its last complete copy from {sweep_dir / STATE_BACKUP}", flush=True)
        if not tune.Tuner.can_restore(str(sweep_dir)):
            raise SpecError(f"--resume: {sweep_dir} holds no restorable Tune experiment")
        print(f"hnet sweep: resuming {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        init_ray(address, spec if resource_check else None)  # before the MLflow parent run and sweep folder
        parent_run_id = start_parent_run(spec, sweep_id, storage)
        state = {"name": spec.name, "sweep_id": sweep_id, "parent_run_id": parent_run_id, "source": spec.source,
                 "tracking_uri": spec.tracking_uri, "experiment": spec.experiment, "finished": False}
        sweep_dir = Path(storage) / sweep_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        searcher = ConcurrencyLimiter(SweepSearcher(spec, stats_file=str(sweep_dir / SEARCH_STATS)),
                                      max_concurrent=spec.max_concurrent)
        scheduler = None
        if spec.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="tasks_done", metric=spec.metric, mode=spec.mode,
                                      max_t=spec.base.num_tasks, grace_period=spec.asha_grace_tasks,
                                      reduction_factor=spec.asha_reduction_factor)
        searched = [k for k in spec.space if k != "hnet_hidden"] + ["hnet_hidden"] * ("hnet_hidden" in spec.space)
        reporter = tune.CLIReporter(
            metric_columns={"tasks_done": "tasks", "acc_after_mean": "acc_after", "compression_ratio": "compression"},
            parameter_columns=searched + ["seed"], max_report_frequency=15, sort_by_metric=False)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_trials,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=sweep_id, storage_path=storage, progress_reporter=reporter, verbose=1,
                callbacks=[MLflowTrialLogger(spec, parent_run_id, sweep_id), ExperimentStateBackup()],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        (sweep_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    results = tuner.fit()
    frame = results.get_dataframe()
    errors = len(results.errors)
    done = int((frame["tasks_done"] == spec.base.num_tasks).sum()) if "tasks_done" in frame else 0
    stats = {"trials": len(results), "trials_completed": done, "trials_failed": errors,
             "trials_pruned": len(results) - done - errors, "sweep_wall_seconds": time.time() - started}
    if (sweep_dir / SEARCH_STATS).exists():
        stats.update(json.loads((sweep_dir / SEARCH_STATS).read_text()))
    # finished: every trial exists and ended. The in-memory ResultGrid calls interrupted trials
    # terminated; the persisted experiment state keeps them PENDING/RUNNING, so ask it.
    statuses = [t.status for t in tune.ExperimentAnalysis(results.experiment_path).trials]
    if len(statuses) >= spec.num_trials and all(s in ("TERMINATED", "ERROR") for s in statuses):
        finish_parent_run(spec, state["parent_run_id"], stats)
        state["finished"] = True
        (sweep_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    best = []  # among trials that learned every task
    completed = frame[frame["tasks_done"] == spec.base.num_tasks] if "tasks_done" in frame else frame.iloc[:0]
    if len(completed) and spec.metric in completed:
        cols = [c for c in completed.columns if c.startswith("config/")]
        top = completed.sort_values(spec.metric, ascending=spec.mode == "min").head(5)
        best = [{"trial_id": r["trial_id"], spec.metric: r[spec.metric], "compression_ratio": r.get("compression_ratio"),
                 **{c[len("config/"):]: r[c] for c in cols}} for _, r in top.iterrows()]
    return {"sweep_dir": str(sweep_dir), "stats": stats, "best": best, "state": state}

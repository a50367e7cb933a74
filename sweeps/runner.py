"""Run a sweep: Ray Tune schedules trials, Optuna searches, MLflow records.

A sweep lives in ``<storage_path>/<sweep_id>`` (Tune's experiment folder, holding the
trial checkpoints and ``hnet_sweep.json`` with the MLflow parent run id). ``resume`` finds
the newest unfinished sweep of a spec there and lets Tune finish it.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .spec import SpecError, SweepSpec
from .store import ensure_store

STATE_FILE = "hnet_sweep.json"  # name, sweep_id, parent_run_id, tracking_uri, finished: all read on resume
SEARCH_STATS = "search_stats.json"  # architectures drawn / rejected by the compression filter
TUNE_ENV = {
    # Tune warns on every checkpoint of short trials; a sweep checkpoints at every task by design.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter interface (our ProgressLine)
}
LOG_FILE = "sweep.log"  # Ray's, Tune's, MLflow's and the trials' output (unless --verbose)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _storage_root(spec: SweepSpec) -> str:
    """Local paths become absolute (Tune changes into trial folders); URIs pass through."""
    return spec.storage_path if "://" in spec.storage_path else str(Path(spec.storage_path).resolve())


def _read_state(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / STATE_FILE).read_text())


def _write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    tmp = sweep_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, sweep_dir / STATE_FILE)


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
        else:  # local: a private Ray instance, dashboard off, on loopback only
            ray.init(include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1")
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
              resource_check: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep to the end; returns a summary with the best trials.

    Unless ``verbose``, everything Ray, Tune, MLflow and the trials print goes to
    ``<sweep folder>/sweep.log`` and the terminal shows one progress line (``sweeps.console``).
    """
    from .console import Console, terminal

    started = time.time()
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    found = find_unfinished(spec) if resume else None  # before Ray starts: a wrong --resume fails at once
    console, sweep_dir = None, None
    if not verbose:
        console = Console()
        console.log_to(Path(tempfile.mkstemp(prefix="hnet-sweep-", suffix=".log")[1]))
    try:
        init_ray(address, spec if resource_check else None)  # before anything is written
        ensure_store(spec.tracking_uri)  # created, or a broken store reported, before Tune starts
        sweep_dir, state = found or create_sweep(spec)
        if console:
            console.log_to(sweep_dir / LOG_FILE)
            print(f"hnet sweep: Ray, Tune, MLflow and trial output go to {sweep_dir / LOG_FILE} (--verbose: here)",
                  file=terminal(), flush=True)
        tuner = restore_tuner(spec, sweep_dir) if found else None
        if tuner is None:
            tuner = build_tuner(spec, sweep_dir, state)
        results = tuner.fit()
        return finalise(spec, sweep_dir, state, results, started)
    finally:
        if console:
            import ray

            ray.shutdown()  # its log monitor flushes last lines at shutdown: into the log, not the terminal
            console.restore(keep_log=sweep_dir is not None)


def _trainable(spec: SweepSpec):
    from ray import tune

    from .trainable import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, runtime=spec.runtime.to_dict()),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def find_unfinished(spec: SweepSpec) -> tuple[Path, dict[str, Any]]:
    """The newest unfinished sweep of this spec in its storage, and its state."""
    candidates = [d for d in _sweep_dirs(spec) if not _read_state(d).get("finished")]
    if not candidates:
        raise SpecError(f"--resume: no unfinished sweep named {spec.name!r} under {_storage_root(spec)}")
    state = _read_state(candidates[-1])
    if state["tracking_uri"] != spec.tracking_uri:
        raise SpecError(f"--resume: the sweep records to {state['tracking_uri']}, not {spec.tracking_uri}: "
                        f"resume it with --tracking-uri {state['tracking_uri']}")
    return candidates[-1], state


def restore_tuner(spec: SweepSpec, sweep_dir: Path):
    """Tune's experiment in ``sweep_dir`` restored, or None when the driver died before Tune saved it
    (the sweep then starts again in the same folder and MLflow run; runs it began are removed at the end)."""
    from ray import tune

    from .console import terminal
    from .tune_state import STATE_BACKUP, repair_tune_state, restore_deleted_checkpoints

    if repair_tune_state(sweep_dir):
        print(f"hnet sweep: Tune's experiment state was cut off when the driver died; "
              f"restored its last complete copy from {sweep_dir / STATE_BACKUP}", file=terminal(), flush=True)
    if not tune.Tuner.can_restore(str(sweep_dir)):
        print(f"hnet sweep: {sweep_dir} was stopped before Tune saved any trial; starting it again",
              file=terminal(), flush=True)
        return None
    moved = restore_deleted_checkpoints(sweep_dir)
    if moved:
        print(f"hnet sweep: {moved} trial(s) resume from a newer checkpoint than Tune's state names (the driver "
              f"died before Tune saved it)", file=terminal(), flush=True)
    print(f"hnet sweep: resuming {sweep_dir}", file=terminal(), flush=True)
    return tune.Tuner.restore(str(sweep_dir), trainable=_trainable(spec), resume_unfinished=True, resume_errored=True)


def create_sweep(spec: SweepSpec) -> tuple[Path, dict[str, Any]]:
    """The MLflow parent run and the sweep folder with its state file."""
    from .mlflow_logging import start_parent_run

    stamp = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(_storage_root(spec)).mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):  # two sweeps of one spec started in the same second get their own folders
        sweep_id = stamp if n == 1 else f"{stamp}-{n}"
        sweep_dir = Path(_storage_root(spec)) / sweep_id
        try:
            sweep_dir.mkdir()  # atomic: exactly one sweep creates each folder
            break
        except FileExistsError:
            pass
    parent_run_id = start_parent_run(spec, sweep_id, _storage_root(spec))
    state = {"name": spec.name, "sweep_id": sweep_id, "parent_run_id": parent_run_id,
             "tracking_uri": spec.tracking_uri, "finished": False}
    _write_state(sweep_dir, state)
    return sweep_dir, state


def build_tuner(spec: SweepSpec, sweep_dir: Path, state: dict[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .console import ProgressLine
    from .mlflow_logging import MLflowTrialLogger
    from .search import SweepSearcher
    from .tune_state import ExperimentStateBackup

    searcher = ConcurrencyLimiter(SweepSearcher(spec, stats_file=str(sweep_dir / SEARCH_STATS)),
                                  max_concurrent=spec.max_concurrent)
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="tasks_done", metric=spec.metric, mode=spec.mode,
                                  max_t=spec.base.num_tasks, grace_period=spec.asha_grace_tasks,
                                  reduction_factor=spec.asha_reduction_factor)
    reporter = ProgressLine(spec.num_trials, spec.metric, spec.mode, spec.base.num_tasks)
    return tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_trials,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=state["sweep_id"], storage_path=_storage_root(spec), progress_reporter=reporter, verbose=1,
            callbacks=[MLflowTrialLogger(spec, state["parent_run_id"], state["sweep_id"]), ExperimentStateBackup()],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def finalise(spec: SweepSpec, sweep_dir: Path, state: dict[str, Any], results, started: float) -> dict[str, Any]:
    """Counts, the parent run closed when every trial ended, the best trials."""
    from ray import tune

    from .console import terminal
    from .mlflow_logging import finish_parent_run, remove_orphan_runs

    frame = results.get_dataframe()
    errors = len(results.errors)
    done = int((frame["tasks_done"] == spec.base.num_tasks).sum()) if "tasks_done" in frame else 0
    stats = {"trials": len(results), "trials_completed": done, "trials_failed": errors,
             "trials_pruned": len(results) - done - errors, "sweep_wall_seconds": time.time() - started}
    if (sweep_dir / SEARCH_STATS).exists():
        stats.update(json.loads((sweep_dir / SEARCH_STATS).read_text()))
    # finished: every trial exists and ended. The in-memory ResultGrid calls interrupted trials
    # terminated; the persisted experiment state keeps them PENDING/RUNNING, so ask it.
    trials = tune.ExperimentAnalysis(results.experiment_path).trials
    if len(trials) >= spec.num_trials and all(t.status in ("TERMINATED", "ERROR") for t in trials):
        removed = remove_orphan_runs(state["tracking_uri"], spec.experiment, state["sweep_id"],
                                     {t.trial_id for t in trials})
        if removed:
            print(f"hnet sweep: removed {removed} MLflow run(s) of trials lost when the driver was killed "
                  f"(their configurations ran again)", file=terminal(), flush=True)
        finish_parent_run(state["tracking_uri"], state["parent_run_id"], stats)
        state["finished"] = True
        _write_state(sweep_dir, state)
    best = []  # among trials that learned every task
    completed = frame[frame["tasks_done"] == spec.base.num_tasks] if "tasks_done" in frame else frame.iloc[:0]
    if len(completed) and spec.metric in completed:
        cols = [c for c in completed.columns if c.startswith("config/")]
        top = completed.sort_values(spec.metric, ascending=spec.mode == "min").head(5)
        best = [{"trial_id": r["trial_id"], spec.metric: r[spec.metric], "compression_ratio": r.get("compression_ratio"),
                 **{c[len("config/"):]: r[c] for c in cols}} for _, r in top.iterrows()]
    return {"sweep_dir": str(sweep_dir), "stats": stats, "best": best, "state": state}

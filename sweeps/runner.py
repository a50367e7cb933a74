"""Run a sweep: Ray Tune schedules trials, Optuna searches, MLflow records.

A sweep lives in ``<storage_path>/<sweep_id>`` (Tune's experiment folder, holding the
trial checkpoints and ``hnet_sweep.json`` with the MLflow parent run id). ``resume`` finds
the newest unfinished sweep of a spec there and lets Tune finish it.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .spec import SpecError, SweepSpec
from .store import analyze_store, ensure_store

STATE_FILE = "hnet_sweep.json"  # name, sweep_id, parent_run_id, tracking_uri, finished, base, trials, results
SEARCH_STATS = "search_stats.json"  # architectures drawn / rejected by the compression filter
TUNE_ENV = {
    # Tune warns on every checkpoint of short trials; a sweep checkpoints at every task by design.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter interface (our ProgressLine)
    # Tune's CSV/JSON/TensorBoard files per trial: MLflow is the record (they cost driver time and disk per trial)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
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
              resource_check: bool = True, verbose: bool = False, results: Path | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep to the end; returns a summary with the best trials. With ``results`` (a
    JSON-lines file, ``sweeps.results_file``), trials whose configuration it holds are not trained and
    every completed trial is appended to it at the end.

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
        from .mlflow_logging import check_access

        check_access(spec)  # a server that refuses this user stops the sweep here, before Ray and any trial
        init_ray(address, spec if resource_check else None)  # before anything is written
        ensure_store(spec.tracking_uri)  # created, or a broken store reported, before Tune starts
        sweep_dir, state = found or create_sweep(spec, results)
        if console:
            console.log_to(sweep_dir / LOG_FILE)
            print(f"hnet sweep: Ray, Tune, MLflow and trial output go to {sweep_dir / LOG_FILE} (--verbose: here)",
                  file=terminal(), flush=True)
        tuner = restore_tuner(spec, sweep_dir, state) if found else None
        if tuner is None:
            tuner = build_tuner(spec, sweep_dir, state)
        # Tune's end-of-run analysis looks for per-trial result files this sweep does not write (TUNE_ENV)
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        results = tuner.fit()
        return finalise(spec, sweep_dir, state, results, started, resumed=found is not None)
    finally:
        if console:
            import ray

            ray.shutdown()  # its log monitor flushes last lines at shutdown: into the log, not the terminal
            console.restore(keep_log=sweep_dir is not None)


def _trainable(spec: SweepSpec, base: dict[str, str]):
    from ray import tune

    from .trainable import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, base=base, runtime=spec.runtime.to_dict()),
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
    changed = sorted(k for k, v in spec.base.to_flat_params().items() if state.get("base", {}).get(k, v) != v)
    if changed:
        raise SpecError(f"--resume: the sweep ran with other base settings for {', '.join(changed)} "
                        f"(was {', '.join(state['base'][k] for k in changed)}): resume it with the same spec and --set")
    return candidates[-1], state


def restore_tuner(spec: SweepSpec, sweep_dir: Path, state: dict[str, Any]):
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
    return tune.Tuner.restore(str(sweep_dir), trainable=_trainable(spec, base_of(spec, state)),
                              resume_unfinished=True, resume_errored=True)


def num_trials(spec: SweepSpec, state: dict[str, Any]) -> int:
    """How many trials the sweep runs (a sweep begun before this was saved: the spec's)."""
    return state.get("trials", spec.num_trials)


def base_of(spec: SweepSpec, state: dict[str, Any]) -> dict[str, str]:
    """The base a sweep's Tune configs are relative to (a sweep begun before base was saved: full configs)."""
    return state.get("base", spec.base.to_flat_params())


def create_sweep(spec: SweepSpec, results: Path | None = None) -> tuple[Path, dict[str, Any]]:
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
             "tracking_uri": spec.tracking_uri, "finished": False, "base": spec.base.to_flat_params(),
             "results": str(results.resolve()) if results else None}
    _write_state(sweep_dir, state)
    return sweep_dir, state


def build_tuner(spec: SweepSpec, sweep_dir: Path, state: dict[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from .console import ProgressLine
    from .results_file import done_configs
    from .search import make_searcher
    from .tune_state import ExperimentStateBackup, FinishedCheckpoints, MLflowTrialLogger

    done = done_configs(Path(state["results"])) if state.get("results") else set()
    inner = make_searcher(spec, stats_file=str(sweep_dir / SEARCH_STATS), done=done)
    state["trials"] = inner.num_trials  # what Tune runs (a results file may hold some of the spec's trials)
    _write_state(sweep_dir, state)
    searcher = ConcurrencyLimiter(inner, max_concurrent=spec.max_concurrent)
    scheduler = None
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="tasks_done", metric=spec.metric, mode=spec.mode,
                                  max_t=spec.base.num_tasks, grace_period=spec.asha_grace_tasks,
                                  reduction_factor=spec.asha_reduction_factor)
    reporter = ProgressLine(state["trials"], spec.metric, spec.mode, spec.base.num_tasks)
    return tune.Tuner(
        _trainable(spec, base_of(spec, state)),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=state["trials"],
                                    trial_dirname_creator=trial_dirname,
                                    reuse_actors=True),  # a new worker process per trial costs seconds
        run_config=tune.RunConfig(
            name=state["sweep_id"], storage_path=_storage_root(spec), progress_reporter=reporter, verbose=1,
            callbacks=[MLflowTrialLogger(spec, state["parent_run_id"], state["sweep_id"]), ExperimentStateBackup(),
                       FinishedCheckpoints(spec.keep_checkpoints, spec.metric, spec.mode, spec.base.num_tasks)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # num_to_keep unset: with it Tune saves the whole experiment state at every checkpoint (O(N) each);
            # trials delete their own older checkpoints (sweeps.trainable.report_with_file)
            checkpoint_config=tune.CheckpointConfig()))


def finalise(spec: SweepSpec, sweep_dir: Path, state: dict[str, Any], results, started: float,
             resumed: bool) -> dict[str, Any]:
    """Counts, the parent run closed when every trial ended, the best trials. Runs of trials Tune lost
    exist only where a driver was killed, so only a resumed sweep searches its runs for them (a search
    of every run costs ~2 ms per run)."""
    from .console import terminal
    from .mlflow_logging import finish_parent_run, remove_orphan_runs
    from .record import from_tune_config
    from .tune_state import saved_statuses

    last = [r.metrics or {} for r in results]  # each trial's last result (Tune writes no result files: TUNE_ENV)
    completed = [m for m in last if m.get("tasks_done") == spec.base.num_tasks]
    errors = len(results.errors)
    stats = {"trials": len(results), "trials_completed": len(completed), "trials_failed": errors,
             "trials_pruned": len(results) - len(completed) - errors, "sweep_wall_seconds": time.time() - started}
    if (sweep_dir / SEARCH_STATS).exists():
        stats.update(json.loads((sweep_dir / SEARCH_STATS).read_text()))
    # finished: every trial exists and ended. The in-memory ResultGrid calls interrupted trials
    # terminated; the persisted experiment state keeps them PENDING/RUNNING, so ask it.
    statuses = saved_statuses(results.filesystem, results.experiment_path)
    if len(statuses) >= num_trials(spec, state) and all(s in ("TERMINATED", "ERROR") for s in statuses.values()):
        removed = remove_orphan_runs(state["tracking_uri"], spec.experiment, state["sweep_id"],
                                     set(statuses)) if resumed else 0
        if removed:
            print(f"hnet sweep: removed {removed} MLflow run(s) of trials lost when the driver was killed "
                  f"(their configurations ran again)", file=terminal(), flush=True)
        finish_parent_run(state["tracking_uri"], state["parent_run_id"], stats)
        state["finished"] = True
        _write_state(sweep_dir, state)
    analyze_store(state["tracking_uri"])  # the UI's sorted views stay fast as the store grows
    ranked = sorted((m for m in completed if spec.metric in m), key=lambda m: m[spec.metric],
                    reverse=spec.mode == "max")[:5]  # among trials that learned every task
    base = base_of(spec, state)
    if state.get("results"):  # the study's portable copy, which the pool continues (and vice versa)
        from .record import TrialRecord
        from .results_file import append_results

        stats["results_appended"] = append_results(Path(state["results"]), (TrialRecord.from_result(
            {**m, "config": from_tune_config(m["config"], base).to_dict()}, m["trial_id"], state["sweep_id"]
        ).to_result() for m in completed))
    best = [{"trial_id": m["trial_id"], spec.metric: m[spec.metric], "compression_ratio": m.get("compression_ratio"),
             **from_tune_config(m["config"], base).to_dict()} for m in ranked]
    return {"sweep_dir": str(sweep_dir), "stats": stats, "best": best, "state": state}

"""MLflow records of a sweep: one parent run, one nested run per trial.

All logging happens in the Tune driver (a ``tune.Callback``), from the results trials
report; workers never talk to MLflow. So only the driver needs to reach the tracking
store (a SQLite file works, with a single writer), and nothing depends on files in
trial directories of other nodes. The callback is idempotent across restarts: a trial's
run is found again by its ``trial_id`` tag, and steps already logged are not logged twice,
so a restored or retried trial continues its own run.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from hnet.results import summarize

from . import record
from .record import RESULT_METRICS, SUMMARY_METRICS
from .search import train_config_of
from .spec import SweepSpec
from .store import open_store


def code_version() -> dict[str, str]:
    try:
        version = metadata.version("hnet-sweeps")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"hnet.version": version, "git_commit": commit}


def get_experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    try:  # MLflow 3 opens experiments of this kind on their runs, not on the GenAI (traces) view
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException as error:  # another sweep created it since the lookup
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or not (experiment := client.get_experiment_by_name(name)):
            raise
        return experiment.experiment_id


def set_experiment_tag(client: MlflowClient, experiment_id: str, key: str, value: str, tries: int = 5) -> None:
    """Two sweeps starting at once on one experiment race on its tags: MLflow's SQL store reads, then
    inserts, so the second insert of a new key fails (a unique-key violation, seen on PostgreSQL).
    The tag exists after the first; a retry updates it."""
    for attempt in range(tries):
        try:
            client.set_experiment_tag(experiment_id, key, value)
            return
        except MlflowException:
            if attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def start_parent_run(spec: SweepSpec, sweep_id: str, storage: str) -> str:
    """Create the sweep's parent run and the experiment's runs view; returns the run's id."""
    client = open_store(spec.tracking_uri)
    experiment_id = get_experiment_id(client, spec.experiment)
    set_experiment_tag(client, experiment_id, record.VIEW_TAG, json.dumps(record.runs_view(list(spec.space))))
    set_experiment_tag(client, experiment_id, "mlflow.note.content",
                       f"Sweep `{spec.name}` ({spec.source or 'spec'}): {spec.base.benchmark}, {spec.base.method}, "
                       f"{spec.base.scenario}; searched: {', '.join(spec.space)}; {spec.algorithm} search, "
                       f"{spec.num_samples} configurations x {spec.seeds} seed(s). Trials are nested under "
                       f"the sweep's run; `hnet report` adds Fig. A7 and the tables to it.")
    tags = {"mlflow.runName": sweep_id, record.SWEEP_ID: sweep_id, record.SWEEP_NAME: spec.name,
            record.ROLE: record.ROLE_SWEEP, record.BENCHMARK: spec.base.benchmark, record.SCENARIO: spec.base.scenario,
            record.METHOD: spec.base.method,
            record.SEARCH_SPACE: spec.source or spec.name, "search_algorithm": spec.algorithm, "storage_path": storage,
            **{f"runtime.{k}": v for k, v in spec.runtime.to_flat_params().items()}, **code_version()}
    run = client.create_run(experiment_id, tags=tags, run_name=sweep_id)
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in spec.to_flat_params().items()])
    return run.info.run_id


def finish_parent_run(tracking_uri: str, parent_run_id: str, stats: dict[str, float]) -> None:
    client = open_store(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in stats.items()])
    client.set_terminated(parent_run_id, "FINISHED")


def remove_orphan_runs(tracking_uri: str, experiment: str, sweep_id: str, trial_ids: set[str]) -> int:
    """Delete this sweep's trial runs whose trial Tune does not know (any more); returns how many.

    A driver killed within moments of a trial's first report can have logged the trial's run to
    MLflow before Tune saved the trial in its experiment state. Restored, Tune does not know that
    trial and the searcher hands its configuration out again under a new id: the old run would
    stay RUNNING beside the new one, a duplicate.
    """
    client = open_store(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id], max_results=50_000, filter_string=(
        f"tags.{record.SWEEP_ID} = '{sweep_id}' and tags.{record.ROLE} = '{record.ROLE_TRIAL}'"))
    orphans = [r for r in runs if r.data.tags.get(record.TRIAL_ID) not in trial_ids]
    for run in orphans:
        client.delete_run(run.info.run_id)
    return len(orphans)


def accuracy_matrix_csv(matrix: list[list[float]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["after_task"] + [f"task_{j}" for j in range(len(matrix))])
    for i, row in enumerate(matrix):
        writer.writerow([i] + [f"{a:.4f}" for a in row] + [""] * (len(matrix) - len(row)))
    return out.getvalue()


class MLflowTrialLogger(tune.Callback):
    def __init__(self, spec: SweepSpec, parent_run_id: str, sweep_id: str) -> None:
        self.tracking_uri, self.experiment = spec.tracking_uri, spec.experiment
        self.num_tasks = spec.base.num_tasks
        self.search_space = spec.source or spec.name
        self.sweep_id, self.parent_run_id = sweep_id, parent_run_id
        self.version = code_version()
        self._client = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_step: dict[str, int] = {}  # trial_id -> last task index logged

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        return {**self.__dict__, "_client": None, "_runs": {}, "_last_step": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_store(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        """The trial's run: cached, else found by tag (after a restart), else created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        experiment_id = get_experiment_id(self.client, self.experiment)
        found = self.client.search_runs(
            [experiment_id], max_results=1,
            filter_string=f"tags.{record.TRIAL_ID} = '{trial.trial_id}' and tags.{record.SWEEP_ID} = '{self.sweep_id}'")
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, SUMMARY_METRICS[0])
            self._last_step[trial.trial_id] = max((m.step for m in history), default=-1)
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            config = train_config_of(trial.config)
            tags = record.trial_tags(trial.trial_id, self.sweep_id, self.parent_run_id, config, self.search_space,
                                     trial.config.get(record.CONFIG_GROUP), trial.config.get(record.SEED_INDEX))
            run_id = self.client.create_run(experiment_id, tags={**tags, **self.version},
                                            run_name=trial.trial_id).info.run_id
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in config.to_flat_params().items()])
            self._last_step[trial.trial_id] = -1
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result["tasks_done"]) - 1
        first = self._last_step.get(trial.trial_id, -1) + 1
        if step < first:
            return  # already logged before a restart
        now = int(time.time() * 1000)
        matrix = result["acc_matrix"]
        metrics = [Metric(k, float(result[k]), now, step) for k in RESULT_METRICS if k in result]
        # Tasks a killed driver never saw reported (the trial resumed after them): their accuracy
        # rows are in the matrix, so every step is logged exactly once.
        for s in range(first, step + 1):
            metrics += [Metric(record.acc_task_metric(j), float(a), now, s) for j, a in enumerate(matrix[s])]
            if s < step:
                summary = summarize(matrix[:s + 1])
                metrics += [Metric(k, float(summary[k]), now, s) for k in SUMMARY_METRICS]
        # where the trial ran (its latest node, after a retry elsewhere)
        tags = [RunTag(tag, str(result[key])) for tag, key in record.WHERE.items() if key in result]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        result = trial.last_result or {}
        if "acc_matrix" in result:
            trial_record = record.TrialRecord.from_result({**result, "config": train_config_of(trial.config).to_dict()},
                                                          trial.trial_id, self.sweep_id, run_id=run_id)
            self.client.log_text(run_id, json.dumps(trial_record.to_result(), indent=2), record.RESULTS_ARTIFACT)
            self.client.log_text(run_id, accuracy_matrix_csv(result["acc_matrix"]), record.MATRIX_ARTIFACT)
        pruned = result.get("tasks_done", 0) < self.num_tasks
        self.client.set_tag(run_id, record.STATUS, "pruned" if pruned else "completed")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        error = getattr(trial, "error_file", None)
        self.client.log_batch(run_id, tags=[RunTag(record.STATUS, "failed"), RunTag(record.ERROR_FILE, str(error))])
        self.client.set_terminated(run_id, "FAILED")

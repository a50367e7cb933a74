"""MLflow records of a sweep: one parent run, one nested run per trial, for both backends.

All logging happens in the driver (``TrialRecorder``: fed by Tune's callback
``sweeps.tune_state.MLflowTrialLogger``, or by the pool's loop), from the results trials report;
workers never talk to MLflow. So only the driver needs to reach the tracking store (a SQLite
file works, with a single writer), and nothing depends on files in trial directories of other
nodes. The recorder is idempotent across restarts: a trial's run is found again by its
``trial_id`` tag, and steps already logged are not logged twice, so a restored or retried trial
continues its own run.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import record
from .spec import SweepSpec
from .store import is_server, open_store, server_access


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


def prepare_experiment(spec: SweepSpec) -> str:
    """The sweep's experiment (created when new) with its runs view and note; returns its id. These are
    a sweep's first writes, and they repeat harmlessly: the runner makes them before Ray starts, so
    that a tracking server refusing the user (``sweeps.store.server_access``) stops the sweep there."""
    client = open_store(spec.tracking_uri)
    experiment_id = get_experiment_id(client, spec.experiment)
    set_experiment_tag(client, experiment_id, record.VIEW_TAG, json.dumps(record.runs_view(list(spec.space))))
    set_experiment_tag(client, experiment_id, "mlflow.note.content",
                       f"Sweep `{spec.name}` ({spec.source or 'spec'}): {spec.base.benchmark}, {spec.base.method}, "
                       f"{spec.base.scenario}; searched: {', '.join(spec.space)}; {spec.algorithm} search, "
                       f"{spec.num_samples} configurations x {spec.seeds} seed(s). Trials are nested under "
                       f"the sweep's run; `hnet report` adds Fig. A7 and the tables to it.")
    return experiment_id


def check_access(spec: SweepSpec) -> None:
    """On a tracking server with users (docs/cluster.md), make the sweep's first writes now: missing or
    wrong credentials (401) or no EDIT permission on the experiment (403) become one ``hnet: error:``
    line before anything trains, instead of a sweep that trains and cannot record. Both backends call
    it first, for new and continued sweeps alike."""
    if is_server(spec.tracking_uri):
        with server_access(spec.tracking_uri, f"write to experiment {spec.experiment!r}"):
            prepare_experiment(spec)


def start_parent_run(spec: SweepSpec, sweep_id: str, storage: str) -> str:
    """Create the sweep's parent run and the experiment's runs view; returns the run's id."""
    client = open_store(spec.tracking_uri)
    experiment_id = prepare_experiment(spec)
    tags = {"mlflow.runName": sweep_id, record.SWEEP_ID: sweep_id, record.SWEEP_NAME: spec.name,
            record.ROLE: record.ROLE_SWEEP, record.BENCHMARK: spec.base.benchmark, record.SCENARIO: spec.base.scenario,
            record.METHOD: spec.base.method,
            record.SEARCH_SPACE: spec.source or spec.name, "search_algorithm": spec.algorithm, "storage_path": storage,
            **{f"runtime.{k}": v for k, v in spec.runtime.to_flat_params().items()}, **code_version()}
    run = client.create_run(experiment_id, tags=tags, run_name=sweep_id)
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in spec.to_flat_params().items()])
    return run.info.run_id


POOL_STATE = ".mlflow.json"  # beside a pool study's results file: the MLflow sweep it records into


def pool_sweep(spec: SweepSpec, results: Path) -> tuple[TrialRecorder, Path]:
    """The MLflow sweep of a pool study (``sweeps.pool``) and the file naming it: the sweep that file
    names in this store and experiment (a study continued), or a new parent run. The file goes when
    the study is finished (``finish_parent_run``), so a study run again later starts a new sweep."""
    check_access(spec)  # before the pool trains anything
    state_file = results.parent / f"{results.stem}{POOL_STATE}"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if (state.get("tracking_uri"), state.get("experiment")) != (spec.tracking_uri, spec.experiment):
        sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        state = {"tracking_uri": spec.tracking_uri, "experiment": spec.experiment, "sweep_id": sweep_id,
                 "parent_run_id": start_parent_run(spec, sweep_id, str(results.resolve()))}
        state_file.write_text(json.dumps(state, indent=2))
    return TrialRecorder(spec, state["parent_run_id"], state["sweep_id"]), state_file


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


WRITE_INTERVAL_S = 5.0  # a running trial's results reach its run at most this often; its last one always
TABLE_INTERVAL_S = 30.0  # the sweep's trial table (sweeps.record.TABLE_ARTIFACT) is rewritten at most this often


class TrialRecorder:
    """Writes each trial's run. The writes happen on a thread of their own, in order, so the
    driver's loop never waits for the store. A trial's results are written at most every
    ``WRITE_INTERVAL_S`` (each write logs every task since the last one: a trial of short tasks
    costs a few writes, not a few per task). ``flush`` writes everything received; Tune's driver
    calls it before it saves its experiment state and at the end, so a saved state never runs
    ahead of the record. A trial is named by its id and its Tune config (``record.to_tune_config``),
    a result is ``record.task_result``'s."""

    def __init__(self, spec: SweepSpec, parent_run_id: str, sweep_id: str) -> None:
        self.tracking_uri, self.experiment = spec.tracking_uri, spec.experiment
        self.num_tasks, self.base = spec.base.num_tasks, spec.base.to_flat_params()
        self.search_space = spec.source or spec.name
        self.sweep_id, self.parent_run_id = sweep_id, parent_run_id
        self.version = code_version()
        self.__setstate__({})

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        keep = ("tracking_uri", "experiment", "num_tasks", "base", "search_space", "sweep_id", "parent_run_id",
                "version")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] | None = None  # trial_id -> run_id (None: not listed yet)
        self._start_time: dict[str, int] = {}  # trial_id -> its run's start (ms)
        self._last_step: dict[str, int] = {}  # trial_id -> last task index logged
        self._table: dict[str, str] = {}  # trial_id -> its line in the trial table (ended trials)
        self._table_written = (0, 0.0)  # (lines, time.monotonic()) at the last write of the table
        self._unwritten: dict[str, tuple[dict, dict]] = {}  # trial_id -> (Tune config, newest result) not written
        self._due: dict[str, float] = {}  # trial_id -> when its next result is written
        self._queue: queue.Queue | None = None
        self._failure: BaseException | None = None

    # the driver's thread --------------------------------------------------------------------------
    def result(self, trial_id: str, tune_config: dict[str, Any], result: dict[str, Any]) -> None:
        """A trial's result after a task (written now, or with a later one)."""
        now = time.monotonic()
        self._unwritten[trial_id] = (tune_config, result)
        if now >= self._due.setdefault(trial_id, now + WRITE_INTERVAL_S):
            self._due[trial_id] = now + WRITE_INTERVAL_S
            self._submit(trial_id)

    def completed(self, trial_id: str, tune_config: dict[str, Any], result: dict[str, Any]) -> None:
        """The trial ended with ``result``: completed if it learned every task, else pruned."""
        self._unwritten[trial_id] = (tune_config, result)
        self._submit(trial_id, "pruned" if result.get("tasks_done", 0) < self.num_tasks else "completed")

    def failed(self, trial_id: str, tune_config: dict[str, Any], error_file: str | None) -> None:
        """The trial raised (``error_file``: where its traceback is); its results so far stay."""
        self._unwritten.setdefault(trial_id, (tune_config, {}))
        self._submit(trial_id, "failed", str(error_file) if error_file else None)

    def flush(self, table: bool = False) -> None:
        """Write every result received so far and wait until it is in the store (raises the first write
        that failed); the trial table too when due (or with ``table``)."""
        for trial_id in list(self._unwritten):
            self._submit(trial_id)
        if self._queue is not None:
            self._queue.put((self._write_table, (table,)))
            self._queue.join()
        if self._failure is not None:
            raise self._failure

    def _submit(self, trial_id: str, status: str | None = None, error_file: str | None = None) -> None:
        if self._failure is not None:
            raise self._failure
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._write_loop, name="mlflow-writer", daemon=True).start()
        tune_config, result = self._unwritten.pop(trial_id)
        if status:
            self._due.pop(trial_id, None)
        self._queue.put((self._write, (trial_id, tune_config, result, status, error_file)))

    def _write_loop(self) -> None:
        while True:
            write, args = self._queue.get()
            try:
                if self._failure is None:
                    write(*args)
            except BaseException as exc:  # re-raised in Tune's thread at the next write or flush
                self._failure = exc
            finally:
                self._queue.task_done()

    # the writer thread ----------------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_store(self.tracking_uri)
        return self._client

    def _index_runs(self) -> None:
        """The runs this sweep already has (after a restart), with the last task each logged: one search."""
        self._experiment_id = get_experiment_id(self.client, self.experiment)
        self._runs, self._last_step = {}, {}
        runs = self.client.search_runs([self._experiment_id], max_results=50_000, filter_string=(
            f"tags.{record.SWEEP_ID} = '{self.sweep_id}' and tags.{record.ROLE} = '{record.ROLE_TRIAL}'"))
        for run in runs:
            trial_id = run.data.tags[record.TRIAL_ID]
            self._runs[trial_id], self._start_time[trial_id] = run.info.run_id, run.info.start_time
            # task j's accuracy is first logged at step j, with the rest of that step, in one batch
            self._last_step[trial_id] = max((int(k[len(record.ACC_TASK):]) for k in run.data.metrics
                                             if k.startswith(record.ACC_TASK)), default=-1)
            if run.info.status != "RUNNING" and run.data.tags.get(record.STATUS) is None:
                self.client.update_run(run.info.run_id, status="RUNNING")
        if self.client.get_run(self.parent_run_id).data.tags.get(record.TABLE_TIME):  # continue the table
            lines = record.read_table(self.client, self.parent_run_id)
            self._table = {json.loads(line)["trial_id"]: line for line in lines}
            self._table_written = (len(self._table), time.monotonic())

    def _write(self, trial_id: str, tune_config: dict[str, Any], result: dict[str, Any], status: str | None,
               error_file: str | None) -> None:
        """One batch for the trial's run (created first if it has none): the tasks it finished since the
        last write, where it ran, and with ``status`` its end."""
        if self._runs is None:
            self._index_runs()
        params = []
        if trial_id not in self._runs:
            config = record.from_tune_config(tune_config, self.base)
            run_tags = record.trial_tags(trial_id, self.sweep_id, self.parent_run_id, config, self.search_space,
                                         tune_config.get(record.CONFIG_GROUP), tune_config.get(record.SEED_INDEX))
            run = self.client.create_run(self._experiment_id, tags={**run_tags, **self.version}, run_name=trial_id)
            self._runs[trial_id], self._start_time[trial_id] = run.info.run_id, run.info.start_time
            params = [Param(k, v) for k, v in config.to_flat_params().items()]
        run_id = self._runs[trial_id]
        metrics = self._new_metrics(trial_id, result) if "acc_matrix" in result else []
        tags = [RunTag(k, v) for k, v in record.result_tags(result, status, error_file).items()]
        if params or metrics or tags:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        if status:
            self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
            trial = record.TrialRecord.from_result(
                {**result, "config": record.from_tune_config(tune_config, self.base).to_dict()}, trial_id,
                self.sweep_id, status, run_id, self._start_time.get(trial_id))
            self._table[trial_id] = trial.to_line()

    def _write_table(self, force: bool) -> None:
        """The sweep's trial table as an artifact of its parent run, when trials ended since the last
        write and (unless ``force``) ``TABLE_INTERVAL_S`` has passed."""
        lines, written = self._table_written
        if len(self._table) == lines or not (force or time.monotonic() - written >= TABLE_INTERVAL_S):
            return
        now = int(time.time() * 1000)
        self.client.log_text(self.parent_run_id, "\n".join(self._table.values()) + "\n", record.TABLE_ARTIFACT)
        self.client.set_tag(self.parent_run_id, record.TABLE_TIME, str(now))
        self._table_written = (len(self._table), time.monotonic())

    def _new_metrics(self, trial_id: str, result: dict[str, Any]) -> list[Metric]:
        """The metrics of every task finished since the trial's last logged one (each step exactly once,
        also for tasks whose results a killed driver never saw: their rows are in the matrix)."""
        step, first = int(result["tasks_done"]) - 1, self._last_step.get(trial_id, -1) + 1
        if step < first:
            return []  # already logged (before a restart, or a finished trial reporting again)
        now = int(time.time() * 1000)
        self._last_step[trial_id] = step
        return [Metric(k, v, now, s) for k, v, s in record.step_metrics(result, first)]

"""Sweeps in MLflow as pandas DataFrames: one row per trial, seeds aggregated on demand."""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from hnet.config import TrainConfig
from sweeps import record
from sweeps.store import open_store, server_access

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a trial table per sweep: no bar each
CONFIG_FIELDS = [k for k in TrainConfig.field_names() if k != "seed"]  # identify a configuration across seeds


def load_trials(experiment: str, tracking_uri: str = "sqlite:///mlflow.db", with_matrix: bool = False) -> pd.DataFrame:
    """One row per trial run of ``experiment`` (``TrialRecord.to_row``): ids, status, config
    fields, metrics.

    ``status`` is completed / pruned / failed / running (an interrupted, unfinished trial).
    With ``with_matrix`` an ``acc_matrix`` column holds each trial's accuracy matrix
    (rows: after task i; entries: accuracy on task j <= i).

    Bulk read: each sweep's trial table (``sweeps.record.TABLE_ARTIFACT``, one download), plus one
    search per sweep for its runs still running or ended after the table was written (a sweep
    without a table: all its runs, the slow path at ~2 ms per run).

    On a tracking server with users, MLflow's credential variables (MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD) say who reads; a refusal (401/403) raises ``sweeps.store.AccessError``.
    """
    with server_access(tracking_uri, f"read experiment {experiment!r}"):
        return _load_trials(experiment, tracking_uri, with_matrix)


def _load_trials(experiment: str, tracking_uri: str, with_matrix: bool) -> pd.DataFrame:
    client = open_store(tracking_uri, create=False)  # a missing store is an error, not a new empty one
    mlflow.set_tracking_uri(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    trials: dict[str, record.TrialRecord] = {}  # run id -> record
    for parent in client.search_runs([found.experiment_id], f"tags.{record.ROLE} = '{record.ROLE_SWEEP}'",
                                     max_results=50_000):
        written = parent.data.tags.get(record.TABLE_TIME)
        if written:
            lines = record.read_table(client, parent.info.run_id)
            trials.update((t.run_id, t) for t in map(record.TrialRecord.from_line, lines))
        sweep = f"tags.{record.ROLE} = '{record.ROLE_TRIAL}' and tags.{record.SWEEP_ID} = " \
                f"'{parent.data.tags.get(record.SWEEP_ID)}'"
        searches = [f"{sweep} and attributes.status = 'RUNNING'", f"{sweep} and attributes.end_time > {written}"] \
            if written else [sweep]
        for search in searches:
            for run in _search(found.experiment_id, search):
                trials[run["run_id"]] = record.TrialRecord.from_mlflow(run)
    if not trials:
        return pd.DataFrame()
    for trial in trials.values():
        if with_matrix and trial.acc_matrix is None:
            trial.acc_matrix = accuracy_matrix(client, trial.run_id)
        elif not with_matrix:
            trial.acc_matrix = None
    frame = pd.DataFrame([trial.to_row() for trial in trials.values()])
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="ms", utc=True)
    return frame.sort_values("start_time").reset_index(drop=True)


def _search(experiment_id: str, filter_string: str) -> list[dict]:
    """Runs as ``mlflow.search_runs`` lists them (``params.<name>``, ``tags.<name>``, ...), start time in ms."""
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=filter_string, output_format="pandas")
    if runs.empty:
        return []
    runs["start_time"] = runs["start_time"].astype("int64") // 10**6
    return runs.to_dict("records")


def load_results_files(paths: list[str | Path]) -> pd.DataFrame:
    """Trials from JSON-lines files of trainer results (``hnet sweep run --backend pool``, which runs without
    MLflow), in ``load_trials``' layout with the ``acc_matrix`` column; several files merge."""
    rows = []
    for path in map(Path, paths):
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read results file {path}: {str(exc).splitlines()[0]}") from None
        for i, result in enumerate(lines):
            trial = record.TrialRecord.from_result(result, trial_id=f"{path.stem}-{i}", sweep_id=path.stem,
                                                   start_time=len(rows))
            rows.append(trial.to_row())
    return pd.DataFrame(rows)


def accuracy_matrix(client: MlflowClient, run_id: str) -> list[list[float]]:
    rows: dict[int, dict[int, float]] = {}
    j = 0
    while True:
        history = client.get_metric_history(run_id, record.acc_task_metric(j))
        if not history:
            break
        for m in history:
            rows.setdefault(m.step, {})[j] = m.value
        j += 1
    return [[rows[i][k] for k in sorted(rows[i])] for i in sorted(rows)]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """Columns that define a configuration: the experiment fields but the seed."""
    return [c for c in CONFIG_FIELDS if c in frame.columns]


def aggregate_seeds(frame: pd.DataFrame, metrics: tuple[str, ...] = ("acc_after_mean", "acc_during_mean",
                                                                       "forgetting")) -> pd.DataFrame:
    """Completed trials grouped by configuration: mean, std and count of each metric."""
    done = frame[frame["status"] == "completed"]
    keys = [c for c in config_columns(done) if done[c].nunique(dropna=False) > 0]
    grouped = done.groupby(keys, dropna=False)
    out = grouped[list(metrics)].agg(["mean", "std", "count"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["compression_ratio"] = grouped["compression_ratio"].first()
    if "run_id" in done:
        out["run_id"] = grouped["run_id"].first()  # of the first seed: a link into the MLflow UI
    return out.reset_index()


def pareto_front(frame: pd.DataFrame, accuracy: str = "acc_after_mean", ratio: str = "compression_ratio") -> pd.Series:
    """Boolean mask: rows not dominated (higher accuracy at no larger compression ratio)."""
    order = frame.sort_values([ratio, accuracy], ascending=[True, False])
    best, keep = float("-inf"), set()
    for index, row in order.iterrows():
        if row[accuracy] > best:
            keep.add(index)
            best = row[accuracy]
    return frame.index.isin(keep)

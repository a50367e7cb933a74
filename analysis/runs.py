"""Sweeps in MLflow as pandas DataFrames: one row per trial, seeds aggregated on demand."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from hnet.config import TrainConfig
from sweeps import record
from sweeps.store import open_store

CONFIG_FIELDS = [k for k in TrainConfig.field_names() if k != "seed"]  # identify a configuration across seeds


def load_trials(experiment: str, tracking_uri: str = "sqlite:///mlflow.db", with_matrix: bool = False) -> pd.DataFrame:
    """One row per trial run of ``experiment`` (``TrialRecord.to_row``): ids, status, config
    fields, metrics.

    ``status`` is completed / pruned / failed / running (an interrupted, unfinished trial).
    With ``with_matrix`` an ``acc_matrix`` column holds each trial's accuracy matrix
    (rows: after task i; entries: accuracy on task j <= i), rebuilt from the per-task metrics.
    """
    client = open_store(tracking_uri, create=False)  # a missing store is an error, not a new empty one
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=[found.experiment_id],
                              filter_string=f"tags.{record.ROLE} = '{record.ROLE_TRIAL}'", output_format="pandas")
    if runs.empty:
        return runs
    trials = [record.TrialRecord.from_mlflow(run) for run in runs.to_dict("records")]
    if with_matrix:
        for trial in trials:
            trial.acc_matrix = accuracy_matrix(client, trial.run_id)
    frame = pd.DataFrame([trial.to_row() for trial in trials])
    return frame.sort_values("start_time").reset_index(drop=True)


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

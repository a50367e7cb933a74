"""Sweeps in MLflow as pandas DataFrames: one row per trial, seeds aggregated on demand."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

# Config fields that identify a configuration (everything but the seed and bookkeeping).
NOT_CONFIG = {"seed", "config_group", "seed_index", "device", "threads", "cuda_graph", "data_root", "eval_batch_size"}


def load_trials(experiment: str, tracking_uri: str = "sqlite:///mlflow.db", with_matrix: bool = False) -> pd.DataFrame:
    """One row per trial run of ``experiment``: params (``p.*`` plain names), metrics, status.

    ``status`` is completed / pruned / failed / running (an interrupted, unfinished trial).
    With ``with_matrix`` an ``acc_matrix`` column holds each trial's accuracy matrix
    (rows: after task i; entries: accuracy on task j <= i), rebuilt from the per-task metrics.
    """
    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=[found.experiment_id], filter_string="tags.role = 'trial'",
                              output_format="pandas")
    if runs.empty:
        return runs
    frame = pd.DataFrame({"run_id": runs["run_id"], "trial_id": runs["tags.trial_id"],
                          "sweep_id": runs["tags.sweep_id"], "benchmark": runs["tags.benchmark"],
                          "status": runs["tags.trial_status"].fillna("running"), "start_time": runs["start_time"]})
    for column in runs.columns:
        if column.startswith("params."):
            frame[column[len("params."):]] = runs[column]
        elif column.startswith("metrics."):
            frame[column[len("metrics."):]] = runs[column]
    if with_matrix:
        client = MlflowClient(tracking_uri)
        frame["acc_matrix"] = [accuracy_matrix(client, run_id) for run_id in frame["run_id"]]
    return frame.sort_values("start_time").reset_index(drop=True)


def load_results_files(paths: list[str | Path]) -> pd.DataFrame:
    """Trials from JSON-lines files of trainer results (``bench/gpu_pool.py`` on a machine without
    MLflow), in ``load_trials``' layout with the ``acc_matrix`` column; several files merge."""
    from hnet.config import TrainConfig

    rows = []
    for path in map(Path, paths):
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read results file {path}: {str(exc).splitlines()[0]}") from None
        for i, result in enumerate(lines):
            params = TrainConfig.from_dict(result["config"]).to_flat_params()
            metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            rows.append({"run_id": None, "trial_id": f"{path.stem}-{i}", "sweep_id": path.stem,
                         "benchmark": params["benchmark"], "status": "completed", "start_time": len(rows),
                         **params, **metrics, "acc_matrix": result["acc_matrix"]})
    return pd.DataFrame(rows)


def accuracy_matrix(client: MlflowClient, run_id: str) -> list[list[float]]:
    rows: dict[int, dict[int, float]] = {}
    j = 0
    while True:
        history = client.get_metric_history(run_id, f"acc_task_{j}")
        if not history:
            break
        for m in history:
            rows.setdefault(m.step, {})[j] = m.value
        j += 1
    return [[rows[i][k] for k in sorted(rows[i])] for i in sorted(rows)]


def config_columns(frame: pd.DataFrame) -> list[str]:
    """Param columns that define a configuration (seed excluded)."""
    metric_like = set(frame.select_dtypes("number").columns)
    fixed = {"run_id", "trial_id", "sweep_id", "benchmark", "status", "start_time", "acc_matrix"}
    return [c for c in frame.columns if c not in fixed | metric_like | NOT_CONFIG]


def aggregate_seeds(frame: pd.DataFrame, metrics: tuple[str, ...] = ("acc_after_mean", "acc_during_mean",
                                                                       "forgetting")) -> pd.DataFrame:
    """Completed trials grouped by configuration: mean, std and count of each metric."""
    done = frame[frame["status"] == "completed"]
    keys = [c for c in config_columns(done) if done[c].nunique(dropna=False) > 0]
    grouped = done.groupby(keys, dropna=False)
    out = grouped[list(metrics)].agg(["mean", "std", "count"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["compression_ratio"] = grouped["compression_ratio"].first()
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

"""Sweep analysis on a real MLflow store written by a real (tiny) sweep."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from analysis.figures import fig_a7
from analysis.runs import aggregate_seeds, load_trials, pareto_front


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2 configurations that train and 2 that fail (NaN at task 1), 2 seeds each: 8 trials."""
    tmp = tmp_path_factory.mktemp("analysis")
    spec = {"name": "a", "base": {"preset": "split_digits", "num_tasks": 3, "iters": 15, "batch_size": 32},
            "space": {"nan_at_task": [-1, 1], "beta": [0.01, 0.1]}, "seeds": 2, "num_samples": 4, "max_failures": 0,
            "search": {"algorithm": "grid", "max_concurrent": 2},
            "mlflow": {"experiment": "a", "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
            "storage_path": str(tmp / "ray_results")}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "hnet.cli", "sweep", "run", str(tmp / "spec.yaml")], cwd=tmp,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return f"sqlite:///{tmp}/mlflow.db", tmp


def test_trials_frame_marks_failed_trials(store):
    uri, _ = store
    frame = load_trials("a", uri, with_matrix=True)
    assert len(frame) == 8 and frame["trial_id"].is_unique
    assert (frame["status"] == "failed").sum() == 4 and (frame["status"] == "completed").sum() == 4
    assert set(frame.loc[frame["status"] == "failed", "nan_at_task"]) == {"1"}
    assert {"beta", "hnet_hidden", "seed", "acc_after_mean", "compression_ratio", "forgetting"} <= set(frame.columns)
    for matrix in frame.loc[frame["status"] == "completed", "acc_matrix"]:
        assert [len(row) for row in matrix] == [1, 2, 3]


def test_seed_aggregation(store):
    uri, _ = store
    table = aggregate_seeds(load_trials("a", uri))
    assert len(table) == 2 and (table["acc_after_mean_count"] == 2).all()
    assert table["acc_after_mean_std"].notna().all()
    assert set(table["beta"]) == {"0.01", "0.1"}


def test_fig_a7_files(store, tmp_path):
    uri, _ = store
    paths = fig_a7(load_trials("a", uri), tmp_path, experiment="a")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 2 and csv["pareto"].any()


def test_pareto_front_by_hand():
    frame = pd.DataFrame({"acc_after_mean": [90, 95, 93, 99, 80], "compression_ratio": [0.1, 0.5, 0.6, 0.9, 0.05]})
    # (0.05, 80) (0.1, 90) (0.5, 95) (0.9, 99) are undominated; (0.6, 93) is beaten by (0.5, 95)
    assert list(pareto_front(frame)) == [True, True, False, True, True]

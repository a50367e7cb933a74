"""The MLflow record of sweeps: every name the writer (``sweeps.mlflow_logging``) and the
readers (``analysis``) use, and the typed trial record both sides share.

One MLflow experiment per spec. In it, per sweep, one parent run (tag ``role`` = ``sweep``)
and one run per trial (``role`` = ``trial``) nested under it. A trial run holds

* params: its experiment configuration (TrainConfig fields as flat strings), nothing else;
* metrics: ``RESULT_METRICS`` at step i (running values after learning task i) and
  ``acc_task_{j}`` at step i (accuracy on task j after learning task i: the accuracy matrix);
* tags: ``trial_tags`` (ids, status, where it ran) and, once it ended, ``acc_matrix``: the accuracy
  matrix again as one JSON value, so that one read returns it.

The parent run holds the sweep's *trial table* (``TABLE_ARTIFACT``): every ended trial's record as
one JSON line, written by the driver beside the runs (at most every ``TABLE_INTERVAL_S`` and at
the end), so that readers get thousands of trials in one download instead of a search that
costs ~2 ms per run; runs that ended after the table was written are found by one search.

Importing this module needs neither MLflow nor Ray.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hnet.config import TrainConfig
from hnet.results import FIXED_METRICS, RESULT_METRICS, SUMMARY_METRICS, summarize

ROLE, ROLE_SWEEP, ROLE_TRIAL = "role", "sweep", "trial"
SWEEP_ID, SWEEP_NAME, TRIAL_ID = "sweep_id", "sweep_name", "trial_id"
STATUS = "trial_status"  # completed | pruned | failed; a run without it is still running (or was cut off)
BENCHMARK, SCENARIO, METHOD, SEARCH_SPACE = "benchmark", "scenario", "method", "search_space"
CONFIG_GROUP, SEED_INDEX = "config_group", "seed_index"  # a configuration's seeds share the group
WHERE = {"ray_node_id": "node_id", "device": "device", "gpu_ids": "gpu_ids"}  # tag: result key (where a trial ran)
ERROR_FILE = "error_file"
ACC_MATRIX = "acc_matrix"  # tag: the finished trial's accuracy matrix as JSON (``matrix_tag``)
TABLE_ARTIFACT = "trials.jsonl"  # of a sweep's parent run: one ``TrialRecord.to_line`` per ended trial
TABLE_TIME = "trials_table_time"  # tag of the parent run: when the table was last written (ms since the epoch)


VIEW = "trials"  # the experiment's saved MLflow UI view of its trial runs (``runs_view``)
VIEW_TAG = "mlflow.sharedViewState." + VIEW  # MLflow 3 reads a shared view's state from this experiment tag
UI_METRICS = ("acc_after_mean", "compression_ratio", "acc_during_mean", "forgetting", "task_inference_acc")
UI_TAGS = (BENCHMARK, METHOD, SCENARIO, STATUS)


def runs_view(searched: list[str]) -> dict[str, Any]:
    """The UI state of the view a user lands on: trial runs only (not nested under the sweep's parent),
    best first, with accuracy, compression ratio, benchmark/method/scenario and the searched
    fields as columns."""
    columns = [f"metrics.`{m}`" for m in UI_METRICS] + [f"params.`{p}`" for p in [*searched, "seed"]] + \
        [f"tags.`{t}`" for t in UI_TAGS]
    return {"searchFilter": f"tags.{ROLE} = '{ROLE_TRIAL}'", "orderByKey": f"metrics.`{UI_METRICS[0]}`",
            "orderByAsc": False, "selectedColumns": columns, "runsExpanded": {}}


def runs_view_url(ui_url: str, experiment_id: str) -> str:
    """The UI's model-training mode (its default is GenAI, whose landing page shows traces) on this view."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW}"


ACC_TASK = "acc_task_"  # acc_task_<j>: accuracy on task j, one step per task learned


def acc_task_metric(task: int) -> str:
    return f"{ACC_TASK}{task}"


@dataclass
class TrialRecord:
    """One trial as analysis sees it: ids, status, configuration, final metrics, accuracy matrix."""

    trial_id: str
    sweep_id: str
    status: str
    config: TrainConfig
    metrics: dict[str, float] = field(default_factory=dict)
    acc_matrix: list[list[float]] | None = None
    run_id: str | None = None
    start_time: Any = None

    def to_row(self) -> dict[str, Any]:
        """A DataFrame row: ids and status, every config field (flat strings, as MLflow params), metrics."""
        row = {"run_id": self.run_id, "trial_id": self.trial_id, "sweep_id": self.sweep_id,
               "benchmark": self.config.benchmark, "status": self.status, "start_time": self.start_time,
               **self.config.to_flat_params(), **self.metrics}
        if self.acc_matrix is not None:
            row["acc_matrix"] = self.acc_matrix
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "TrialRecord":
        """Inverse of ``to_row``."""
        config = TrainConfig.from_dict({k: row[k] for k in TrainConfig.field_names()})
        return cls(trial_id=row["trial_id"], sweep_id=row["sweep_id"], status=row["status"], config=config,
                   metrics=_numbers(row, RESULT_METRICS), acc_matrix=row.get("acc_matrix"), run_id=row.get("run_id"),
                   start_time=row.get("start_time"))

    @classmethod
    def from_result(cls, result: Mapping[str, Any], trial_id: str, sweep_id: str, status: str = "completed",
                    run_id: str | None = None, start_time: Any = None) -> "TrialRecord":
        """From what the trainer returns (``hnet.trainer.train``; a results.json, a line of the pool backend)."""
        return cls(trial_id=trial_id, sweep_id=sweep_id, status=status, config=TrainConfig.from_dict(result["config"]),
                   metrics={k: result[k] for k in RESULT_METRICS if k in result and _present(result[k])},
                   acc_matrix=result.get("acc_matrix"), run_id=run_id,
                   start_time=start_time)

    @classmethod
    def from_mlflow(cls, run: Mapping[str, Any]) -> "TrialRecord":
        """From a trial run as ``mlflow.search_runs`` lists it (``params.<field>``, ``metrics.<name>``,
        ``tags.<tag>``); fields a run predates take their defaults."""
        params = {k: run[f"params.{k}"] for k in TrainConfig.field_names() if _present(run.get(f"params.{k}"))}
        status, matrix = run.get(f"tags.{STATUS}"), run.get(f"tags.{ACC_MATRIX}")
        return cls(trial_id=run[f"tags.{TRIAL_ID}"], sweep_id=run[f"tags.{SWEEP_ID}"],
                   status=status if _present(status) else "running",  # no status yet: running, or cut off
                   config=TrainConfig.from_dict(params), run_id=run["run_id"], start_time=run["start_time"],
                   metrics={k: float(run[f"metrics.{k}"]) for k in RESULT_METRICS if _present(run.get(f"metrics.{k}"))},
                   acc_matrix=json.loads(matrix) if _present(matrix) else None)

    def to_line(self) -> str:
        """One JSON line of a sweep's trial table (``TABLE_ARTIFACT``): ids, status, the result record."""
        return json.dumps({"trial_id": self.trial_id, "sweep_id": self.sweep_id, "status": self.status,
                           "run_id": self.run_id, "start_time": self.start_time, **self.to_result()})

    @classmethod
    def from_line(cls, line: str) -> "TrialRecord":
        """Inverse of ``to_line``."""
        d = json.loads(line)
        return cls.from_result(d, d["trial_id"], d["sweep_id"], d["status"], d["run_id"], d["start_time"])

    def to_result(self) -> dict[str, Any]:
        """The record as results.json holds it: config, metrics, accuracy matrix, tasks done."""
        out = {"config": self.config.to_dict(), **self.metrics}
        if self.acc_matrix is not None:
            out.update(acc_matrix=self.acc_matrix, tasks_done=len(self.acc_matrix))
        return out


MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value


def matrix_tag(matrix: list[list[float]]) -> str | None:
    """The accuracy matrix as a compact JSON tag value (0.001 % resolution), or None when it is too long for
    a tag (about 40+ tasks): readers then rebuild it from the per-task metrics."""
    text = json.dumps([[round(a, 3) for a in row] for row in matrix], separators=(",", ":"))
    return text if len(text) <= MAX_TAG_LENGTH else None


def read_table(client, parent_run_id: str) -> list[str]:
    """The lines of a sweep's trial table (``client``: an ``MlflowClient``; the parent run has one when it
    has the ``TABLE_TIME`` tag)."""
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(parent_run_id, TABLE_ARTIFACT, folder)
        return [line for line in Path(path).read_text().splitlines() if line.strip()]


def task_result(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial reports after each task, on either backend (the trainer's summary: running means over
    the tasks learned so far, and the accuracy matrix, small: tasks x tasks)."""
    return {**{k: summary[k] for k in ("tasks_done", *RESULT_METRICS) if k in summary},
            "acc_matrix": summary["acc_matrix"]}


TUNE_KEYS = (CONFIG_GROUP, SEED_INDEX)  # Tune config entries that are not TrainConfig fields


def to_tune_config(cfg: TrainConfig, base: Mapping[str, str], group: str, seed_index: int) -> dict[str, Any]:
    """What a Tune trial receives: its seed, the fields where ``cfg`` differs from the sweep's ``base``
    (flat params, ``TrainConfig.to_flat_params``) and its configuration group. Only the difference: Tune keeps
    the config in every result and checkpoint record of its experiment state, for every trial."""
    return {**{k: v for k, v in cfg.to_flat_params().items() if base.get(k) != v or k == "seed"},
            CONFIG_GROUP: group, SEED_INDEX: seed_index}


def from_tune_config(config: Mapping[str, Any], base: Mapping[str, str]) -> TrainConfig:
    """Inverse of ``to_tune_config``: the trial's validated TrainConfig."""
    return TrainConfig.from_dict({**base, **{k: v for k, v in config.items() if k not in TUNE_KEYS}}).validate()


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _numbers(values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    return {k: float(values[k]) for k in names if k in values and _present(values[k])}


def step_metrics(result: Mapping[str, Any], first: int) -> list[tuple[str, float, int]]:
    """A trial run's metrics (name, value, step) for the tasks from ``first`` to the result's last: the
    accuracy matrix's rows as ``acc_task_{j}``, the running summaries at each step (rebuilt from the
    matrix for steps whose report never reached the driver), the architecture's counts once (step 0)."""
    step = int(result["tasks_done"]) - 1
    matrix = result["acc_matrix"]
    fixed = FIXED_METRICS if first == 0 else ()
    metrics = [(k, float(result[k]), step) for k in RESULT_METRICS
               if k in result and (k not in FIXED_METRICS or k in fixed)]
    for s in range(first, step + 1):
        metrics += [(acc_task_metric(j), float(a), s) for j, a in enumerate(matrix[s])]
        if s < step:
            summary = summarize(matrix[:s + 1])
            metrics += [(k, float(summary[k]), s) for k in SUMMARY_METRICS]
    return metrics


def result_tags(result: Mapping[str, Any], status: str | None, error_file: str | None = None) -> dict[str, str]:
    """A trial run's tags from a result: where it ran (its latest node, after a retry elsewhere) and, with
    ``status``, its end: the status, and the accuracy matrix (``matrix_tag``) or the failure's error file."""
    tags = {tag: str(result[key]) for tag, key in WHERE.items() if key in result}
    if status:
        tags[STATUS] = status
    if status == "failed" and error_file:
        tags[ERROR_FILE] = error_file
    elif status and "acc_matrix" in result and (text := matrix_tag(result["acc_matrix"])):
        tags[ACC_MATRIX] = text
    return tags


def trial_tags(trial_id: str, sweep_id: str, parent_run_id: str, config: TrainConfig, search_space: str,
               config_group: str, seed_index: int) -> dict[str, str]:
    return {ROLE: ROLE_TRIAL, TRIAL_ID: trial_id, SWEEP_ID: sweep_id, "mlflow.parentRunId": parent_run_id,
            "mlflow.runName": trial_id, BENCHMARK: config.benchmark, SCENARIO: config.scenario, METHOD: config.method,
            SEARCH_SPACE: search_space, CONFIG_GROUP: str(config_group), SEED_INDEX: str(seed_index)}

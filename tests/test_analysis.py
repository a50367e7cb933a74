"""Sweep analysis on a real MLflow store written by a real (tiny) sweep."""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
import yaml

from analysis.figures import _budget, fig_a7
from analysis.runs import aggregate_seeds, load_trials, pareto_front


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2 configurations that train and 2 that diverge at task 1, 2 seeds each: 8 trials. (β = 1e300 overflows
    float32 at the first regularized task: a real divergence, no test hook in the trainer.)"""
    tmp = tmp_path_factory.mktemp("analysis")
    spec = {"name": "a", "base": {"preset": "split_digits", "num_tasks": 3, "iters": 15, "batch_size": 32},
            "space": {"beta": [0.01, 1e300], "lr": [0.001, 0.002]}, "seeds": 2, "num_samples": 4, "max_failures": 0,
            "search": {"algorithm": "grid", "max_concurrent": 2},
            "mlflow": {"experiment": "a", "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
            "storage_path": str(tmp / "ray_results")}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    # the pool records to MLflow as Ray does (tests/test_sweeps.py), without Ray's start-up
    proc = subprocess.run([sys.executable, "-m", "hnet.cli", "sweep", "run", str(tmp / "spec.yaml"), "--backend", "pool",
                           "--workers", "2", "--set", "threads=1", "--results", str(tmp / "results.jsonl")], cwd=tmp,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1 and "4 trials finished, 4 failed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return f"sqlite:///{tmp}/mlflow.db", tmp


def test_trials_frame_marks_failed_trials(store):
    uri, _ = store
    frame = load_trials("a", uri, with_matrix=True)
    assert len(frame) == 8 and frame["trial_id"].is_unique
    assert (frame["status"] == "failed").sum() == 4 and (frame["status"] == "completed").sum() == 4
    assert set(frame.loc[frame["status"] == "failed", "beta"]) == {"1e+300"}
    assert {"beta", "hnet_hidden", "seed", "acc_after_mean", "compression_ratio", "forgetting"} <= set(frame.columns)
    for matrix in frame.loc[frame["status"] == "completed", "acc_matrix"]:
        assert [len(row) for row in matrix] == [1, 2, 3]


def test_seed_aggregation(store):
    uri, _ = store
    table = aggregate_seeds(load_trials("a", uri))
    assert len(table) == 2 and (table["acc_after_mean_count"] == 2).all()
    assert table["acc_after_mean_std"].notna().all()
    assert set(table["lr"]) == {"0.001", "0.002"} and set(table["beta"]) == {"0.01"}


def test_fig_a7_files(store, tmp_path):
    uri, _ = store
    paths = fig_a7(load_trials("a", uri), tmp_path, experiment="a")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 2 and csv["pareto"].any()


def test_fig_a7_title_states_a_shared_budget_and_the_stochastic_regularizer():
    # MLflow params arrive as strings, results files as numbers: both read the same
    reduced = pd.DataFrame({"iters": ["500", "500"], "reg_subset": ["3", "3"]})
    assert _budget(reduced) == ", 500 it/task, regularizer on <= 3 random earlier tasks per step"
    assert _budget(pd.DataFrame({"iters": [2000, 2000], "reg_subset": [0, 0]})) == ", 2000 it/task"
    assert _budget(pd.DataFrame({"iters": [500, 2000], "reg_subset": [0, 3]})) == ""  # nothing shared: nothing said


def test_pareto_front_by_hand():
    frame = pd.DataFrame({"acc_after_mean": [90, 95, 93, 99, 80], "compression_ratio": [0.1, 0.5, 0.6, 0.9, 0.05]})
    # (0.05, 80) (0.1, 90) (0.5, 95) (0.9, 99) are undominated; (0.6, 93) is beaten by (0.5, 95)
    assert list(pareto_front(frame)) == [True, True, False, True, True]


def test_report_is_written_and_logged_to_the_parent_run(store, tmp_path):
    uri, workdir = store
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "hnet.cli", "report", "a", "--tracking-uri", uri, "--out", str(out)],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "8 (4 completed, 4 failed" in text.replace("trials: ", "") and "![Fig. A7](fig_a7.png)" in text
    assert "Pareto set" in text and "split_digits hnet cl1: best acc_after_mean" in text
    frame = load_trials("a", uri).query("status == 'completed'").set_index("trial_id")
    best = re.search(r"!\[accuracy matrix of (\w+)\]\(acc_matrix_\1\.png\)", text).group(1)
    assert frame.loc[best, "acc_after_mean"] == frame["acc_after_mean"].max()  # the default per-run view
    assert (out / f"acc_matrix_{best}.png").read_bytes()[:4] == b"\x89PNG"
    # by chunk size: the 2 trained configurations (both at the preset's chunk size), each a mean over its seeds
    per_config = frame.groupby("lr")["acc_after_mean"].mean()
    row = re.search(r"\| 2000 \| 2 \| ([\d.]+) \| ([\d.]+) \|", text.split("## Accuracy by chunk size")[1])
    assert abs(float(row.group(1)) - per_config.mean()) < 0.05 and abs(float(row.group(2)) - per_config.min()) < 0.05
    import mlflow
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("a").experiment_id], "tags.role = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/fig_a7.png", "report/fig_a7.pdf", "report/fig_a7.csv",
            f"report/acc_matrix_{best}.png"} <= logged


def test_report_heat_map_of_a_chosen_failed_trial(store, tmp_path):
    """--trial picks the per-run view; a trial that diverged at task 1 shows only the rows it finished."""
    from analysis.report import write_report

    uri, _ = store
    frame = load_trials("a", uri)
    failed = frame.loc[frame["status"] == "failed", "trial_id"].iloc[0]
    report = write_report("a", uri, tmp_path, log_to_mlflow=False, trials=[failed])
    assert f"## Accuracy matrix of {failed}" in report.read_text()
    assert (tmp_path / f"acc_matrix_{failed}.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no trial nope"):
        write_report("a", uri, tmp_path / "x", log_to_mlflow=False, trials=["nope"])


@pytest.mark.parametrize("command", ["report-unknown", "report-empty", "report-no-store", "ui-no-store", "ui-port-in-use"])
def test_bad_queries_are_one_line_errors(store, tmp_path, command):
    """Queries on a missing store, an unknown or empty experiment, or a port in use: one line, exit 2,
    nothing written (no report folder, no new SQLite file)."""
    import mlflow

    uri, _ = store
    missing = f"sqlite:///{tmp_path}/none.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if command == "report-empty":
            mlflow.tracking.MlflowClient(uri).create_experiment(f"empty-{tmp_path.name}")
        args, message = {
            "report-unknown": (["report", "nope", "--tracking-uri", uri], f"no MLflow experiment named 'nope' at {uri}"),
            "report-empty": (["report", f"empty-{tmp_path.name}", "--tracking-uri", uri], "holds no trial runs"),
            "report-no-store": (["report", "a", "--tracking-uri", missing], f"no MLflow store at {missing}"),
            "ui-no-store": (["ui", "--tracking-uri", missing], f"no MLflow store at {missing}"),
            "ui-port-in-use": (["ui", "--tracking-uri", uri, "--port", str(busy.getsockname()[1])], "choose another --port"),
        }[command]
        proc = subprocess.run([sys.executable, "-m", "hnet.cli", *args, *(["--out", str(tmp_path / "r")] * args[0].startswith("r"))],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("hnet: error:") and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@contextlib.contextmanager
def mlflow_ui(uri: str, cwd):
    """`hnet ui` on a free loopback port, ready to answer; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hnet.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_ui_server_answers_queries_and_serves_the_figure(store, tmp_path):
    """`hnet ui` on loopback: runs queried through it with a filter string, figure fetched over HTTP."""
    import mlflow

    from analysis.report import write_report

    uri, workdir = store
    write_report("a", uri, tmp_path / "report")
    with mlflow_ui(uri, workdir) as base:
        client = mlflow.tracking.MlflowClient(base)
        experiment_id = client.get_experiment_by_name("a").experiment_id
        good = client.search_runs([experiment_id], "tags.role = 'trial' and params.beta = '0.01'",
                                  order_by=["metrics.acc_after_mean DESC"])
        assert len(good) == 4 and all(r.info.status == "FINISHED" for r in good)
        parent = client.search_runs([experiment_id], "tags.role = 'sweep'")[0]
        with urllib.request.urlopen(f"{base}/get-artifact?path=report/fig_a7.png&run_uuid={parent.info.run_id}",
                                    timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_browser_lists_the_experiments_runs(store, tmp_path):
    """Headless Chromium renders the MLflow UI (a JavaScript app): the runs page lists the sweep,
    whose trials are nested under it, and the compare page shows every trial with its accuracy."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("HNET_REQUIRE_BROWSER"):  # set by .ci/run, which installs Debian's chromium
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    import json
    import urllib.parse

    import mlflow

    uri, workdir = store
    client = mlflow.tracking.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("a").experiment_id
    sweep = client.search_runs([experiment_id], "tags.role = 'sweep'")[0]
    trials = client.search_runs([experiment_id], "tags.role = 'trial'")
    assert len(trials) == 8

    def render(url: str) -> str:  # the DOM after the app has fetched and drawn its data
        # A fresh profile (a first visit) and no background traffic: the browser talks to loopback only.
        # A wide window: the table draws only the columns that fit.
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync", "--window-size=3000,1400",
                 f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom"]
        return subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=180).stdout

    def text(dom: str) -> str:  # visible text, cells separated by " | "
        import html as html_lib

        body = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
        return html_lib.unescape(re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"<[^>]+>", " | ", body)))

    from sweeps.record import runs_view_url

    with mlflow_ui(uri, workdir) as base:
        landing = render(f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning")  # the experiment's page
        view = render(runs_view_url(base, experiment_id))  # what `hnet ui` prints
        run_ids = urllib.parse.quote(json.dumps([r.info.run_id for r in trials]))
        compare_page = render(f"{base}/#/compare-runs?runs={run_ids}&experiments=%5B%22{experiment_id}%22%5D")
    # in model-training mode the experiment opens on its runs, not on MLflow 3's GenAI (traces) overview
    assert "Runs - Experiment" in text(landing) and "No data" not in landing and sweep.info.run_name in landing, \
        text(landing)[:2000]
    assert "Runs - Experiment" in text(view) and "No data" not in view
    # the saved view: every trial as a row (not folded under the sweep's run), with the answer as columns
    shown = text(view)
    assert "matching runs" in shown and all(r.info.run_name in shown for r in trials), shown[:3000]
    header = shown[shown.index("Run Name"):shown.index(trials[0].info.run_name)]  # the visible column headers
    for column in ("acc_after_mean", "compression_ratio", "beta", "lr", "benchmark", "method"):
        assert column in header, header
    assert "Compare Runs" in compare_page and "acc_after_mean" in compare_page
    missing = {r.info.run_name for r in trials if r.info.run_name not in compare_page}
    assert not missing, f"trials not shown in the UI: {missing}"


def test_trial_record_round_trips_through_mlflow(store):
    """Writer and reader share sweeps/record.py: a trained trial's DataFrame row gives back the
    configuration it trained with, its logged metrics, and its accuracy matrix from the one search
    (the acc_matrix tag) equal to the one its per-task metrics give."""
    import mlflow

    from analysis.runs import accuracy_matrix
    from hnet.config import TrainConfig
    from sweeps.record import RESULT_METRICS, TrialRecord

    uri, _ = store
    frame = load_trials("a", uri, with_matrix=True)
    client = mlflow.tracking.MlflowClient(uri)
    completed = frame[frame["status"] == "completed"]
    assert len(completed) == 4
    for _, row in completed.iterrows():
        trial = TrialRecord.from_row(row)
        run = client.get_run(row["run_id"]).data
        assert trial.config == TrainConfig.from_dict(run.params)
        assert trial.config.seed in (0, 1) and trial.config.beta == 0.01
        logged = {k: v for k, v in run.metrics.items() if k in RESULT_METRICS}
        assert trial.metrics.keys() == logged.keys() and all(trial.metrics[k] == pytest.approx(logged[k]) for k in logged)
        assert TrialRecord.from_row(trial.to_row()) == trial  # and back again
        per_task = accuracy_matrix(client, row["run_id"])
        assert len(trial.acc_matrix) == len(per_task) == trial.config.num_tasks
        assert all(a == pytest.approx(b, abs=1e-3) for a, b in zip(trial.acc_matrix, per_task))
    params = client.get_run(completed["run_id"].iloc[0]).data.params
    assert set(params) == set(TrainConfig.field_names())  # experiment fields only: no runtime, no bookkeeping


def test_load_trials_joins_the_trial_table_with_runs_it_does_not_hold(tmp_path):
    """A sweep's trial table (one download) plus one search for what ended after it was written or
    still runs: the same trials, statuses and matrices as reading every run by search."""
    from hnet.results import summarize
    from sweeps import record
    from sweeps.mlflow_logging import TrialRecorder, start_parent_run
    from sweeps.spec import parse_spec
    from sweeps.store import analyze_store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec({"name": "j", "base": {"preset": "split_digits", "num_tasks": 2}, "space": {"beta": [0.1, 1.0]},
                       "mlflow": {"experiment": "j", "tracking_uri": uri}})
    base = spec.base.to_flat_params()
    writer = TrialRecorder(spec, start_parent_run(spec, "j-1", str(tmp_path)), "j-1")

    def write(i: int, status: str | None, tasks: int = 2) -> None:
        matrix = [[90.0 + i, 80.0 + i][:t + 1] for t in range(tasks)]
        result = {"tasks_done": tasks, "acc_matrix": matrix, "acc_after_mean": summarize(matrix)["acc_after_mean"]}
        writer._write(f"t{i}", record.to_tune_config(spec.base.replace(beta=0.1 * (i + 1)), base, f"t{i}", 0),
                      result, status, None)

    for i in range(3):
        write(i, "completed")
    writer._write_table(force=True)  # the table holds t0..t2
    time.sleep(0.01)
    write(3, "pruned", tasks=1)  # ended after the table was written
    write(4, None, tasks=1)  # still running
    analyze_store(uri)
    frame = load_trials("j", uri, with_matrix=True).set_index("trial_id")
    assert sorted(frame.index) == ["t0", "t1", "t2", "t3", "t4"]
    assert frame["status"].to_dict() == {"t0": "completed", "t1": "completed", "t2": "completed", "t3": "pruned",
                                         "t4": "running"}
    assert frame.loc["t2", "acc_matrix"] == [[92.0], [92.0, 82.0]] and frame.loc["t4", "acc_matrix"] == [[94.0]]
    assert frame.loc["t1", "beta"] == "0.2" and frame.loc["t1", "acc_after_mean"] == pytest.approx(86.0)
    assert int(writer.client.get_run(writer.parent_run_id).data.tags[record.TABLE_TIME]) > 0

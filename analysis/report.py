"""`hnet report EXPERIMENT`: a Markdown report of a sweep, its Fig. A7 figure, logged to MLflow."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from hnet.config import UserError

from .figures import PAPER_ACCURACY, accuracy_heatmap, fig_a7
from .runs import accuracy_matrix, aggregate_seeds, load_results_files, load_trials, pareto_front

RATIO_BINS = [0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, float("inf")]


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(experiment: str, tracking_uri: str, out_dir: str | Path, log_to_mlflow: bool = True,
                 trials: list[str] | None = None, results_files: list[str] | None = None) -> Path:
    """Write report.md and the figure files to ``out_dir``; attach them to the sweep's parent run.

    ``trials`` (trial ids) get a per-run view, their accuracy matrix as a heat map; default: the best trial.
    With ``results_files`` (JSON lines of trainer results) the trials come from those files, merged,
    instead of MLflow, and nothing is logged.
    """
    from mlflow.tracking import MlflowClient

    if results_files:
        frame, source, log_to_mlflow = load_results_files(results_files), ", ".join(map(str, results_files)), False
    else:
        frame, source = load_trials(experiment, tracking_uri), tracking_uri
    if frame.empty:
        raise ValueError(f"experiment {experiment!r} at {source} holds no trial runs")
    unknown = sorted(set(trials or []) - set(frame["trial_id"]))
    if unknown:
        raise ValueError(f"no trial {', '.join(unknown)} in experiment {experiment!r}")
    completed = frame[frame["status"] == "completed"]
    if not trials and not completed.empty:
        trials = [completed.loc[completed["acc_after_mean"].idxmax(), "trial_id"]]
    out_dir = Path(out_dir)
    figure = fig_a7(frame, out_dir, experiment=experiment)
    client = MlflowClient(tracking_uri)
    heatmaps = {}
    for trial_id in trials or []:
        row = frame[frame["trial_id"] == trial_id].iloc[0]
        title = (f"{trial_id} ({row['status']}): compression {row['compression_ratio']:.3f}, "
                 f"acc_after_mean {row.get('acc_after_mean', float('nan')):.2f}")
        matrix = row["acc_matrix"] if "acc_matrix" in row else accuracy_matrix(client, row["run_id"])
        if matrix:
            heatmaps[trial_id] = accuracy_heatmap(matrix, out_dir / f"acc_matrix_{trial_id}.png", title)
    configs = aggregate_seeds(frame)
    searched = [c for c in configs.columns if configs[c].nunique() > 1
                and not c.startswith(("acc_", "forgetting", "compression_ratio"))]
    top = configs.sort_values("acc_after_mean_mean", ascending=False).head(10)
    pareto = configs[pareto_front(configs, "acc_after_mean_mean")].sort_values("compression_ratio")
    binned = configs.assign(ratio_bin=pd.cut(configs["compression_ratio"], RATIO_BINS).astype(str))
    by_bin = binned.groupby("ratio_bin", observed=True)["acc_after_mean_mean"].agg(["count", "mean", "max"]).reset_index()
    counts = frame["status"].value_counts()
    shown = searched + ["compression_ratio", "acc_after_mean_mean", "acc_after_mean_std", "acc_after_mean_count"]

    lines = [f"# Sweep report: {experiment}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{source}`.", "",
             f"- trials: {len(frame)} ({counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
             f"{counts.get('pruned', 0)} pruned, {counts.get('running', 0)} unfinished)",
             f"- configurations (seeds aggregated): {len(configs)}",
             f"- total training time: {frame['train_seconds'].sum() / 3600:.2f} h "
             f"(benchmarks: {', '.join(sorted(frame['benchmark'].unique()))})", "",
             "![Fig. A7](fig_a7.png)", "", "## Top configurations", "", _table(top[shown]),
             "## Pareto set (accuracy vs compression ratio)", "", _table(pareto[shown]),
             "## Accuracy by compression-ratio bin", "", _table(by_bin)]
    for trial_id, path in heatmaps.items():
        lines += [f"## Accuracy matrix of {trial_id}", "", f"![accuracy matrix of {trial_id}]({path.name})", ""]
    lines += ["## Comparison with the paper", ""]
    for benchmark in sorted(frame["benchmark"].unique()):
        best = frame[(frame["benchmark"] == benchmark) & (frame["status"] == "completed")]["acc_after_mean"].max()
        paper = PAPER_ACCURACY.get(benchmark)
        lines.append(f"- {benchmark}: best acc_after_mean {best:.2f} %"
                     + (f" vs the paper's {paper} % (HNET, CL1)" if paper else " (no paper reference)"))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")

    if log_to_mlflow:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        for parent in client.search_runs([experiment_id], filter_string="tags.role = 'sweep'"):
            for path in (report, *figure.values(), *heatmaps.values()):
                client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
    return report


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out or f"reports/{args.experiment}")
    try:
        report = write_report(args.experiment, args.tracking_uri, out, trials=args.trial, results_files=args.results)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    logged = "" if args.results else "; also logged to the sweep's parent run"
    print(f"report: {report}  (figure: {out / 'fig_a7.png'}{logged})", file=sys.stderr)
    return 0


def add_report_parser(sub, parser_class) -> None:
    p = sub.add_parser("report", help="Markdown report and Fig. A7 of a sweep's MLflow experiment")
    p.add_argument("experiment", help="MLflow experiment name (the sweep spec's mlflow.experiment)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/EXPERIMENT)")
    p.add_argument("--trial", action="append", metavar="TRIAL_ID",
                   help="per-run view: this trial's accuracy matrix as a heat map (repeatable; default the best trial)")
    p.add_argument("--results", nargs="+", metavar="FILE.jsonl",
                   help="read the trials from these results files (bench/gpu_pool.py), merged, instead of MLflow; "
                        "EXPERIMENT is then only the report's title")
    p.set_defaults(func=cmd_report)

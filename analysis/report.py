"""`hnet report EXPERIMENT`: a Markdown report of a sweep, its Fig. A7 figure, logged to MLflow."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from hnet.config import UserError

from .figures import PAPER_TABLE_1, accuracy_heatmap, fig_a7
from .runs import accuracy_matrix, aggregate_seeds, config_columns, load_results_files, load_trials, pareto_front

RATIO_BINS = [0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, float("inf")]


ACC = "acc after (mean ± std, n seeds)"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def portable(location: str) -> str:
    """A store URI or file path as a reader elsewhere can use it: local paths relative to the
    working directory (a remote URI stays as it is)."""
    prefix = "sqlite:///" if location.startswith("sqlite:///") else ""
    path = location[len(prefix):]
    if "://" in path or not os.path.isabs(path):
        return location
    return prefix + os.path.relpath(path)


def readable(configs: pd.DataFrame, searched: list[str], ui_url: str | None, experiment_id: str | None) -> pd.DataFrame:
    """Configurations as a reader wants them: searched fields, compression ratio, accuracy as
    mean ± std (n seeds), and a link to the MLflow run of its first seed when a UI address is known."""
    table = configs[searched].copy()
    table["compression ratio"] = configs["compression_ratio"].map(lambda r: f"{r:.4f}")
    table[ACC] = [f"{m:.2f} ± {s:.2f} ({int(n)})" if n > 1 else f"{m:.2f} (1)" for m, s, n in
                  zip(configs["acc_after_mean_mean"], configs["acc_after_mean_std"], configs["acc_after_mean_count"])]
    if ui_url and experiment_id and "run_id" in configs:
        base = ui_url.rstrip("/")
        table["MLflow"] = [f"[run]({base}/#/experiments/{experiment_id}/runs/{run_id})" if isinstance(run_id, str)
                           else "" for run_id in configs["run_id"]]
    return table


def write_report(experiment: str, tracking_uri: str, out_dir: str | Path, log_to_mlflow: bool = True,
                 trials: list[str] | None = None, results_files: list[str] | None = None,
                 ui_url: str | None = None, log_ratio: bool = False) -> Path:
    """Write report.md and the figure files to ``out_dir``; attach them to the sweep's parent run.

    ``trials`` (trial ids) get a per-run view, their accuracy matrix as a heat map; default: the best trial.
    With ``results_files`` (JSON lines of trainer results) the trials come from those files, merged,
    instead of MLflow, and nothing is logged.
    """
    from sweeps.store import open_store, server_access

    if results_files:
        frame, log_to_mlflow = load_results_files(results_files), False
        source, experiment_id, client = ", ".join(portable(str(f)) for f in results_files), None, None
    else:
        frame, source = load_trials(experiment, tracking_uri, with_matrix=True), portable(tracking_uri)
        client = open_store(tracking_uri)
        with server_access(tracking_uri, f"read experiment {experiment!r}"):
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    if frame.empty:
        raise ValueError(f"experiment {experiment!r} at {source} holds no trial runs")
    unknown = sorted(set(trials or []) - set(frame["trial_id"]))
    if unknown:
        raise ValueError(f"no trial {', '.join(unknown)} in experiment {experiment!r}")
    completed = frame[frame["status"] == "completed"]
    if not trials and not completed.empty:
        trials = [completed.loc[completed["acc_after_mean"].idxmax(), "trial_id"]]
    out_dir = Path(out_dir)
    figures = list(fig_a7(frame, out_dir, experiment=experiment, log_ratio=log_ratio).values())
    heatmaps = {}
    for trial_id in trials or []:
        row = frame[frame["trial_id"] == trial_id].iloc[0]
        title = (f"{trial_id} ({row['status']}): compression {row['compression_ratio']:.3f}, "
                 f"acc_after_mean {row.get('acc_after_mean', float('nan')):.2f}")
        matrix = row["acc_matrix"] if "acc_matrix" in row else accuracy_matrix(client, row["run_id"])
        if matrix:
            heatmaps[trial_id] = accuracy_heatmap(matrix, out_dir / f"acc_matrix_{trial_id}.png", title)
    report = out_dir / "report.md"
    report.write_text(render_report(experiment, source, frame, report_tables(frame), heatmaps,
                                    ui_url, experiment_id))
    if log_to_mlflow:
        attach_report(client, tracking_uri, experiment, experiment_id, [report, *figures, *heatmaps.values()])
    return report


def report_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's numbers: configurations with seeds aggregated, the top ten, the Pareto set, accuracy by
    compression-ratio bin (never learned vs learned and forgotten) and by chunk size."""
    configs = aggregate_seeds(frame)
    binned = configs.assign(ratio_bin=pd.cut(configs["compression_ratio"], RATIO_BINS).astype(str))
    # where accuracy is lost: tasks never learned (acc during < 100) or learned and then forgotten (during - after)
    binned["lost_to_forgetting"] = binned["acc_during_mean_mean"] - binned["acc_after_mean_mean"]
    by_bin = binned.groupby("ratio_bin", observed=True).agg(
        configurations=("acc_after_mean_mean", "count"), mean_after=("acc_after_mean_mean", "mean"),
        best_after=("acc_after_mean_mean", "max"), mean_during=("acc_during_mean_mean", "mean"),
        forgotten=("lost_to_forgetting", "mean")).reset_index()
    by_bin.columns = ["compression ratio", "configurations", "mean acc after", "best acc after",
                      "mean acc right after learning", "mean lost to forgetting"]
    by_chunk = configs.assign(chunk_size=pd.to_numeric(configs["chunk_size"])).groupby("chunk_size")[
        "acc_after_mean_mean"].agg(["count", "mean", "min"]).reset_index()
    by_chunk.columns = ["chunk size", "configurations", "mean acc after", "lowest acc after"]
    return {"configs": configs, "top": configs.sort_values("acc_after_mean_mean", ascending=False).head(10),
            "pareto": configs[pareto_front(configs, "acc_after_mean_mean")].sort_values("compression_ratio"),
            "by_bin": by_bin, "by_chunk": by_chunk}


def render_report(experiment: str, source: str, frame: pd.DataFrame, tables: dict[str, pd.DataFrame],
                  heatmaps: dict[str, Path], ui_url: str | None, experiment_id: str | None) -> str:
    """report.md's text."""
    configs = tables["configs"]
    searched = [c for c in config_columns(configs) if configs[c].nunique() > 1]  # what differs between rows
    counts = frame["status"].value_counts()
    lines = [f"# Sweep report: {experiment}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{source}`.", "",
             f"- trials: {len(frame)} ({counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
             f"{counts.get('pruned', 0)} pruned, {counts.get('running', 0)} unfinished)",
             f"- configurations (seeds aggregated): {len(configs)}",
             f"- total training time: {frame['train_seconds'].sum() / 3600:.2f} h "
             f"(benchmarks: {', '.join(sorted(frame['benchmark'].unique()))})", "",
             "![Fig. A7](fig_a7.png)", "", "## Top configurations", "",
             _table(readable(tables["top"], searched, ui_url, experiment_id)),
             "## Pareto set (accuracy vs compression ratio)", "",
             _table(readable(tables["pareto"], searched, ui_url, experiment_id)),
             "## Accuracy by compression-ratio bin", "",
             "Accuracy right after learning each task (acc during) says how well tasks were learned; acc during "
             "minus acc after is what was learned and then forgotten.", "", _table(tables["by_bin"]),
             "## Accuracy by chunk size", "", _table(tables["by_chunk"])]
    for trial_id, path in heatmaps.items():
        lines += [f"## Accuracy matrix of {trial_id}", "", f"![accuracy matrix of {trial_id}]({path.name})", ""]
    lines += ["## Comparison with the paper", ""]
    completed = frame[frame["status"] == "completed"]
    for (benchmark, method, scenario), group in completed.groupby(["benchmark", "method", "scenario"]):
        paper = PAPER_TABLE_1.get((benchmark, method, scenario))
        acc = group["acc_after_mean"]
        lines.append(f"- {benchmark} {method} {scenario}: best acc_after_mean {acc.max():.2f} %, mean over "
                     f"{len(acc)} trials {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f}"
                     + (f" vs the paper's {paper} % (Table 1)" if paper else " (no paper reference)"))
    return "\n".join(lines) + "\n"


def attach_report(client, tracking_uri: str, experiment: str, experiment_id: str, paths: list[Path]) -> None:
    """The report's files as artifacts of every sweep's parent run (a reader with READ permission only
    keeps them locally, told so in one line)."""
    from sweeps.store import AccessError, server_access

    try:
        with server_access(tracking_uri, f"attach the report to the runs of experiment {experiment!r}"):
            for parent in client.search_runs([experiment_id], filter_string="tags.role = 'sweep'"):
                for path in paths:
                    client.log_artifact(parent.info.run_id, str(path), artifact_path="report")
        print("report: logged to the sweep's parent run", file=sys.stderr)
    except AccessError as exc:
        print(f"hnet report: not logged to MLflow, kept in {paths[0].parent} only: {exc}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out or f"reports/{args.experiment}")
    try:
        report = write_report(args.experiment, args.tracking_uri, out, trials=args.trial, results_files=args.results,
                              ui_url=args.ui_url, log_ratio=args.log_ratio)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(f"report: {report}  (figure: {out / 'fig_a7.png'})", file=sys.stderr)
    return 0


def add_report_parser(sub, parser_class) -> None:
    p = sub.add_parser("report", help="Markdown report and Fig. A7 of a sweep's MLflow experiment")
    p.add_argument("experiment", help="MLflow experiment name (the sweep spec's mlflow.experiment)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--out", metavar="DIR", help="output folder (default reports/EXPERIMENT)")
    p.add_argument("--trial", action="append", metavar="TRIAL_ID",
                   help="per-run view: this trial's accuracy matrix as a heat map (repeatable; default the best trial)")
    p.add_argument("--results", nargs="+", metavar="FILE.jsonl",
                   help="read the trials from these results files (hnet sweep run --backend pool), merged, instead of MLflow; "
                        "EXPERIMENT is then only the report's title")
    p.add_argument("--ui-url", metavar="URL", help="MLflow UI address (e.g. http://127.0.0.1:5000): one run link per table row")
    p.add_argument("--log-ratio", action="store_true", help="Fig. A7 with a log-scale compression axis")
    p.set_defaults(func=cmd_report)

"""Fig. A7 of the paper: accuracy against compression ratio over many architectures."""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .runs import aggregate_seeds, pareto_front  # noqa: E402

# The paper's CL1 hypernetwork accuracies (HNET, Table 1 / Appendix D), acc_after_mean in %.
# The paper's Table 1 (mean acc after all tasks, %): (benchmark, method, scenario) -> accuracy; method hnet in
# cl2/cl3 is HNET+ENT.
PAPER_TABLE_1 = {
    (benchmark, method, scenario): value
    for benchmark, rows in {
        "permuted_mnist": {"ewc": (95.96, 94.42, 33.88), "si": (94.75, 95.33, 29.31), "hnet": (97.57, 92.80, 91.75),
                           "hnet_tir": (97.57, 97.58, 97.59), "hnet_r": (97.87, 97.60, 97.76)},
        "split_mnist": {"ewc": (99.12, 64.32, 19.96), "si": (99.09, 65.36, 19.99), "hnet": (99.79, 87.01, 69.48),
                        "hnet_tir": (99.79, 94.43, 89.59), "hnet_r": (99.83, 98.00, 95.30)},
    }.items()
    for method, values in rows.items()
    for scenario, value in zip(("cl1", "cl2", "cl3"), values)
}
PAPER_ACCURACY = {benchmark: PAPER_TABLE_1[benchmark, "hnet", "cl1"] for benchmark in ("split_mnist", "permuted_mnist")}
TITLES = {"split_mnist": "SplitMNIST", "permuted_mnist": "PermutedMNIST-10"}


def fig_a7(frame: pd.DataFrame, out_dir: str | Path, experiment: str = "", log_ratio: bool = False) -> dict[str, Path]:
    """Plot completed trials (mean ± std over seeds) per benchmark, coloured by chunk size;
    write PNG, PDF and CSV. ``log_ratio``: a log-scale compression axis (most small
    hypernetworks sit below 0.2)."""
    from matplotlib.colors import LogNorm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = frame[frame["status"] == "completed"]
    benchmarks = sorted(done["benchmark"].unique())
    if not benchmarks:
        raise ValueError("no completed trials to plot")
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(7 * len(benchmarks), 5), squeeze=False)
    tables = []
    chunks = pd.to_numeric(done["chunk_size"], errors="coerce")
    norm = LogNorm(vmin=max(1, chunks.min()), vmax=max(2, chunks.max()))
    for ax, benchmark in zip(axes[0], benchmarks):
        points = aggregate_seeds(done[done["benchmark"] == benchmark])
        front = pareto_front(points, "acc_after_mean_mean")
        points["pareto"] = front
        tables.append(points)
        ax.errorbar(points["compression_ratio"], points["acc_after_mean_mean"], yerr=points["acc_after_mean_std"].fillna(0),
                    fmt="none", ecolor="grey", alpha=0.4, zorder=1)
        dots = ax.scatter(points["compression_ratio"], points["acc_after_mean_mean"], s=18, zorder=2,
                          c=pd.to_numeric(points["chunk_size"]), cmap="viridis", norm=norm,
                          label=f"architectures ({len(points)})")
        frontier = points[front].sort_values("compression_ratio")
        ax.plot(frontier["compression_ratio"], frontier["acc_after_mean_mean"], "-", lw=1.2, color="tab:red",
                zorder=3, label="Pareto front")
        ax.axvline(1.0, color="grey", ls="--", lw=1, label="compression ratio 1")
        if benchmark in PAPER_ACCURACY:
            ax.axhline(PAPER_ACCURACY[benchmark], color="tab:green", ls=":", lw=1.5,
                       label=f"paper HNET CL1 ({PAPER_ACCURACY[benchmark]}%)")
        if log_ratio:
            ax.set_xscale("log")
        # compression_ratio, not compression_ratio_with_task_embeddings (the authors' count): say which
        ax.set_xlabel("compression ratio: hypernetwork weights (task embeddings not counted) / target weights"
                      + (", log scale" if log_ratio else ""), fontsize=9)
        ax.set_ylabel("final mean accuracy acc_after (%)")
        ax.set_title(TITLES.get(benchmark, benchmark), fontsize=11)
        ax.grid(alpha=0.3, which="both" if log_ratio else "major")
        ax.legend(fontsize=8, loc="best")
        fig.colorbar(dots, ax=ax, label="chunk size (log scale)")
    budget = _budget(done)
    fig.suptitle(f"Fig. A7{': ' + experiment if experiment else ''}\n"
                 f"{len(done)} trials{budget}, {time.strftime('%Y-%m-%d')}", fontsize=10)
    fig.tight_layout()
    paths = {"png": out_dir / "fig_a7.png", "pdf": out_dir / "fig_a7.pdf", "csv": out_dir / "fig_a7.csv"}
    fig.savefig(paths["png"], dpi=150)
    fig.savefig(paths["pdf"])
    plt.close(fig)
    pd.concat(tables).to_csv(paths["csv"], index=False)
    return paths


def _budget(done: pd.DataFrame) -> str:
    """What every plotted trial shares of the training budget: iterations per task and, when the
    stochastic regularizer of App. D was used, its subset size (a reduced study must say so)."""
    def shared(field: str) -> int | None:
        values = pd.to_numeric(done[field], errors="coerce").unique() if field in done else []
        return int(values[0]) if len(values) == 1 else None

    iters, subset = shared("iters"), shared("reg_subset")
    return ((f", {iters} it/task" if iters else "")
            + (f", regularizer on <= {subset} random earlier tasks per step" if subset else ""))


def accuracy_heatmap(matrix: list[list[float]], path: str | Path, title: str = "") -> Path:
    """One trial's accuracy matrix as a heat map: row i = after training task i, column j = test task j."""
    import numpy as np

    num_tasks = len(matrix)
    grid = np.full((num_tasks, max(len(row) for row in matrix)), np.nan)
    for i, row in enumerate(matrix):
        grid[i, :len(row)] = row
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * grid.shape[1], 0.8 + 0.7 * num_tasks))
    image = ax.imshow(grid, cmap="viridis", vmin=min(50.0, np.nanmin(grid)), vmax=100.0)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 80 else "black")
    ax.set_xticks(range(grid.shape[1]), [str(j) for j in range(grid.shape[1])])
    ax.set_yticks(range(num_tasks), [str(i) for i in range(num_tasks)])
    ax.set_xlabel("test accuracy on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path

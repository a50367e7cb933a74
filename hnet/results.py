"""What a continual-learning run reports: the accuracy summary and the result record.

Pure Python (no torch): the sweep layer and analysis read these names without the trainer.
"""
from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .counts import count_weights

# Scalar results of a run (after every task: running values over the tasks learned so far).
# Sweeps report them to Tune and log them as MLflow metrics under these names.
RESULT_METRICS = ("acc_after_mean", "acc_during_mean", "forgetting", "compression_ratio",
                  "compression_ratio_with_task_embeddings", "hnet_weights", "target_weights",
                  "task_embedding_weights", "num_chunks", "train_seconds", "iters_per_second",
                  "val_acc_after_mean", "val_acc_during_mean", "dead_units_first_layer", "task_inference_acc",
                  "replay_decoder_weights", "replay_hnet_weights", "replay_encoder_weights", "task_classifier_weights")
SUMMARY_METRICS = ("acc_after_mean", "acc_during_mean", "forgetting")  # what ``summarize`` derives from a matrix
FIXED_METRICS = tuple(m for m in RESULT_METRICS  # set by the architecture: the same after every task
                      if m.endswith("_weights") or m.startswith("compression_ratio") or m == "num_chunks")


def summarize(acc_matrix: list[list[float]]) -> dict[str, Any]:
    """acc_matrix[i][j]: accuracy (%) on task j after learning task i (j <= i)."""
    if not acc_matrix:
        return {}
    acc_during = [acc_matrix[t][t] for t in range(len(acc_matrix))]
    acc_after = list(acc_matrix[-1])
    earlier = range(len(acc_after) - 1)
    return {
        "acc_during": acc_during, "acc_after": acc_after,
        "acc_during_mean": sum(acc_during) / len(acc_during),
        "acc_after_mean": sum(acc_after) / len(acc_after),
        # mean drop from right-after-learning to the end, over the tasks learned before the last
        "forgetting": (sum(acc_during[t] - acc_after[t] for t in earlier) / len(earlier)) if earlier else 0.0,
    }



def result_dict(cfg: TrainConfig, state: dict[str, Any]) -> dict[str, Any]:
    seconds = sum(state["task_seconds"])
    tasks_done = state["next_task"]
    out = {
        "config": cfg.to_dict(),
        "metric": "mse" if cfg.spec.regression else "accuracy",  # what acc_matrix and its summaries hold
        **count_weights(cfg).to_dict(),
        "tasks_done": tasks_done,
        "acc_matrix": state["acc_matrix"],
        **summarize(state["acc_matrix"]),
        "task_seconds": state["task_seconds"],
        "train_seconds": seconds,
        "iters_per_second": tasks_done * cfg.iters / seconds if seconds > 0 else 0.0,
    }
    if state.get("task_inference_acc") is not None:  # HNET+ENT/TIR: % of test inputs whose task was inferred right
        out["task_inference_acc"] = state["task_inference_acc"]
    out.update(state.get("extra", {}))  # what callbacks add (hnet.diagnostics)
    if state["val_acc_matrix"]:
        val = summarize(state["val_acc_matrix"])
        out["val_acc_matrix"] = state["val_acc_matrix"]
        out["val_acc_after_mean"], out["val_acc_during_mean"] = val["acc_after_mean"], val["acc_during_mean"]
    return out

"""Test-time predictions in the three scenarios, and accuracy.

* cl1: the task is given; a hypernetwork uses the weights generated for it, a target network
  its head (multi-head).
* cl2 / cl3 with a hypernetwork (HNET+ENT, Sec. 3 of the paper): the task is *not* given. The
  target runs with the weights of every task learned so far, all in one batched call; the task
  whose output distribution has the lowest entropy is taken, and its prediction. cl2 answers
  the label within the task (e.g. odd/even on SplitMNIST), cl3 the global class,
  classes_per_task * inferred task + label.
* cl2 / cl3 with HNET+TIR: as HNET+ENT, but the task is the one a task-inference classifier
  (trained with replay, hnet/replay.py) names.
* cl2 / cl3 with a target network trained directly: its one shared head (cl2), or its head
  over the classes of all tasks seen so far (cl3, global labels).

``Scenario`` holds every difference between them; its cl2/cl3 prediction takes no task
argument: the task identity cannot leak.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import Benchmark
from .models import target_forward


@dataclass(frozen=True)
class Scenario:
    """How a run is trained and scored: the only place that branches on scenario and method."""

    name: str  # cl1 | cl2 | cl3
    classes_per_task: int
    weights_per_task: bool  # a hypernetwork (one weight set per task), or a target trained directly (one set)
    regression: bool = False  # one real output, MSE (regression_1d; cl1 only)

    @classmethod
    def of(cls, cfg: TrainConfig) -> "Scenario":
        return cls(cfg.scenario, cfg.spec.classes_per_task, cfg.generated_classifier, cfg.spec.regression)

    def train_loss(self, logits: torch.Tensor, labels: torch.Tensor, task: int, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy against the training labels (optionally smoothed), or MSE for a regression."""
        if self.regression:
            return F.mse_loss(logits[:, 0], labels)
        return F.cross_entropy(logits, self.train_labels(labels, task), label_smoothing=label_smoothing)

    def scored_labels(self, labels: torch.Tensor, task: int) -> torch.Tensor:
        """Task-local labels -> the labels a model is scored against (global in cl3)."""
        return labels + task * self.classes_per_task if self.name == "cl3" else labels

    def shared_logits(self, target, weights: torch.Tensor, x: torch.Tensor, task: int | None,
                      seen: int) -> torch.Tensor:
        """Logits of a target trained directly: its task head (cl1), its shared head (cl2), or the
        classes of the ``seen`` tasks so far (cl3)."""
        logits = target_forward(target, weights, x, task if self.name == "cl1" else 0)
        return logits[:, :seen * self.classes_per_task] if self.name == "cl3" else logits

    def logits_given_task(self, target, weights: torch.Tensor, x: torch.Tensor, task: int) -> torch.Tensor:
        """Logits with the task given (training, and cl1 at test): a hypernetwork's target always sees
        its task's classes (task-specific weights); a target trained directly its head or, in cl3, the
        classes so far."""
        if self.weights_per_task:
            return target_forward(target, weights, x, task)
        return self.shared_logits(target, weights, x, task, task + 1)

    def train_labels(self, labels: torch.Tensor, task: int) -> torch.Tensor:
        return labels if self.weights_per_task else self.scored_labels(labels, task)

    def replay_logits(self, target, weights: torch.Tensor, x: torch.Tensor, tasks: torch.Tensor,
                      seen: int) -> torch.Tensor:
        """HNET+R's distillation on replayed inputs (``tasks``: the task each was drawn for): the head of
        each input's task (cl1), the shared head (cl2), the classes of the ``seen`` tasks (cl3)."""
        if self.name == "cl1":
            logits = target_forward(target, weights, x, None).view(len(x), target.num_heads, -1)
            return logits[torch.arange(len(x), device=x.device), tasks]
        return self.shared_logits(target, weights, x, None, seen)

    def predict_without_task(self, target, weights: torch.Tensor, x: torch.Tensor, seen: int,
                             task_classifier=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cl2/cl3 predictions (and the inferred task, for a hypernetwork) without the task identity:
        the task from ``task_classifier(x, seen)`` (HNET+TIR) or of lowest entropy (HNET+ENT)."""
        if self.weights_per_task:
            task, label = infer_task(target, weights[:seen], x, task_classifier)
            return (label + task * self.classes_per_task if self.name == "cl3" else label), task
        return self.shared_logits(target, weights[0], x, None, seen).argmax(1), None


def infer_task(target, weights: torch.Tensor, x: torch.Tensor,
               task_classifier=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``weights`` (T, N) of the tasks learned so far. Returns, per input, the inferred task (of lowest
    predictive entropy, HNET+ENT, or ``task_classifier``'s, HNET+TIR) and the label that task's weights
    predict (with a multi-head target, each task's weights through its own head)."""
    logits = torch.func.vmap(lambda w: target_forward(target, w, x, None))(weights)  # (T, B, heads * classes)
    if target.num_heads > 1:  # task t's weights answer with task t's head
        tasks = torch.arange(len(weights), device=x.device)
        logits = logits.view(len(weights), len(x), target.num_heads, -1)[tasks, :, tasks]  # (T, B, classes)
    if task_classifier is not None:
        task = task_classifier(x, len(weights))
    else:
        log_p = F.log_softmax(logits, dim=-1)
        task = (-(log_p.exp() * log_p).sum(-1)).argmin(0)  # entropy (T, B) -> lowest per input
    label = logits[task, torch.arange(len(x), device=x.device)].argmax(-1)
    return task, label


@torch.no_grad()
def evaluate(cfg: TrainConfig, target, weights: torch.Tensor, bench: Benchmark, seen: int, part: str,
             batch_size: int, task_classifier=None) -> tuple[list[float], float | None]:
    """Accuracy (%) on tasks 0..seen-1 after learning ``seen`` tasks (a regression: mean squared error),
    and for HNET+ENT / HNET+TIR the share (%) of inputs whose task was inferred right. ``weights``: (seen, N), one row per task;
    ``task_classifier``: HNET+TIR's (x, seen) -> task."""
    was_training = target.training
    target.eval()  # dropout off, batch norm on each task's running statistics, whoever calls (a callback mid-task)
    try:
        scenario = Scenario.of(cfg)
        accs, inferred, total = [], 0, 0
        for t in range(seen):
            split = bench.eval_split(t, part)
            score = 0.0  # correct predictions, or a regression's squared errors
            for start in range(0, len(split.rows), batch_size):
                x = bench.inputs(t, part, split.rows[start:start + batch_size])
                y = scenario.scored_labels(split.labels[start:start + batch_size], t)
                if scenario.regression:
                    score += (scenario.logits_given_task(target, weights[t], x, t)[:, 0] - y).square().sum().item()
                    continue
                if scenario.name == "cl1":
                    pred, task = scenario.logits_given_task(target, weights[t], x, t).argmax(1), None
                else:
                    pred, task = scenario.predict_without_task(target, weights, x, seen, task_classifier)
                score += (pred == y).sum().item()
                if task is not None:
                    inferred += (task == t).sum().item()
            accs.append((1.0 if scenario.regression else 100.0) * score / len(split.rows))
            total += len(split.rows)
        return accs, (100.0 * inferred / total if scenario.weights_per_task and scenario.name != "cl1" else None)
    finally:
        target.train(was_training)

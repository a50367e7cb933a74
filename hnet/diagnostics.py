"""Diagnostics of a run as trainer callbacks; each adds its values to the result record.

``DeadUnits``: the init diagnostic of docs/init.md, the share of the target's first-layer units
that no input of a training batch of the first task activates (a dead ReLU gets no gradient),
with the weights learned after ``at`` iterations, on the batch of that iteration (fully connected
targets only).
"""
from __future__ import annotations

import itertools
from typing import Any

import torch

from .config import TrainConfig
from .data import Benchmark
from .models import MLP
from .trainer import Callback, task_generator


@torch.no_grad()
def dead_unit_fraction(target: torch.nn.Module, weights: torch.Tensor, x: torch.Tensor) -> float:
    """Fraction of the target's first-layer units, with the flat ``weights``, that are not positive
    for any input of ``x`` (dead ReLUs: no gradient reaches their weights)."""
    layer = target.layers[0]
    n_weight, n_bias = layer.weight.numel(), layer.bias.numel()
    pre = x @ weights[:n_weight].view(layer.weight.shape).T + weights[n_weight:n_weight + n_bias]
    return (pre <= 0).all(0).float().mean().item()


class DeadUnits(Callback):
    def __init__(self, at: int = 100) -> None:
        self.at, self.value = at, None

    def on_models(self, target: torch.nn.Module, learner, bench: Benchmark) -> None:
        self.target, self.learner, self.bench = target, learner, bench

    def on_task_start(self, task: int, cfg: TrainConfig) -> None:
        self.cfg = cfg

    @torch.no_grad()
    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        if task != 0 or iteration + 1 != min(self.at, self.cfg.iters) or not isinstance(self.target, MLP):
            return
        weights = self.learner.weights()
        # the batch training saw at this iteration, drawn again from a copy of task 0's stream (training's is untouched)
        generator = task_generator(self.cfg, 0, weights.device)
        x, _ = next(itertools.islice(self.bench.train_batches(0, self.cfg.batch_size, generator), iteration, None))
        self.value = dead_unit_fraction(self.target, weights, x)

    def results(self) -> dict[str, Any]:
        return {} if self.value is None else {"dead_units_first_layer": self.value}

"""Baselines that train the target network's own weights: fine-tuning, online EWC and SI.

The weights they train are ``hnet.models.TargetWeights`` (the target's flat weight vector),
held by ``hnet.learners.PenaltyLearner``. Both methods add a quadratic penalty to the task loss
(``QuadraticPenalty``), Σ_i Ω_i (θ_i − θ*_i)², with θ* the weights after the previous task:

* online EWC (Schwarz et al. 2018): Ω = λ/2 · F̃, F̃ ← γ F̃ + F_t after each task, F_t the
  diagonal Fisher information of task t (expected over the model's own predicted labels, as in
  van de Ven & Tolias 2019), averaged over the task's training inputs;
* SI (Zenke et al. 2017): Ω = c · Σ_t ω_t / (Δ_t² + ξ), ω_t = −Σ_steps g · δθ the path integral
  of the gradient along the task's parameter updates, Δ_t the task's total change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Benchmark
from .evaluation import Scenario

FISHER_SAMPLES = 1000  # training inputs of a task (drawn at random) over which EWC's Fisher is averaged


class QuadraticPenalty:
    """Σ_i Ω_i (θ_i − θ*_i)², θ* the weights after the previous task; subclasses say how Ω grows."""

    def __init__(self, cfg: TrainConfig, weights: nn.Parameter) -> None:
        self.cfg = cfg
        self.omega = torch.zeros_like(weights.detach())  # Ω without the strength factor
        self.anchor: torch.Tensor | None = None  # θ*: weights after the previous task
        self.strength = 0.0

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"omega": self.omega, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        self.omega, self.anchor = state["omega"], state["anchor"]

    def loss(self, weights: torch.Tensor) -> torch.Tensor | None:
        if self.anchor is None:  # the first task: nothing to protect yet
            return None
        return (self.omega * (weights - self.anchor).square()).sum()

    def optimizer_step(self, weights: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def end_task(self, weights: nn.Parameter, target: nn.Module, bench: Benchmark, task: int,
                 generator: torch.Generator) -> None:
        self.anchor = weights.detach().clone()


class EWCPenalty(QuadraticPenalty):
    """Online EWC: Ω = λ/2 · F̃, F̃ ← γ F̃ + F_t (the Fisher of each task, on a sample of its training inputs)."""

    def __init__(self, cfg: TrainConfig, weights: nn.Parameter) -> None:
        super().__init__(cfg, weights)
        self.strength = cfg.ewc_lambda / 2

    def end_task(self, weights: nn.Parameter, target: nn.Module, bench: Benchmark, task: int,
                 generator: torch.Generator) -> None:
        rows = bench.eval_split(task, "train").rows
        sample = rows[torch.randperm(len(rows), generator=generator, device=generator.device)[:FISHER_SAMPLES]]
        fisher = diagonal_fisher(task_log_probs(self.cfg, target, task), weights, bench.inputs(task, "train", sample))
        self.accumulate(weights, fisher)

    @torch.no_grad()
    def accumulate(self, weights: nn.Parameter, fisher: torch.Tensor) -> None:
        """F̃ ← γ F̃ + F_t, and the weights after task t become θ*."""
        self.omega.mul_(self.cfg.ewc_gamma).add_(fisher)
        self.anchor = weights.detach().clone()


class SIPenalty(QuadraticPenalty):
    """SI: Ω = c · Σ_t ω_t / (Δ_t² + ξ), ω_t the path integral −Σ_steps g · δθ of the task's updates."""

    def __init__(self, cfg: TrainConfig, weights: nn.Parameter) -> None:
        super().__init__(cfg, weights)
        self.strength = cfg.si_c
        self.path = torch.zeros_like(self.omega)  # ω of the current task
        self.task_start = weights.detach().clone()  # θ at the start of the current task

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {**super().state_dict(), "path": self.path, "task_start": self.task_start}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        super().load_state_dict(state)
        self.path, self.task_start = state["path"], state["task_start"]

    def optimizer_step(self, weights: nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
        before = weights.detach().clone()
        optimizer.step()
        with torch.no_grad():
            self.path.sub_(weights.grad * (weights - before))  # ω −= g · δθ (g: the gradient the step used)

    @torch.no_grad()
    def end_task(self, weights: nn.Parameter, target: nn.Module, bench: Benchmark, task: int,
                 generator: torch.Generator) -> None:
        change = weights - self.task_start
        self.omega.add_(self.path / (change.square() + self.cfg.si_xi))
        self.path.zero_()
        self.task_start = weights.detach().clone()
        super().end_task(weights, target, bench, task, generator)


PENALTIES = {"ewc": EWCPenalty, "si": SIPenalty}  # hnet.methods names each method's penalty


def diagonal_fisher(log_probs_of, weights: torch.Tensor, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean over ``inputs`` of (∂ log p(ŷ | x) / ∂θ)², ŷ the model's predicted label; per-sample
    gradients in batches (``torch.func``). ``log_probs_of(weights, x)``: log-probabilities of one input."""
    def sample_grad(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        def log_p_predicted(w_: torch.Tensor) -> torch.Tensor:
            return log_probs_of(w_, x).max()  # log p(ŷ | x), ŷ the most probable label
        return torch.func.grad(log_p_predicted)(w)

    total = torch.zeros_like(weights)
    w = weights.detach()
    for start in range(0, len(inputs), batch_size):
        grads = torch.func.vmap(sample_grad, in_dims=(None, 0))(w, inputs[start:start + batch_size])
        total += grads.square().sum(0)
    return total / len(inputs)


def task_log_probs(cfg: TrainConfig, target, task: int):
    """log p(· | x) of one input as the baseline trains task ``task`` (its head, or the seen classes)."""
    scenario = Scenario.of(cfg)

    def log_probs_of(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(scenario.shared_logits(target, weights, x[None], task, task + 1)[0], dim=-1)
    return log_probs_of

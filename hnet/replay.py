"""Hypernetwork-protected generative replay (App. B of the paper): HNET+TIR and HNET+R.

The replay model is a VAE. Its encoder is an ordinary network, trained on each task's data as
it comes; its decoder's weights are generated per task by a second chunked hypernetwork from that
task's embedding and protected by Eq. 2 exactly like the classifier's (``HypernetLearner`` with
the replay β). The decoder gets a latent sample and a fixed random 100-d input per task (App. C:
"a sample from a standard multivariate normal ... constant throughout the experiment and not
learned"). Replay of task t is drawn through embedding t.

The VAE loss follows van de Ven & Tolias (2019), whose setup the paper replicates: binary
cross-entropy per pixel plus the analytic KL divergence divided by the number of pixels, so the
loss sits on a cross-entropy's scale next to β·Eq. 2.

While task t is learned the decoder weights of tasks < t are those at the task's start (the
same values Eq. 2 holds the hypernetwork to), generated once; a replay batch is one batched
decoder call over all earlier tasks (``torch.func.vmap``), no loop over tasks.

* ``TaskInferenceLearner`` (HNET+TIR): the hypernetwork classifier of ``HypernetLearner``,
  plus a task-inference classifier (a growing softmax over the tasks so far) trained on the
  current task's data and replay of the earlier tasks with hard task targets; at test the
  classifier predicts with the weights of the inferred task.
* ``ReplayLearner`` (HNET+R): the classifier is the target network trained directly (as the
  baselines), on current data plus replay with soft targets from the classifier as it was
  before the task (distillation at temperature `replay_temperature`, 2 as van de Ven & Tolias' DGR+distill).

Current and replayed data weigh 1/(t+1) and t/(t+1) with t earlier tasks, so every task
counts the same (van de Ven & Tolias).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .counts import REPLAY_CONDITION_DIM, replay_layer_sizes
from .evaluation import Scenario
from .learners import HypernetLearner, PenaltyLearner
from .models import MLP, ChunkedHypernetwork, TargetWeights, build_hypernetwork, num_weights, target_forward


class ReplayVAE(nn.Module):
    """Encoder (own weights), decoder (weights from ``hnet``, one set per task) and the decoder's fixed
    per-task inputs. Trained with its own Adam, a fresh one per task, at the run's constant lr."""

    def __init__(self, cfg: TrainConfig, device: torch.device | str, reg_form: str = "factored") -> None:
        super().__init__()
        enc, dec = replay_layer_sizes(cfg)
        self.latent_dim, self.lr = cfg.replay_latent_dim, cfg.lr
        self.encoder = MLP(enc[0], tuple(enc[1:-1]), enc[-1])
        with torch.device("meta"):  # weights always come from the hypernetwork; not a submodule (no state)
            self.__dict__["decoder"] = MLP(dec[0], tuple(dec[1:-1]), dec[-1])
        hcfg = cfg.replay_hnet_config()
        self.hnet = build_hypernetwork(hcfg, self.decoder)
        self.register_buffer("conditions", torch.randn(cfg.num_tasks, REPLAY_CONDITION_DIM))
        self.to(device)
        self.protector = HypernetLearner(hcfg, self.hnet, device, reg_form)  # Eq. 2 on the decoder's hypernetwork

    def start_task(self, task: int) -> None:
        self.task = task
        self.optimizer = torch.optim.Adam([*self.protector.start_task(task), *self.encoder.parameters()], lr=self.lr)
        with torch.no_grad():  # the earlier tasks' decoders, as Eq. 2 keeps them during this task
            self.earlier = self.hnet(self.hnet.embeddings(range(task))) if task else None

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """VAE loss of this task's decoder on ``x`` (pixels in [0, 1]): BCE per pixel + KL / pixels."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        z = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=generator, device=x.device)
        logits = target_forward(self.decoder, self.protector.weights(), self._decoder_input(z, self.task))
        reconstruction = F.binary_cross_entropy_with_logits(logits, x)
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum(1).mean() / x.shape[1]
        return reconstruction + kl

    def train_step(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, generator)
        loss.backward()
        self.protector.before_step(generator)
        self.protector.penalty_backward(self.optimizer, generator)
        self.optimizer.step()
        return loss

    def _decoder_input(self, z: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        return torch.cat([z, self.conditions[task].expand(*z.shape[:-1], -1)], dim=-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` replayed inputs spread evenly over the earlier tasks, and the task each was drawn for:
        all tasks in one batched decoder call, each through its own decoder weights."""
        tasks = len(self.earlier)
        per_task = math.ceil(n / tasks)
        z = torch.randn(tasks, per_task, self.latent_dim, generator=generator, device=self.earlier.device)
        inputs = torch.cat([z, self.conditions[:tasks, None].expand(-1, per_task, -1)], dim=-1)
        logits = torch.func.vmap(lambda w, h: target_forward(self.decoder, w, h))(self.earlier, inputs)
        x = torch.sigmoid(logits).reshape(tasks * per_task, -1)[:n]  # Bernoulli means as inputs
        task_ids = torch.arange(tasks, device=x.device).repeat_interleave(per_task)[:n]
        return x, task_ids

    def weight_counts(self) -> dict[str, int]:
        return {"replay_decoder_weights": num_weights(self.decoder),
                "replay_hnet_weights": sum(p.numel() for p in self.hnet.theta().values()),
                "replay_encoder_weights": num_weights(self.encoder)}


def mix(current: torch.Tensor, replayed: torch.Tensor | None, earlier: int, how: str = "by_tasks") -> torch.Tensor:
    """Current and replayed losses weighted 1/(t+1) and t/(t+1) after t tasks (every task counts the same,
    van de Ven & Tolias 2019), or equally."""
    if replayed is None:
        return current
    return (current + replayed) / 2 if how == "equal" else (current + earlier * replayed) / (earlier + 1)


class TaskInferenceLearner(HypernetLearner):
    """HNET+TIR: the hypernetwork classifier; the task is inferred by a classifier trained with replay."""

    def __init__(self, cfg: TrainConfig, hnet: ChunkedHypernetwork, device: torch.device | str,
                 reg_form: str = "factored") -> None:
        super().__init__(cfg, hnet, device, reg_form)
        self.replay = ReplayVAE(cfg, device, reg_form)
        self.task_classifier = MLP(cfg.spec.input_dim, cfg.target_hidden, cfg.num_tasks,
                                   cfg.target_activation).to(device)

    def start_task(self, task: int) -> list[nn.Parameter]:
        self.replay.start_task(task)
        self.task_optimizer = torch.optim.Adam(self.task_classifier.parameters(), lr=self.cfg.lr)
        return super().start_task(task)

    def side_step(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """The task classifier on this batch (task t) and replay of tasks < t; then the VAE on the batch.
        Task 0 alone has nothing to tell apart: the classifier starts learning with the second task."""
        if self.task:
            x_replay, t_replay = self.replay.sample(len(x), generator)
            self.task_optimizer.zero_grad(set_to_none=True)
            logits = self.task_classifier(torch.cat([x, x_replay]))[:, :self.task + 1]  # growing softmax
            current = F.cross_entropy(logits[:len(x)], torch.full((len(x),), self.task, device=x.device))
            mix(current, F.cross_entropy(logits[len(x):], t_replay), self.task, self.cfg.replay_mix).backward()
            self.task_optimizer.step()
        self.replay.train_step(x, generator)

    @torch.no_grad()
    def infer_task(self, x: torch.Tensor, seen: int) -> torch.Tensor:
        return self.task_classifier(x)[:, :seen].argmax(1)

    def weight_counts(self) -> dict[str, int]:
        return {**super().weight_counts(), **self.replay.weight_counts(),
                "task_classifier_weights": num_weights(self.task_classifier)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "replay": self.replay.state_dict(),
                "task_classifier": self.task_classifier.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.replay.load_state_dict(state["replay"])
        self.task_classifier.load_state_dict(state["task_classifier"])


class ReplayLearner(PenaltyLearner):
    """HNET+R: the target network trained directly, on current data plus replay with the soft targets of
    the classifier as it was before the task."""

    def __init__(self, cfg: TrainConfig, target_weights: TargetWeights, device: torch.device | str,
                 reg_form: str = "factored") -> None:
        super().__init__(cfg, target_weights, device, reg_form)
        self.replay = ReplayVAE(cfg, device, reg_form)

    def start_task(self, task: int) -> list[nn.Parameter]:
        self.replay.start_task(task)
        self.previous = self.module.weights.detach().clone()  # the soft targets' classifier
        return super().start_task(task)

    def task_loss(self, target: nn.Module, scenario: Scenario, x: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        current = super().task_loss(target, scenario, x, y, generator)
        if not self.task:
            return current
        x_replay, t_replay = self.replay.sample(len(x), generator)
        temperature = self.cfg.replay_temperature
        with torch.no_grad():
            soft = F.softmax(scenario.replay_logits(target, self.previous, x_replay, t_replay, self.task)
                             / temperature, dim=1)
        log_p = F.log_softmax(scenario.replay_logits(target, self.module.weights, x_replay, t_replay, self.task + 1)
                              / temperature, dim=1)
        # cl3: the old classifier knew the earlier tasks' classes only; the current task's get probability 0
        soft = F.pad(soft, (0, log_p.shape[1] - soft.shape[1]))
        distill = -(soft * log_p).sum(1).mean() * temperature ** 2  # T²: the gradient's scale independent of T
        return mix(current, distill, self.task, self.cfg.replay_mix)

    def side_step(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self.replay.train_step(x, generator)

    def weight_counts(self) -> dict[str, int]:
        return {**super().weight_counts(), **self.replay.weight_counts()}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.module.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["target"])
        self.replay.load_state_dict(state["replay"])

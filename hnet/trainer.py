"""The continual trainer: tasks one after another, each method's penalty protecting the earlier ones.

``train`` is one loop for every method; what differs between methods lives in their learner
(``hnet.learners``: the hypernetwork with Eq. 2, or the target's own weights with a weight
penalty; ``hnet.replay``: those two with a replay VAE trained beside them). It knows nothing of
Ray or MLflow: progress, Tune reports, MLflow logging and diagnostics are ``Callback``s. A checkpoint written at every task boundary holds everything
needed to continue with the next task; resuming gives the same result as an uninterrupted run.
"""
from __future__ import annotations

import ctypes
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import Runtime, TrainConfig
from .counts import count_weights
from .data import Benchmark, load_benchmark
from .evaluation import Scenario, evaluate
from .graphs import CapturedStep
from .learners import HypernetLearner, Learner, PenaltyLearner
from .models import build_models
from .replay import ReplayLearner, TaskInferenceLearner
from .results import result_dict


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Callback:
    """Hooks of the trainer; override what you need. ``results`` are added to the result record."""

    def on_models(self, target: torch.nn.Module, learner, bench: Benchmark) -> None: ...  # once, first

    def on_task_start(self, task: int, cfg: TrainConfig) -> None: ...

    def on_iteration(self, task: int, iteration: int, loss_task: torch.Tensor, loss_reg: torch.Tensor | None) -> None: ...

    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None: ...

    def results(self) -> dict[str, Any]:
        return {}


def train(cfg: TrainConfig, bench: Benchmark | None = None, callbacks: Sequence[Callback] = (),
          checkpoint: str | os.PathLike | None = None, resume: bool = False,
          runtime: Runtime | None = None) -> dict[str, Any]:
    """Learn ``cfg.num_tasks`` tasks in order; return counts, accuracy matrix and timings. ``checkpoint`` is
    rewritten (atomically) after every task; with ``resume`` training continues after the last task it holds."""
    cfg.validate()
    count_weights(cfg)  # also refuses a chunking that cannot work, before anything is built
    runtime = (runtime or Runtime()).validate()
    device = prepare_device(runtime)
    bench = bench or load_benchmark(cfg, device, runtime.data_root)
    target, learner = build_learner(cfg, device, runtime.reg_form_for(cfg))
    scenario = Scenario.of(cfg)
    state = dict(next_task=0, acc_matrix=[], val_acc_matrix=[], task_seconds=[], task_inference_acc=None, extra={})
    if resume and checkpoint and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, cfg, target, learner, state, device)
    for cb in callbacks:
        cb.on_models(target, learner, bench)

    for task in range(state["next_task"], cfg.num_tasks):
        for cb in callbacks:
            cb.on_task_start(task, cfg)
        started = time.perf_counter()
        generator = task_generator(cfg, task, device)
        graphed = use_cuda_graph(cfg, runtime, device)
        optimizer, schedule = make_optimizer(cfg, learner.start_task(task), graphed, device)
        batches = bench.train_batches(task, cfg.batch_size, generator)
        step = make_step(learner, target, scenario, optimizer, generator, graphed)
        target.train()  # dropout on, batch norm on the batch's statistics (updating this task's running ones)
        for it in range(cfg.iters):
            x, y = next(batches)
            learner.before_step(generator)  # the regularizer's random task subset (App. D), outside the graph
            loss_task, loss_reg = step(x, y)
            learner.side_step(x, generator)  # HNET+TIR / HNET+R: the replay VAE (and TIR's task classifier)
            if schedule:
                schedule.step()
            for cb in callbacks:
                cb.on_iteration(task, it, loss_task, loss_reg)
        if not math.isfinite(loss_task.item()):
            raise TrainingDiverged(f"loss is {loss_task.item()} at task {task}")
        target.eval()  # EWC's Fisher on the trained network: no dropout, no batch-norm update
        learner.end_task(target, bench, generator)
        score_tasks_so_far(cfg, target, learner, bench, task + 1, runtime.eval_batch_size, state)
        state["task_seconds"].append(time.perf_counter() - started)
        state["next_task"] = task + 1
        state["extra"].update({key: value for cb in callbacks for key, value in cb.results().items()})
        if checkpoint:
            save_checkpoint(checkpoint, cfg, target, learner, state)
        for cb in callbacks:
            cb.on_task_end(task, result_dict(cfg, state), Path(checkpoint) if checkpoint else None)
    return result_dict(cfg, state)


def make_step(learner: Learner, target: torch.nn.Module, scenario: Scenario, optimizer: torch.optim.Optimizer,
              generator: torch.Generator, graphed: bool = False):
    """One training step on a batch (x, y): the task loss, the learner's penalty, the optimizer step;
    returns (task loss, penalty or None). ``graphed``: captured as a CUDA graph (``CapturedStep``)."""
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        optimizer.zero_grad(set_to_none=True)
        loss_task = learner.task_loss(target, scenario, x, y, generator)  # HNET+R: with replay
        loss_task.backward()
        loss_reg = learner.penalty_backward(optimizer, generator)  # Eq. 2, or EWC's / SI's penalty
        learner.optimizer_step(optimizer)
        return loss_task, loss_reg
    return CapturedStep(step) if graphed else step


def score_tasks_so_far(cfg: TrainConfig, target: torch.nn.Module, learner: Learner, bench: Benchmark, seen: int,
                       eval_batch_size: int, state: dict[str, Any]) -> None:
    """Test (and validation) accuracy of every task learned so far, appended to the trainer state."""
    weights = learner.task_weights(seen)  # one row per task learned so far
    accs, state["task_inference_acc"] = evaluate(cfg, target, weights, bench, seen, "test", eval_batch_size,
                                                 learner.infer_task)
    state["acc_matrix"].append(accs)
    if cfg.val_fraction > 0:
        state["val_acc_matrix"].append(evaluate(cfg, target, weights, bench, seen, "val", eval_batch_size,
                                                learner.infer_task)[0])


LEARNERS = {"hypernet": HypernetLearner, "task_inference": TaskInferenceLearner, "replay": ReplayLearner,
            "penalty": PenaltyLearner}  # the names hnet.methods gives each method's learner


def build_learner(cfg: TrainConfig, device: torch.device | str = "cpu",
                  reg_form: str = "factored") -> tuple[torch.nn.Module, Learner]:
    """The target network (weights always from outside) and the learner of ``cfg.method``."""
    target, model = build_models(cfg, device)
    return target, LEARNERS[cfg.method_kind.learner_in(cfg.scenario_kind)](cfg, model, device, reg_form)


def task_generator(cfg: TrainConfig, task: int, device: torch.device | str) -> torch.Generator:
    """The random stream of one task (batches, the regularizer's task subset, EWC's Fisher sample): seeded
    per task, so a resumed run draws what an uninterrupted one does."""
    return torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + task)


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], graphed: bool,
                   device: torch.device) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LRScheduler | None]:
    """A fresh Adam per task and, with ``lr_schedule: cosine``, its schedule over the task's iterations
    (the task's last iterate settles instead of being a sample of constant-lr noise; docs/results.md).
    A captured CUDA graph reads lr from a tensor the schedule refills."""
    cosine = cfg.lr_schedule == "cosine"
    optimizer = torch.optim.Adam(params, capturable=graphed,
                                 lr=torch.tensor(cfg.lr, device=device) if graphed and cosine else cfg.lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.iters) if cosine else None


def use_cuda_graph(cfg: TrainConfig, runtime: Runtime, device: torch.device) -> bool:
    """Capture the step on GPUs (the regularizer's task subset is drawn before it, into a fixed tensor); not with
    replay, whose sampling inside the step draws from the task's generator."""
    return runtime.cuda_graph and device.type == "cuda" and not cfg.uses_replay


def prepare_device(runtime: Runtime) -> torch.device:
    device = resolve_device(runtime.device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} requested but CUDA is not available")
    return torch.device(name)


def keep_freed_memory() -> None:
    """Let glibc keep freed buffers of up to 32 MB instead of returning them to the OS.

    Every iteration allocates and frees MB-sized tensors (generated weights, their
    gradients); with glibc's defaults each one is fresh mmap'd memory and pays a page
    fault per 4 KB on first touch, a large share of a CPU iteration. Linux/glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 512 * 2**20)


def save_checkpoint(path: str | os.PathLike, cfg: TrainConfig, target: torch.nn.Module, learner,
                    state: dict[str, Any]) -> None:
    """The learner, the target's buffers (ResNet-32's per-task batch-norm statistics) and the trainer state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": cfg.to_dict(), **learner.state_dict(), "target_buffers": dict(target.named_buffers()),
                **state}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint


def load_checkpoint(path: str | os.PathLike, cfg: TrainConfig, target: torch.nn.Module, learner,
                    state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The learner and the target's buffers restored from ``path``; returns the trainer state it holds."""
    saved = torch.load(path, map_location=device, weights_only=True)
    if TrainConfig.from_dict(saved["config"]).to_dict() != cfg.to_dict():  # fields it predates: defaults
        raise ValueError(f"checkpoint {path} was written for a different configuration")
    try:
        learner.load_state_dict(saved)
    except (KeyError, RuntimeError) as exc:  # a layout this version does not write
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} was written in another layout (an older version?): {reason}; "
                         "delete it to train from the start") from None
    for name, saved_buffer in saved.get("target_buffers", {}).items():
        target.get_buffer(name).copy_(saved_buffer)
    return {k: saved.get(k, default) for k, default in state.items()}

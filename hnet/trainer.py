"""The continual trainer: tasks one after another, Eq. 2 protecting the earlier ones.

It knows nothing of Ray or MLflow: progress, Tune reports and MLflow logging are
``Callback``s. A checkpoint written at every task boundary holds everything needed to
continue with the next task; resuming gives the same result as an uninterrupted run.
"""
from __future__ import annotations

import ctypes
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import Runtime, TrainConfig
from .data import Benchmark, load_benchmark
from .graphs import CapturedStep
from .baselines import FISHER_SAMPLES, WeightPenalty, diagonal_fisher, task_log_probs
from .evaluation import evaluate, task_logits, train_labels
from .models import build_models, dead_unit_fraction
from .regularizer import adam_lookahead, output_regularizer, snapshot
from .results import result_dict


DEAD_UNITS_AT = 100  # iteration of the first task at which dead first-layer target units are counted


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Callback:
    """Hooks of the trainer; override what you need."""

    def on_models(self, target: torch.nn.Module, hnet: torch.nn.Module, bench: Benchmark) -> None: ...  # once, first

    def on_task_start(self, task: int, cfg: TrainConfig) -> None: ...

    def on_iteration(self, task: int, iteration: int, loss_task: torch.Tensor, loss_reg: torch.Tensor | None) -> None: ...

    def on_task_end(self, task: int, summary: dict[str, Any], checkpoint: Path | None) -> None: ...


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


def use_cuda_graph(cfg: TrainConfig, runtime: Runtime, device: torch.device) -> bool:
    """Capture the step on GPUs; a random task subset per step (reg_subset) would need its RNG in the graph."""
    return runtime.cuda_graph and device.type == "cuda" and not 0 < cfg.reg_subset


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} requested but CUDA is not available")
    return torch.device(name)


def train(cfg: TrainConfig, bench: Benchmark | None = None, callbacks: Sequence[Callback] = (),
          checkpoint: str | os.PathLike | None = None, resume: bool = False,
          runtime: Runtime | None = None) -> dict[str, Any]:
    """Learn ``cfg.num_tasks`` tasks in order; return counts, accuracy matrix and timings.

    With ``checkpoint`` a file is (atomically) rewritten after every task; with ``resume``
    and an existing file, training continues after the last task it holds.
    """
    cfg.validate()
    runtime = (runtime or Runtime()).validate()
    device = resolve_device(runtime.device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if device.type == "cpu":
        keep_freed_memory()
    bench = bench or load_benchmark(cfg, device, runtime.data_root)
    target, hnet = build_models(cfg, device)  # hnet: the hypernetwork, or the target's own weights (baselines)
    penalty = WeightPenalty(cfg, hnet.weights) if cfg.method != "hnet" else None  # EWC / SI
    state = {"next_task": 0, "acc_matrix": [], "val_acc_matrix": [], "task_seconds": [],
             "dead_units_first_layer": None, "task_inference_acc": None}
    if resume and checkpoint and Path(checkpoint).exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        if TrainConfig.from_dict(saved["config"]).to_dict() != cfg.to_dict():  # fields it predates: defaults
            raise ValueError(f"checkpoint {checkpoint} was written for a different configuration")
        hnet.load_state_dict(saved["hnet"])
        if penalty:
            penalty.load_state_dict(saved["penalty"])
        state = {k: saved[k] for k in state}

    for cb in callbacks:
        cb.on_models(target, hnet, bench)
    for task in range(state["next_task"], cfg.num_tasks):
        for cb in callbacks:
            cb.on_task_start(task, cfg)
        started = time.perf_counter()
        generator = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + task)
        theta = hnet.theta()
        embedding = hnet.task_embs[task]  # earlier embeddings stay frozen: not in the optimizer
        graphed = use_cuda_graph(cfg, runtime, device)
        # cosine: the task's last iterate settles instead of being a sample of constant-lr noise
        # (docs/init_history.md, CL1 parity). A captured CUDA graph reads lr from a tensor the schedule refills.
        cosine = cfg.lr_schedule == "cosine"
        optimizer = torch.optim.Adam([*theta.values(), embedding], capturable=graphed,
                                     lr=torch.tensor(cfg.lr, device=device) if graphed and cosine else cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.iters) if cosine else None
        regularize = cfg.method == "hnet" and cfg.beta > 0 and task > 0
        reg_targets = snapshot(hnet, task, runtime.reg_form_for(cfg)) if regularize else None
        batches = bench.train_batches(task, cfg.batch_size, generator)

        def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            optimizer.zero_grad(set_to_none=True)
            weights = hnet(embedding[None], padded=True)[0]
            loss_task = F.cross_entropy(task_logits(cfg, target, weights, x, task), train_labels(cfg, y, task))
            loss_task.backward()
            loss_reg = None
            if regularize:
                delta = adam_lookahead(optimizer, theta) if cfg.lookahead else None
                subset = None
                if 0 < cfg.reg_subset < task:  # App. D: a random subset of earlier tasks
                    subset = torch.randperm(task, generator=generator, device=device)[:cfg.reg_subset]
                loss_reg = output_regularizer(hnet, reg_targets, delta, subset)
                (cfg.beta * loss_reg).backward()
            elif penalty and (loss_reg := penalty.loss(hnet.weights)) is not None:  # EWC, SI
                (penalty.strength * loss_reg).backward()
            before = hnet.weights.detach().clone() if cfg.method == "si" else None
            optimizer.step()
            if before is not None:
                penalty.after_step(hnet.weights, before)
            return loss_task, loss_reg

        if graphed:
            step = CapturedStep(step)
        for it in range(cfg.iters):
            x, y = next(batches)
            loss_task, loss_reg = step(x, y)
            if schedule:
                schedule.step()
            for cb in callbacks:
                cb.on_iteration(task, it, loss_task, loss_reg)
            if task == 0 and it + 1 == min(DEAD_UNITS_AT, cfg.iters):  # the init diagnostic of docs/init.md
                state["dead_units_first_layer"] = dead_unit_fraction(target, hnet, embedding, x)

        if not math.isfinite(loss_task.item()):
            raise TrainingDiverged(f"loss is {loss_task.item()} at task {task}")
        if penalty:
            rows = bench.eval_split(task, "train").rows
            sample = rows[torch.randperm(len(rows), generator=generator, device=device)[:FISHER_SAMPLES]]
            fisher = diagonal_fisher(task_log_probs(cfg, target, task), hnet.weights, bench.inputs(task, "train", sample)) \
                if cfg.method == "ewc" else None
            penalty.end_task(hnet.weights, fisher)
        with torch.no_grad():
            weights = hnet(hnet.embeddings(range(task + 1)))  # one row per task learned so far
        accs, state["task_inference_acc"] = evaluate(cfg, target, weights, bench, task + 1, "test",
                                                     runtime.eval_batch_size)
        state["acc_matrix"].append(accs)
        if cfg.val_fraction > 0:
            state["val_acc_matrix"].append(evaluate(cfg, target, weights, bench, task + 1, "val",
                                                    runtime.eval_batch_size)[0])
        state["task_seconds"].append(time.perf_counter() - started)
        state["next_task"] = task + 1
        if checkpoint:
            _save_checkpoint(checkpoint, cfg, hnet, penalty, state)
        summary = result_dict(cfg, state)
        for cb in callbacks:
            cb.on_task_end(task, summary, Path(checkpoint) if checkpoint else None)
    return result_dict(cfg, state)


def _save_checkpoint(path: str | os.PathLike, cfg: TrainConfig, hnet, penalty: WeightPenalty | None,
                     state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": cfg.to_dict(), "hnet": hnet.state_dict(), **state,
                **({"penalty": penalty.state_dict()} if penalty else {})}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint

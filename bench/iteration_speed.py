#!/usr/bin/env python3
"""Milliseconds per training iteration of the paper's two MNIST presets, beside hypnettorch.

Times the real trainer loop (``hnet.trainer.train``: batch draw, hypernetwork, target,
regularizer, Adam) on synthetic data of MNIST shape, on the first task (no regularizer)
and the last (4 resp. 9 earlier tasks in the regularizer), with 1 and 2 CPU threads, or on
a GPU with ``--device cuda`` (each iteration then ends with a device synchronisation, so
the figure is the step's latency, not the time to queue its kernels).
Variants: the preset as shipped (factored regularizer + lookahead), the peer's protocol
(no lookahead) with the factored and with the direct regularizer; then the baselines on the
preset's target network (fine-tuning, online EWC, SI: ratios to fine-tuning), the time of
HNET+ENT task inference (all tasks' weights on one test batch), and the replay methods' steps
(HNET+TIR, HNET+R in cl3: ratios to the HNET step).

With ``--peer-python`` the reference implementation is timed in the same run through
``shared/bench/peer_hypnettorch.py`` (its own virtual environment; see bench/README.md)
and the ratios are printed side by side; on a GPU the peer's same step (its ``build`` and
batch pool) is timed on the GPU by ``bench/peer_on_device.py``.

    python bench/iteration_speed.py [--threads 2 1] [--iters 40] [--peer-python peer-venv/bin/python]
    python bench/iteration_speed.py --device cuda [--peer-python python3 --peer-script DIR/peer_hypnettorch.py]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from hnet.config import Runtime, preset, split_fields
from hnet.data import Benchmark, Split, Task
from hnet.evaluation import infer_task
from hnet.models import build_models
from hnet.trainer import Callback, train

PEER_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peer_hypnettorch.py"
PEER_ON_DEVICE = Path(__file__).resolve().parent / "peer_on_device.py"


def synthetic_benchmark(cfg, n_train: int = 4096, n_test: int = 256, device: str = "cpu") -> Benchmark:
    """Random uint8 images of the benchmark's shape on ``device``: no dataset needed, same code path."""
    g = torch.Generator().manual_seed(0)
    d, k = cfg.spec.input_dim, cfg.spec.classes_per_task

    def rand(high: int, shape: tuple[int, ...], dtype=torch.long) -> torch.Tensor:
        return torch.randint(0, high, shape, dtype=dtype, generator=g).to(device)

    images = {"train": rand(256, (n_train, d), torch.uint8), "test": rand(256, (n_test, d), torch.uint8)}
    rows = {n: torch.arange(n, device=device) for n in (n_train, n_test)}
    permuted = cfg.benchmark.startswith("permuted")
    tasks = [Task(train=Split(rows[n_train], rand(k, (n_train,))), val=None,
                  test=Split(rows[n_test], rand(k, (n_test,))),
                  permutation=torch.randperm(d, generator=g).to(device) if permuted and t else None)
             for t in range(cfg.num_tasks)]
    return Benchmark(cfg.benchmark, images, 1 / 255, tasks)


class IterationTimer(Callback):
    def __init__(self, device: str = "cpu") -> None:
        self.times: dict[int, list[float]] = {}
        self.last = None
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def on_task_start(self, task, cfg) -> None:
        self.sync()
        self.last = time.perf_counter()

    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        self.sync()
        now = time.perf_counter()
        self.times.setdefault(task, []).append((now - self.last) * 1e3)
        self.last = now


class KernelCounter(Callback):
    """GPU kernels (and memsets/copies) launched per iteration, counted by the profiler over a few iterations."""

    def __init__(self, task: int, start: int, iters: int = 5) -> None:
        self.task, self.start, self.iters, self.per_iteration = task, start, iters, None
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])

    def on_iteration(self, task, iteration, loss_task, loss_reg) -> None:
        if task != self.task:
            return
        if iteration == self.start:
            self.profiler.start()
        elif iteration == self.start + self.iters:
            torch.cuda.synchronize()
            self.profiler.stop()
            gpu = [e for e in self.profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            self.per_iteration = len(gpu) / self.iters


def time_preset(name: str, threads: int, iters: int, warmup: int, device: str = "cpu", **changes) -> dict[str, float]:
    experiment, run = split_fields(changes)
    cfg = preset(name).replace(iters=warmup + iters, **experiment)
    runtime = Runtime(threads=threads, device=device, **run)
    timer = IterationTimer(device)
    last = cfg.num_tasks - 1
    callbacks = [timer]
    if device != "cpu" and not runtime.cuda_graph:  # kernels per step of the last task, after the timed iterations
        cfg = cfg.replace(iters=warmup + iters + 6)
        callbacks.append(KernelCounter(last, warmup + iters))
    train(cfg, synthetic_benchmark(cfg, device=device), callbacks=callbacks, runtime=runtime)
    out = {"first": statistics.median(timer.times[0][warmup:warmup + iters]),
           "last": statistics.median(timer.times[last][warmup:warmup + iters])}
    if len(callbacks) > 1:
        out["kernels"] = callbacks[1].per_iteration
    return out


def time_baselines(name: str, threads: int, iters: int, warmup: int, device: str = "cpu") -> None:
    """The target network trained directly: a fine-tuning, online EWC and SI step (last task, where the
    penalty is on), each as a ratio to fine-tuning; and HNET+ENT's task inference per test batch."""
    fine = None
    for method in ("finetune", "ewc", "si"):
        ms = time_preset(name, threads, iters, warmup, device, method=method)
        fine = fine or ms["last"]
        print(f"{name:<16}{threads:>8}  {method + ' (target weights, cl1)':<38}{ms['first']:>11.2f}{ms['last']:>11.2f}"
              f"{'':>11}{'':>10}  {ms['last'] / fine:.2f}x fine-tuning", flush=True)
    cfg = preset(name)
    runtime = Runtime(threads=threads, device=device)
    torch.set_num_threads(threads or torch.get_num_threads())
    target, hnet = build_models(cfg.replace(scenario="cl3"), device)
    x = torch.rand(runtime.eval_batch_size, cfg.spec.input_dim, device=device)
    with torch.no_grad():
        weights = hnet(hnet.embeddings(range(cfg.num_tasks)))
        times = []
        for _ in range(warmup // 4 + 5):
            sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
            sync()
            started = time.perf_counter()
            infer_task(target, weights, x)
            sync()
            times.append((time.perf_counter() - started) * 1e3)
    print(f"{name:<16}{threads:>8}  HNET+ENT inference, {cfg.num_tasks} tasks x {len(x)} inputs: "
          f"{statistics.median(times[2:]):.1f} ms per test batch", flush=True)


def time_replay(name: str, threads: int, iters: int, warmup: int, device: str = "cpu") -> None:
    """HNET+TIR and HNET+R steps in cl3 (the paper's replay model for each): classifier step, replay
    batch, TIR's task classifier, the VAE step with Eq. 2 on its hypernetwork; ratio to the preset's
    HNET step (cl3, HNET+ENT) on the same task."""
    plain = time_preset(name, threads, iters, warmup, device, scenario="cl3")
    for method, label in (("hnet_tir", "HNET+TIR (cl3, replay VAE + TIR)"), ("hnet_r", "HNET+R (cl3, replay VAE)")):
        ms = time_preset(name, threads, iters, warmup, device, method=method, scenario="cl3")
        print(f"{name:<16}{threads:>8}  {label:<38}{ms['first']:>11.2f}{ms['last']:>11.2f}"
              f"{'':>11}{'':>10}  {ms['last'] / plain['last']:.2f}x the HNET step", flush=True)


def run_peer(python: str, threads: list[int], iters: int, warmup: int, device: str = "cpu",
             script: Path = PEER_SCRIPT) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        if device == "cpu":
            cmd = [python, str(script), "--threads", *map(str, threads), "--iters", str(iters),
                   "--warmup", str(warmup), "--rounds", "1", "--no-batched-extra", "--wait-quiet", "0",
                   "--retries", "0", "--out", str(out)]
        else:
            cmd = [python, str(PEER_ON_DEVICE), "--peer-script", str(script), "--device", device,
                   "--iters", str(iters), "--warmup", str(warmup), "--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads(out.read_text())["summary"]
    peer = {}
    for key, name in (("A", "split_mnist"), ("B", "permuted_mnist")):
        for t in threads:
            row = summary[key][f"threads_{t}"]
            first = next(v for k, v in row.items() if k.startswith("task1_prev0_median"))
            last = next(v for k, v in row.items() if k.endswith("_median_ms") and not k.startswith("task1_"))
            peer[name, t] = {"first": first, "last": last}
    return peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--iters", type=int, default=40, help="timed iterations per task")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--presets", nargs="+", default=["split_mnist", "permuted_mnist"])
    ap.add_argument("--peer-python", help="python of a venv with hypnettorch (times the reference side by side)")
    ap.add_argument("--peer-script", type=Path, default=PEER_SCRIPT, help="path of shared/bench/peer_hypnettorch.py")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (on a GPU --threads is ignored)")
    args = ap.parse_args()
    if args.device != "cpu":
        args.threads = [0]

    variants = {"preset (factored, lookahead)": {"reg_form": "factored"},
                "no lookahead, factored": {"lookahead": False, "reg_form": "factored"},
                "no lookahead, direct": {"lookahead": False, "reg_form": "direct"}}
    if args.device != "cpu":  # the same three with the step launched kernel by kernel
        variants |= {f"{label}, eager": {**changes, "cuda_graph": False} for label, changes in variants.items()}
    peer = run_peer(args.peer_python, args.threads, args.iters, args.warmup, args.device,
                    args.peer_script) if args.peer_python else {}
    where = torch.cuda.get_device_name(args.device) if args.device != "cpu" else "CPU"
    print(f"ms per training iteration (median of {args.iters}), {where}, torch {torch.__version__}")
    print(f"{'preset':<16}{'threads':>8}  {'variant':<38}{'first task':>11}{'last task':>11}{'peer last':>11}{'speed-up':>10}")
    for name in args.presets:
        for threads in args.threads:
            ref = peer.get((name, threads))
            if ref:
                print(f"{name:<16}{threads:>8}  {'hypnettorch (peer, no lookahead)':<38}{ref['first']:>11.2f}{ref['last']:>11.2f}")
            for label, changes in variants.items():
                ms = time_preset(name, threads, args.iters, args.warmup, args.device, **changes)
                ratio = f"{ref['last'] / ms['last']:.1f}x" if ref and "no lookahead" in label else ""
                peer_last = f"{ref['last']:.1f}" if ref else ""
                kernels = f"  ({ms['kernels']:.0f} GPU kernels per last-task step)" if "kernels" in ms else ""
                print(f"{name:<16}{threads:>8}  {label:<38}{ms['first']:>11.2f}{ms['last']:>11.2f}{peer_last:>11}{ratio:>10}"
                      + kernels, flush=True)
            time_baselines(name, threads, args.iters, args.warmup, args.device)
            time_replay(name, threads, args.iters, args.warmup, args.device)


if __name__ == "__main__":
    main()

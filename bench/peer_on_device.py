#!/usr/bin/env python3
"""The peer's training step (hypnettorch) timed on a GPU, for ``bench/iteration_speed.py --device cuda``.

``shared/bench/peer_hypnettorch.py`` times hypnettorch on the CPU. This script takes its
configurations, model builder and batch pool (imported from the path given, so the two
stay one protocol) and times the same step on a device: zero_grad; W = hnet(cond_id=T);
CE(mnet(x, W), y) + β · calc_fix_target_reg (mean over earlier tasks); backward; Adam.
Each step ends with a device synchronisation. Run it with a Python that has hypnettorch.

    python bench/peer_on_device.py --peer-script shared/bench/peer_hypnettorch.py --device cuda --out peer.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch
import torch.nn.functional as F


def load_peer(path: str):
    spec = importlib.util.spec_from_file_location("peer_hypnettorch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_task(peer, cfg: dict, task: int, device: str, warmup: int, iters: int) -> float:
    from hypnettorch.utils import hnet_regularizer as hreg

    torch.manual_seed(0)
    mnet, hnet = peer.build(cfg)
    mnet, hnet = mnet.to(device), hnet.to(device)
    targets = hreg.get_current_targets(task, hnet) if task > 0 else None
    embeddings = hnet.conditional_params
    for i, e in enumerate(embeddings):
        e.requires_grad_(i == task)
    opt = torch.optim.Adam([*hnet.unconditional_params, embeddings[task]], lr=cfg["lr"])
    pool = [(x.to(device), y.to(device)) for x, y in peer.make_pool(cfg, task, 10, torch.Generator().manual_seed(1))]
    times = []
    for it in range(warmup + iters):
        x, y = pool[it % len(pool)]
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(mnet.forward(x, weights=hnet.forward(cond_id=task)), y)
        if task > 0:
            loss = loss + cfg["beta"] * hreg.calc_fix_target_reg(hnet, task, targets=targets)
        loss.backward()
        opt.step()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-script", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--configs", nargs="+", default=["A", "B"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    peer = load_peer(args.peer_script)
    summary = {}
    for key in args.configs:
        cfg = peer.CONFIGS[key]
        row = {}
        for task in cfg["time_tasks"]:
            row[f"task{task + 1}_prev{task}_median_ms"] = time_task(peer, cfg, task, args.device, args.warmup, args.iters)
        summary[key] = {"threads_0": row}
        print(key, json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(args.device), "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()

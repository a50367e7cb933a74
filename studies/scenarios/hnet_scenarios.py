#!/usr/bin/env python3
"""HNET and HNET+ENT in all three scenarios from one training per seed.

With a hypernetwork the scenario changes nothing in training (every task gets its own generated
weights and its own head of the task's classes; ``TrainConfig.heads``), only the test: cl1 is
given the task, cl2 and cl3 infer it by predictive entropy (``hnet.evaluation``). So this trains
once (as ``--scenario cl1``) and scores the final hypernetwork in each scenario with the same
``evaluate`` the trainer uses, which saves two of three trainings where they are expensive
(PermutedMNIST-10 on a CPU). With ``--set multi_head=true`` (a head per task: the authors'
code and the paper's weight count for CL3) there is no cl2, whose head is shared by all tasks.
One JSON line per seed: test accuracy per task and its mean for each
scenario, and the task-inference accuracy.

    python studies/scenarios/hnet_scenarios.py --preset permuted_mnist --set iters=1000 --seeds 0 1 2 \\
        --data-root ../shared/data --out docs/scenarios/hnet_ent_permutedmnist.jsonl
    python studies/scenarios/hnet_scenarios.py --out docs/scenarios/hnet_ent_permutedmnist.jsonl --summary
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hnet.config import SCENARIOS, ConfigError, Runtime, TrainConfig, resolve, split_fields
from hnet.data import load_benchmark
from hnet.evaluation import evaluate
from hnet.models import build_models
from hnet.progress import ProgressBar
from hnet.trainer import resolve_device, train

@torch.no_grad()
def score_scenarios(cfg, checkpoint: Path, bench, runtime: Runtime) -> dict:
    """Accuracy of the trained hypernetwork in ``checkpoint`` in every scenario: test, and
    validation (``val_`` keys) when the config holds a validation split out."""
    device = resolve_device(runtime.device)
    target, hnet = build_models(cfg, device)
    hnet.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True)["hnet"])
    weights = hnet(hnet.embeddings(range(cfg.num_tasks)))
    out = {}
    for scenario in scenarios_of(cfg):
        out[scenario] = {}
        for part, prefix in [("test", ""), ("val", "val_")][:2 if cfg.val_fraction > 0 else 1]:
            accs, inferred = evaluate(cfg.replace(scenario=scenario), target, weights, bench, cfg.num_tasks,
                                      part, runtime.eval_batch_size)
            out[scenario] |= {f"{prefix}acc_per_task": accs, f"{prefix}acc_after_mean": sum(accs) / len(accs),
                              f"{prefix}task_inference_acc": inferred}
    return out


def scenarios_of(cfg) -> tuple[str, ...]:
    """The scenarios the trained configuration can be scored in, as its own validation says
    (a multi-head target has no cl2, where one head is shared by all tasks)."""
    def valid(scenario: str) -> bool:
        try:
            cfg.replace(scenario=scenario).validate()
            return True
        except ConfigError:
            return False

    return tuple(s for s in SCENARIOS if valid(s))


def summary_table(lines: list[dict]) -> str:
    """Markdown: per preset and overrides, mean ± std over seeds of each scenario's accuracy
    (validation / test where a split was held out) and of the task inference."""
    def stat(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"

    groups: dict[tuple, list[dict]] = {}
    for line in lines:
        groups.setdefault((*variant(line["preset"], line["set"]), unseeded(line["config"])), []).append(line)
    rows = ["| preset | overrides | lr schedule | seeds | CL1 | CL2 | CL3 | task inference |",
            "|---|---|---|---|---|---|---|---|"]
    for (name, overrides, config), group in groups.items():
        cells = []
        for scenario, key in [("cl1", "acc_after_mean"), ("cl2", "acc_after_mean"), ("cl3", "acc_after_mean"),
                              ("cl3", "task_inference_acc")]:
            if scenario not in group[0]:  # cl2 of a multi-head target
                cells.append("–")
                continue
            test = stat([g[scenario][key] for g in group])
            val = [g[scenario][f"val_{key}"] for g in group if f"val_{key}" in g[scenario]]
            cells.append(f"{stat(val)} / {test}" if val else test)
        seeds = ",".join(str(g["seed"]) for g in group)
        rows.append(f"| {name} | {', '.join(f'{k}={v}' for k, v in json.loads(overrides).items())} | "
                    f"{json.loads(config)['lr_schedule']} | {seeds} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def unseeded(config: dict) -> str:
    """A line's config but for its seed, fields it predates at their defaults (a preset's fields
    change between versions of the code: a line is matched by what it trained, not by its name)."""
    return json.dumps({**TrainConfig.from_dict(config).to_dict(), "seed": None}, sort_keys=True)


def variant(preset_name: str, overrides: dict) -> tuple[str, str]:
    """How a line of ``--out`` was asked for: the preset's name and the overrides (``unseeded``: what it trained)."""
    return preset_name, json.dumps(overrides, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="permuted_mnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field of the preset (e.g. iters=1000, hnet_init=hyperfan)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON lines; seeds already in it are skipped (runs in parts)")
    ap.add_argument("--summary", action="store_true", help="only print the table of what --out holds (val / test)")
    args = ap.parse_args()
    if args.summary:
        print(summary_table([json.loads(line) for line in Path(args.out).read_text().splitlines()]))
        return

    overrides, run = split_fields(dict(item.split("=", 1) for item in args.set))
    runtime = Runtime(data_root=args.data_root, device=args.device, threads=args.threads).replace(**run).validate()
    base = resolve(args.preset, {**overrides, "method": "hnet", "scenario": "cl1"})
    out = Path(args.out)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(unseeded(line["config"]), line["seed"]) for line in lines}  # by what was trained, not by its name
    asked = unseeded(base.to_dict())
    bench = None
    for seed in args.seeds:
        if (asked, seed) in done:
            print(f"seed {seed}: already in {out}")
            continue
        cfg = base.replace(seed=seed).validate()
        bench = bench or load_benchmark(cfg, resolve_device(runtime.device), runtime.data_root)
        with tempfile.TemporaryDirectory(prefix="hnet-scenarios-") as folder:
            checkpoint = Path(folder) / "checkpoint.pt"
            started = time.time()
            result = train(cfg, bench, callbacks=[ProgressBar()], checkpoint=checkpoint, runtime=runtime)
            trained = time.time() - started
            scores = score_scenarios(cfg, checkpoint, bench, runtime)
        line = {"preset": args.preset, "set": overrides, "seed": seed, "config": cfg.to_dict(), "train_seconds": round(trained, 1),
                "score_seconds": round(time.time() - started - trained, 1), "acc_matrix_cl1": result["acc_matrix"],
                **scores}
        assert abs(scores["cl1"]["acc_after_mean"] - result["acc_after_mean"]) < 1e-6  # same evaluation as training
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"seed {seed}: " + ", ".join(f"{s} {scores[s]['acc_after_mean']:.2f}" for s in scenarios_of(cfg))
              + f", task inference {scores['cl3']['task_inference_acc']:.2f} ({trained:.0f} s training)", flush=True)


if __name__ == "__main__":
    main()

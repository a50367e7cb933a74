"""`hnet` command line: train one continual-learning run (sweeps, reports and UI plug in here).

Precedence of settings: built-in defaults < --preset < --config FILE.yaml < explicit flags.
Errors in the input print one line and exit with status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import ACTIVATIONS, BENCHMARKS, HNET_INITS, PRESETS, REG_FORMS, TrainConfig, UserError, preset

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(message)


# flag -> config field, for flags that map one-to-one
_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--benchmark", "benchmark", str, f"one of: {', '.join(BENCHMARKS)}"),
    ("--num-tasks", "num_tasks", int, "number of tasks learned in sequence"),
    ("--target-hidden", "target_hidden", str, "target MLP hidden sizes, e.g. 1000,1000"),
    ("--hnet-hidden", "hnet_hidden", str, "hypernetwork hidden sizes, e.g. 25,25 ('' = none)"),
    ("--hnet-activation", "hnet_activation", str, f"one of: {', '.join(ACTIVATIONS)}"),
    ("--chunk-size", "chunk_size", int, "hypernetwork output (chunk) size"),
    ("--task-emb-dim", "task_emb_dim", int, "task embedding size"),
    ("--chunk-emb-dim", "chunk_emb_dim", int, "chunk embedding size"),
    ("--hnet-init", "hnet_init", str, f"hypernetwork initialisation: {', '.join(HNET_INITS)}"),
    ("--hnet-emb-std", "hnet_emb_std", float, "std of the embeddings at init (0 = the init's own)"),
    ("--beta", "beta", float, "regularizer strength β of Eq. 2 (0 = fine-tuning baseline)"),
    ("--reg-subset", "reg_subset", int, "regularize a random subset of at most K earlier tasks (0 = all)"),
    ("--reg-form", "reg_form", str, f"regularizer computation: {', '.join(REG_FORMS)} (auto: the cheaper)"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--iters", "iters", int, "training iterations per task"),
    ("--batch-size", "batch_size", int, "mini-batch size"),
    ("--seed", "seed", int, "random seed (initialisation, batches)"),
    ("--data-seed", "data_seed", int, "seed of the permutations and validation split"),
    ("--val-fraction", "val_fraction", float, "fraction of each task's training set held out for validation"),
    ("--device", "device", str, "auto, cpu or cuda[:N]"),
    ("--threads", "threads", int, "CPU threads for torch (0 = default)"),
    ("--data-root", "data_root", str, "dataset folder in torchvision's layout (<root>/MNIST/raw/...)"),
]


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"start from a named configuration: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields (may name a preset)")
    for flag, dest, kind, help_ in _FLAGS:
        p.add_argument(flag, dest=dest, type=kind, default=None, help=help_)
    p.add_argument("--multi-head", dest="multi_head", action="store_true", default=None,
                   help="one output head per task (only the current task's head is used)")
    p.add_argument("--single-head", dest="multi_head", action="store_false", help="one shared output head")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", default=None,
                   help="on a GPU, launch the step's kernels one by one instead of replaying a captured graph")
    p.add_argument("--lookahead", dest="lookahead", action="store_true", default=None,
                   help="evaluate the regularizer at Θ+ΔΘ (Sec. 2.1; default)")
    p.add_argument("--no-lookahead", dest="lookahead", action="store_false", help="evaluate it at Θ")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset < config file < explicit flags; validated."""
    values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    if args.config:
        try:
            file_values = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read config {args.config}: {str(exc).splitlines()[0]}") from None
        if not isinstance(file_values, dict):
            raise UserError(f"config {args.config} must be a mapping of config fields")
    preset_name = args.preset or file_values.pop("preset", None)
    if preset_name:
        values.update(preset(preset_name).to_dict())
    values.update(file_values)
    values.update({dest: getattr(args, dest) for _, dest, _, _ in _FLAGS if getattr(args, dest) is not None})
    for dest in ("multi_head", "lookahead", "cuda_graph"):
        if getattr(args, dest) is not None:
            values[dest] = getattr(args, dest)
    if "num_tasks" not in values and values.get("benchmark") in BENCHMARKS:
        values["num_tasks"] = BENCHMARKS[values["benchmark"]].default_tasks
    return TrainConfig.from_dict(values).validate()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def print_accuracy_table(result: dict[str, Any], out=sys.stdout) -> None:
    matrix = result["acc_matrix"]
    n = len(matrix)
    print("\naccuracy (%) on task j (columns) after learning task i (rows)", file=out)
    print("after " + "".join(f"{j:>8}" for j in range(n)), file=out)
    for i, row in enumerate(matrix):
        print(f"{i:>5} " + "".join(f"{a:8.2f}" for a in row), file=out)
    print(f"\nacc_during_mean {result['acc_during_mean']:.2f}  acc_after_mean {result['acc_after_mean']:.2f}  "
          f"forgetting {result['forgetting']:.2f}  compression_ratio {result['compression_ratio']:.4f}  "
          f"time {result['train_seconds']:.1f}s ({result['iters_per_second']:.1f} it/s)", file=out)


def cmd_train(args: argparse.Namespace) -> int:
    from .counts import WeightCounts, count_weights

    cfg = config_from_args(args)
    counts = count_weights(cfg)
    if args.dry_run:
        from .models import build_models, num_weights

        target, hnet = build_models(cfg, "cpu")  # build for real: counts come from the objects
        built = WeightCounts(target_weights=num_weights(target),
                             hnet_weights=sum(p.numel() for p in hnet.theta().values()),
                             task_embedding_weights=sum(p.numel() for p in hnet.task_embs),
                             num_chunks=hnet.num_chunks).to_dict()
        assert built == counts.to_dict(), (built, counts.to_dict())
        print(json.dumps({**built, "config": cfg.to_dict()}))
        return 0

    from .data import load_benchmark
    from .trainer import TrainingDiverged, resolve_device, train
    from .progress import ProgressBar

    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.benchmark}")
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.exists():
        raise UserError(f"--resume: no checkpoint at {checkpoint}")
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    print(f"hnet train: {cfg.benchmark}, {cfg.num_tasks} tasks, target {counts.target_weights:,} weights, "
          f"hnet {counts.hnet_weights:,} (+{counts.task_embedding_weights} task-embedding) weights, "
          f"compression ratio {counts.compression_ratio:.4f}, device {device}", file=sys.stderr)
    bench = load_benchmark(cfg, device)  # before creating the output folder: missing data writes nothing
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    try:
        result = train(cfg, bench, callbacks=[ProgressBar()], checkpoint=checkpoint, resume=args.resume)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    _write_json(out / "results.json", result)
    print_accuracy_table(result)
    print(f"results: {out / 'results.json'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hnet", description="Continual learning with task-conditioned hypernetworks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="learn a sequence of tasks with one hypernetwork",
                       description="Learn the tasks of a benchmark one after another (CL1).")
    add_config_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<time>-<benchmark>)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (needs --out)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the models, print weight counts and compression ratio as JSON, train nothing")
    p.set_defaults(func=cmd_train)
    from analysis.report import add_report_parser
    from sweeps.cli import add_sweep_parser

    add_sweep_parser(sub, _Parser)
    add_report_parser(sub, _Parser)
    p = sub.add_parser("ui", help="start the MLflow UI on a tracking store (bound to 127.0.0.1)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="backend store (default sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def cmd_ui(args: argparse.Namespace) -> int:
    if args.tracking_uri.startswith(("http://", "https://")):
        raise UserError(f"{args.tracking_uri} is a tracking server: open it in a browser instead")
    print(f"MLflow UI for {args.tracking_uri}: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
           "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:  # config, data, spec and argument errors
        print(f"hnet: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("hnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

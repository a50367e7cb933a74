"""`hnet` command line: ``hnet train`` here; ``sweep``, ``report`` and ``ui`` plug in from their packages.

Precedence of settings: built-in defaults < --preset < --config FILE.yaml < explicit flags.
Errors in the input print one line and exit with status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .config import PRESETS, Runtime, TrainConfig, UserError, resolve, split_fields

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(message)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field of TrainConfig and Runtime: name, type, help and choices come from the field."""
    p.add_argument("--preset", help=f"start from a named configuration: {', '.join(PRESETS)}")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields (may name a preset)")
    for cls, title in ((TrainConfig, "experiment (MLflow params)"), (Runtime, "runtime (how it runs)")):
        group = p.add_argument_group(title)
        for f in dataclasses.fields(cls):
            flag, help_ = "--" + f.name.replace("_", "-"), f.metadata["help"]
            if f.metadata["choices"]:
                help_ += f" ({'|'.join(f.metadata['choices'])})"
            if f.type == "bool":
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=f"{help_} (default {'on' if f.default else 'off'})")
            else:
                kind = {"int": int, "float": float}.get(f.type, str)
                group.add_argument(flag, dest=f.name, type=kind, default=None, help=f"{help_} (default {f.default!r})")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Runtime]:
    """Defaults < preset < config file < explicit flags; validated."""
    file_values: dict[str, Any] = {}
    if args.config:
        try:
            file_values = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read config {args.config}: {str(exc).splitlines()[0]}") from None
        if not isinstance(file_values, dict):
            raise UserError(f"config {args.config} must be a mapping of config fields")
    preset_name = args.preset or file_values.pop("preset", None)
    fields = TrainConfig.field_names() + Runtime.field_names()
    given = {**file_values, **{name: getattr(args, name) for name in fields if getattr(args, name) is not None}}
    experiment, runtime = split_fields(given)
    cfg = resolve(preset_name, experiment)
    return cfg.validate(), Runtime.from_dict(runtime).validate()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def print_accuracy_table(result: dict[str, Any], out=sys.stdout) -> None:
    matrix, mse = result["acc_matrix"], result.get("metric") == "mse"
    n, cell = len(matrix), (lambda a: f"{a:10.4g}") if mse else (lambda a: f"{a:8.2f}")
    width = 10 if mse else 8
    print(f"\n{'mean squared error' if mse else 'accuracy (%)'} on task j (columns) after learning task i (rows)", file=out)
    print("after " + "".join(f"{j:>{width}}" for j in range(n)), file=out)
    for i, row in enumerate(matrix):
        print(f"{i:>5} " + "".join(cell(a) for a in row), file=out)
    value = "{:.4g}" if mse else "{:.2f}"
    print(f"\nacc_during_mean {value.format(result['acc_during_mean'])}  acc_after_mean "
          f"{value.format(result['acc_after_mean'])}  forgetting {value.format(result['forgetting'])}  "
          f"compression_ratio {result['compression_ratio']:.4f}  "
          f"time {result['train_seconds']:.1f}s ({result['iters_per_second']:.1f} it/s)", file=out)


def cmd_train(args: argparse.Namespace) -> int:
    from .counts import WeightCounts, count_weights

    cfg, runtime = config_from_args(args)
    counts = count_weights(cfg)
    if args.dry_run:
        from .trainer import build_learner
        from .models import num_weights

        target, learner = build_learner(cfg, "cpu")  # build for real: counts come from the objects
        built = WeightCounts(target_weights=num_weights(target), **learner.weight_counts()).to_dict()
        assert built == counts.to_dict(), (built, counts.to_dict())
        print(json.dumps({**built, "config": cfg.to_dict()}))
        return 0

    from .data import load_benchmark
    from .trainer import TrainingDiverged, resolve_device, train
    from .diagnostics import DeadUnits
    from .progress import ProgressBar

    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{cfg.benchmark}")
    checkpoint = out / "checkpoint.pt"
    if args.resume and not checkpoint.exists():
        raise UserError(f"--resume: no checkpoint at {checkpoint}")
    try:
        device = resolve_device(runtime.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    print(f"hnet train: {cfg.benchmark}, {cfg.num_tasks} tasks, target {counts.target_weights:,} weights, "
          f"hnet {counts.hnet_weights:,} (+{counts.task_embedding_weights} task-embedding) weights, "
          f"compression ratio {counts.compression_ratio:.4f}, device {device}", file=sys.stderr)
    bench = load_benchmark(cfg, device, runtime.data_root)  # before creating the output folder: missing data writes nothing
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    try:
        result = train(cfg, bench, callbacks=[ProgressBar(), DeadUnits()], checkpoint=checkpoint, resume=args.resume,
                       runtime=runtime)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    _write_json(out / "results.json", result)
    print_accuracy_table(result)
    print(f"results: {out / 'results.json'}", file=sys.stderr)
    return 0


COMMANDS_GROUP = "hnet.commands"  # entry points: name -> function(subparsers, parser_class) adding that subcommand


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """``train`` lives here; ``sweep``, ``report``, ``ui`` are added by their packages (entry points),
    loaded only when asked for, so the core runs without Ray, MLflow, Optuna or pandas."""
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
    wanted = _command_in(sys.argv[1:] if argv is None else argv)
    if wanted == "train":
        return parser
    for entry in metadata.entry_points(group=COMMANDS_GROUP):
        if wanted not in (None, entry.name):
            continue
        try:
            entry.load()(sub, _Parser)
        except ImportError as exc:  # an extra that is not installed: say so when the command is used
            missing = sub.add_parser(entry.name, help=f"(unavailable: {exc})", add_help=False)
            missing.add_argument("rest", nargs=argparse.REMAINDER)
            missing.set_defaults(func=_unavailable(entry.name, exc))
    return parser


def _unavailable(name: str, exc: ImportError):
    def fail(args: argparse.Namespace) -> int:
        raise UserError(f"hnet {name} needs packages that are not installed ({exc}); "
                        f"install them with: pip install 'hnet-sweeps[all]'")
    return fail


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    try:
        args = (parser or build_parser(argv)).parse_args(argv)
        return args.func(args)
    except UserError as exc:  # config, data, spec and argument errors
        print(f"hnet: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("hnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hnet ... | head`: the reader left; stay quiet as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""`hnet sweep run SPEC` and `hnet sweep dry-run SPEC`."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .spec import SpecError, SweepSpec, load_spec

CONFIGS = Path(__file__).resolve().parent / "configs"  # specs shipped with the package


def resolve_spec_path(name: str) -> Path:
    """A path, or the name of a spec shipped in sweeps/configs (e.g. `smoke`)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    raise SpecError(f"spec {name} not found (a YAML path, or one of: {', '.join(shipped_specs())})")


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def _load(args: argparse.Namespace) -> SweepSpec:
    """The spec with command-line overrides applied; paths made absolute."""
    spec = load_spec(resolve_spec_path(args.spec), {"num_samples": args.num_samples})
    if getattr(args, "tracking_uri", None):
        spec.tracking_uri = args.tracking_uri
    if getattr(args, "storage_path", None):
        spec.storage_path = args.storage_path
    if getattr(args, "data_root", None):
        spec.runtime = spec.runtime.replace(data_root=args.data_root)
    if getattr(args, "iters", None):
        spec.set_base(iters=args.iters)
    if getattr(args, "set", None):
        _set_fields(spec, args.set)
    if getattr(args, "max_concurrent", None):
        if args.max_concurrent < 1:
            raise SpecError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
        spec.max_concurrent = args.max_concurrent
    if spec.runtime.data_root and "://" not in spec.runtime.data_root:  # trials run in other folders
        spec.runtime = spec.runtime.replace(data_root=str(Path(spec.runtime.data_root).resolve()))
    from .space import check_feasible  # the compression filter (no Ray or Optuna): one space for both backends

    planned = check_feasible(spec)
    if planned is not None and spec.num_samples > planned:
        print(f"hnet sweep: the space has {planned} trainable configurations: num_samples {spec.num_samples} -> "
              f"{planned}", file=sys.stderr)
        spec.num_samples = planned
    if getattr(args, "backend", "ray") == "pool":
        return spec  # threads: sweeps.pool
    spec.runtime = spec.runtime.with_cpu_share(spec.cpus_per_trial)
    return spec


def _set_fields(spec: SweepSpec, items: list[str]) -> None:
    """``--set key=value``: a base (experiment) or runtime field, for every trial."""
    from hnet.config import ConfigError, split_fields

    try:
        pairs = dict(item.split("=", 1) for item in items)
    except ValueError:
        raise SpecError(f"--set takes KEY=VALUE, got {next(i for i in items if '=' not in i)!r}") from None
    searched = sorted(set(pairs) & set(spec.space))
    if searched:
        raise SpecError(f"--set {', '.join(searched)}: searched by the spec's space; edit the space instead")
    try:
        experiment, runtime = split_fields(pairs)
        spec.runtime = spec.runtime.replace(**runtime).validate() if runtime else spec.runtime
        if experiment:
            spec.set_base(**experiment)
    except ConfigError as exc:
        raise SpecError(f"--set: {exc}") from None


def cmd_dry_run(args: argparse.Namespace) -> int:
    """The configurations a sweep would train: grid and random search in the order both backends train
    them; TPE and NSGA-II as Optuna draws them before it has learned anything."""
    from hnet.counts import count_weights

    from .space import PLANNED, Rejected, plan, to_train_config

    spec = _load(args)

    def shown(cfg) -> list[str]:  # the searched fields, and the chunk size where a hypernetwork has one
        return list(spec.space) + (["chunk_size"] if cfg.generated_classifier and "chunk_size" not in spec.space
                                   else [])

    print(f"{'#':>4}  {'status':<9}{'compression':>12}{'hnet weights':>14}  configuration")

    def row(i: int, status: str, ratio: str, weights: str, values: dict) -> None:
        print(f"{i:>4}  {status:<9}{ratio:>12}{weights:>14}  " + " ".join(f"{k}={v}" for k, v in values.items()))

    if spec.algorithm in PLANNED:
        planned = plan(spec)
        for i, cfg in enumerate(planned.configs):
            counts = count_weights(cfg)
            row(i, "planned", f"{counts.compression_ratio:.4f}", f"{counts.hnet_weights:,}",
                {k: getattr(cfg, k) for k in shown(cfg)})
        print(f"\n{len(planned.configs)} configurations x {spec.seeds} seed(s) = {len(planned.configs) * spec.seeds} "
              f"trials, trained in this order (seed by seed) by both backends; {planned.drawn} drawn, "
              f"{planned.rejected} outside the compression range [{spec.compression_min}, {spec.compression_max}], "
              f"{planned.duplicates} repeated.")
        return 0
    import optuna

    from .search import drawn_values, make_sampler, sample_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if m == "max" else "minimize" for _, m in spec.objectives]
    study = optuna.create_study(sampler=make_sampler(spec), directions=directions)
    accepted = 0
    for i in range(spec.num_samples):
        trial = study.ask()
        sample_config(trial, spec)
        try:
            cfg = to_train_config(spec, drawn_values(trial.params))
            counts = count_weights(cfg)
            accepted += 1
            row(i, "accepted", f"{counts.compression_ratio:.4f}", f"{counts.hnet_weights:,}",
                {k: getattr(cfg, k) for k in shown(cfg)})
        except Rejected as exc:
            row(i, "rejected", "-" if exc.ratio is None else f"{exc.ratio:.4f}", "-", trial.params)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # nothing is trained in a dry run
    print(f"\n{accepted} of {spec.num_samples} drawn configurations lie in the compression range "
          f"[{spec.compression_min}, {spec.compression_max}]; {spec.algorithm} learns from finished trials, so a real "
          f"sweep draws differently after its first ones, redraws rejected ones and trains "
          f"{spec.num_samples} configurations x {spec.seeds} seed(s) = {spec.num_trials} trials.")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.backend == "pool":
        return cmd_run_pool(args)
    for flag in ("workers", "time_limit"):
        if getattr(args, flag) is not None:
            raise SpecError(f"--{flag.replace('_', '-')} belongs to --backend pool")
    spec = _load(args)  # validated before Ray starts
    results = Path(args.results) if args.results else None
    if results and not args.resume and nothing_left(spec, results):
        return 0
    from .mlflow_logging import check_access
    from .runner import run_sweep

    check_access(spec)  # a server refusing this user: one line, and nothing before it
    print(f"hnet sweep: {spec.name}: {spec.num_samples} configurations x {spec.seeds} seed(s), "
          f"{spec.algorithm} search, {spec.base.benchmark}, MLflow {spec.tracking_uri} (experiment {spec.experiment!r})",
          flush=True)
    summary = run_sweep(spec, address=args.address, resume=args.resume, resource_check=args.resource_check,
                        verbose=args.verbose, results=results)
    stats = summary["stats"]
    print(f"\nsweep {summary['state']['sweep_id']}: {stats['trials']} trials, {stats['trials_completed']} completed, "
          f"{stats['trials_failed']} failed, {stats['trials_pruned']} pruned/unfinished, "
          f"{stats['sweep_wall_seconds']:.0f}s")
    if summary["best"]:
        print(f"best trials by {spec.metric}:")
        for row in summary["best"]:
            cfg = {k: row.get(k) for k in list(spec.space) + ["chunk_size", "seed"] if k in row}
            print(f"  {row['trial_id']}  {spec.metric}={row[spec.metric]:.2f}  "
                  f"compression={row['compression_ratio']:.4f}  " + " ".join(f"{k}={v}" for k, v in cfg.items()))
    if "results_appended" in stats:
        print(f"{stats['results_appended']} completed trial(s) appended to {summary['state']['results']}")
    if not summary["state"].get("finished"):
        print(f"sweep not finished: run `hnet sweep run {args.spec} --resume` to complete it", file=sys.stderr)
    print(f"results: hnet ui --tracking-uri {spec.tracking_uri} --experiment {spec.experiment}   (opens on the trial "
          f"runs); hnet report {spec.experiment} --tracking-uri {spec.tracking_uri}   (Fig. A7 and tables, also "
          f"attached to the sweep's run); Tune folder {summary['sweep_dir']}")
    return 0


def nothing_left(spec: SweepSpec, results: Path) -> bool:
    """True (after saying so) when a results file already holds every trial of a grid or random spec."""
    from .results_file import done_configs
    from .space import PLANNED, plan, trials

    if spec.algorithm not in PLANNED:
        return False
    configs = plan(spec).configs
    planned, left = len(trials(spec, configs)), len(trials(spec, configs, done_configs(results)))
    if left == 0:
        print(f"hnet sweep: {spec.name}: all {planned} trials are in {results}: nothing to run")
    elif left < planned:
        print(f"hnet sweep: {spec.name}: {planned - left} of {planned} trials are in {results}; "
              f"running the other {left}", flush=True)
    return left == 0


def cmd_run_pool(args: argparse.Namespace) -> int:
    from .pool import run_pool

    ray_only = {"--address": args.address, "--resume": args.resume, "--verbose": args.verbose,
                "--no-resource-check": not args.resource_check}
    given = [flag for flag, value in ray_only.items() if value]
    if given:
        raise SpecError(f"{', '.join(given)}: not for --backend pool, which runs here without Ray and "
                        "always continues its results file")
    spec = _load(args)
    workers = spec.max_concurrent if args.workers is None else args.workers
    if workers < 1:
        raise SpecError(f"--workers must be >= 1, got {workers}")
    results = Path(args.results or Path(spec.storage_path) / f"{spec.name}.jsonl")
    finished, failed, left = run_pool(spec, results, workers, args.time_limit or 0)
    print(f"results: {results}   (hnet report {spec.name} --results {results} --out DIR: Fig. A7 and tables)")
    if importlib.util.find_spec("mlflow"):
        print(f"recorded in MLflow: hnet ui --tracking-uri {spec.tracking_uri} --experiment {spec.experiment}; "
              f"hnet report {spec.experiment} --tracking-uri {spec.tracking_uri}")
    return 1 if failed else 0


def add_sweep_parser(sub: argparse._SubParsersAction, parser_class) -> None:
    sweep = sub.add_parser("sweep", help="hyperparameter sweeps with Ray Tune + Optuna, recorded in MLflow")
    actions = sweep.add_subparsers(dest="sweep_command", required=True, parser_class=parser_class)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("spec", help=f"sweep spec: a YAML path or a shipped name ({', '.join(shipped_specs())})")
    common.add_argument("--num-samples", type=int, help="configurations to train (overrides the spec)")
    common.add_argument("--data-root", help="dataset folder (overrides the spec's runtime.data_root)")
    common.add_argument("--iters", type=int, help="training iterations per task (overrides the spec)")
    common.add_argument("--max-concurrent", type=int, help="trials running at once (overrides search.max_concurrent)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a base or runtime field for every trial (repeatable), e.g. --set device=cuda")
    run = actions.add_parser("run", parents=[common], help="run a sweep (local Ray, or a cluster with --address)")
    run.add_argument("--address", help="Ray cluster address (e.g. 127.0.0.1:6379 or auto); default: local Ray")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default from the spec: sqlite:///mlflow.db)")
    run.add_argument("--storage-path", help="Tune storage for results and checkpoints (shared on clusters)")
    run.add_argument("--resume", action="store_true", help="finish the newest unfinished sweep of this spec")
    run.add_argument("--verbose", action="store_true",
                     help="show Ray's, Tune's, MLflow's and the trials' output here instead of in <sweep folder>/sweep.log")
    run.add_argument("--no-resource-check", dest="resource_check", action="store_false",
                     help="start even if no node can hold a trial now (an autoscaler will add one)")
    run.add_argument("--backend", choices=("ray", "pool"), default="ray",
                     help="ray: Ray Tune + Optuna, recorded in MLflow (default); pool: worker processes on this "
                          "machine without Ray or Optuna (grid and random search: the same trials in the same "
                          "order as ray), one JSON line per trial, and recorded in MLflow where it is installed")
    run.add_argument("--workers", type=int, help="pool: trials at once (default: search.max_concurrent)")
    run.add_argument("--results", help="JSON-lines file of finished trials, one line each: grid and random search "
                                       "skip trials already in it, on either backend (pool default: "
                                       "<storage_path>/<spec name>.jsonl; ray: none; a resumed sweep keeps its file)")
    run.add_argument("--time-limit", type=float, help="pool: start no trial after this many seconds")
    run.set_defaults(func=cmd_run)
    dry = actions.add_parser("dry-run", parents=[common],
                             help="list the configurations a sweep would train, with compression ratios")
    dry.set_defaults(func=cmd_dry_run)

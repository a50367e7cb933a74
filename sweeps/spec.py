"""Sweep specifications: YAML, validated before Ray starts.

A spec names fixed training settings (``base``, any TrainConfig field, may name a preset),
a search space over TrainConfig fields, the search algorithm and everything the run needs
(samples, seeds, resources, scheduler, MLflow, storage). See sweeps/configs/*.yaml.

Search-space entries (field -> spec):
    [a, b, c]                          categorical choice
    {low: 1e-4, high: 1e-2, log: true} float range (int range if both bounds are ints)
    hnet_hidden: {layers: [1, 2], sizes: [5, 10, ...]}
                                       conditional: the number of layers, then one size per drawn layer
    chunk_size: fit                    derived, not searched: the largest chunk size whose
                                       compression ratio stays within compression.max
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hnet.config import ConfigError, TrainConfig, UserError, preset
from hnet.counts import count_weights

ALGORITHMS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("none", "asha")


class SpecError(UserError, ValueError):
    """An invalid sweep spec; the message is one line."""


@dataclass
class SweepSpec:
    name: str
    base: TrainConfig
    space: dict[str, Any]
    algorithm: str = "tpe"
    metric: str = "acc_after_mean"
    mode: str = "max"
    num_samples: int = 8  # configurations to train (each with `seeds` seeds)
    seeds: int = 1
    search_seed: int = 0
    max_concurrent: int = 2
    compression_min: float = 0.0
    compression_max: float = math.inf
    max_rejections: int = 2_000  # draws in a row outside the compression range (or repeats) before giving up
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "none"
    asha_grace_tasks: int = 1
    asha_reduction_factor: int = 2
    max_failures: int = 1  # retries of a failed trial (from its last finished task)
    experiment: str = ""  # MLflow experiment (default: the sweep name)
    tracking_uri: str = "sqlite:///mlflow.db"
    storage_path: str = "ray_results"
    source: str = ""  # the YAML file it came from

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) pairs; two for the multi-objective search."""
        if self.algorithm == "nsga2":
            return [(self.metric, self.mode), ("compression_ratio", "min")]
        return [(self.metric, self.mode)]

    @property
    def num_trials(self) -> int:
        return self.num_samples * self.seeds

    def to_flat_params(self) -> dict[str, str]:
        """Sweep-level MLflow params of the parent run."""
        out = {f"sweep.{k}": str(v) for k, v in self.__dict__.items()
               if k not in ("base", "space")}
        out.update({f"space.{k}": str(v) for k, v in self.space.items()})
        out.update({f"base.{k}": v for k, v in self.base.to_flat_params().items()})
        return out


_TOP_KEYS = {"name", "base", "space", "search", "num_samples", "seeds", "compression", "resources",
             "scheduler", "mlflow", "storage_path", "max_failures"}


def _check_keys(section: str, values: dict, allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SpecError(f"{section}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _mapping(values: Any, section: str) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SpecError(f"{section} must be a mapping")
    return values


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a spec file; raises SpecError (one line) on any problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    raw = _mapping(raw, f"spec {path}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_spec(raw, source=str(path))


def parse_spec(raw: dict[str, Any], source: str = "") -> SweepSpec:
    _check_keys("spec", raw, _TOP_KEYS)
    try:
        base_values = dict(_mapping(raw.get("base"), "base"))
        name = base_values.pop("preset", None)
        base = TrainConfig.from_dict({**(preset(name).to_dict() if name else {}), **base_values}).validate()
    except ConfigError as exc:
        raise SpecError(f"base: {exc}") from None

    search = _mapping(raw.get("search"), "search")
    _check_keys("search", search, {"algorithm", "metric", "mode", "seed", "max_concurrent"})
    compression = _mapping(raw.get("compression"), "compression")
    _check_keys("compression", compression, {"min", "max", "max_rejections"})
    resources = _mapping(raw.get("resources"), "resources")
    _check_keys("resources", resources, {"cpu", "gpu"})
    scheduler = raw.get("scheduler", "none")
    scheduler = {"type": scheduler} if isinstance(scheduler, str) else _mapping(scheduler, "scheduler")
    _check_keys("scheduler", scheduler, {"type", "grace_tasks", "reduction_factor"})
    mlflow = _mapping(raw.get("mlflow"), "mlflow")
    _check_keys("mlflow", mlflow, {"experiment", "tracking_uri"})

    try:
        spec = SweepSpec(
            name=str(raw.get("name") or Path(source).stem or "sweep"),
            base=base,
            space=dict(_mapping(raw.get("space"), "space")),
            algorithm=str(search.get("algorithm", "tpe")),
            metric=str(search.get("metric", "acc_after_mean")),
            mode=str(search.get("mode", "max")),
            num_samples=int(raw.get("num_samples", 8)),
            seeds=int(raw.get("seeds", 1)),
            search_seed=int(search.get("seed", 0)),
            max_concurrent=int(search.get("max_concurrent", 2)),
            compression_min=float(compression.get("min", 0.0)),
            compression_max=float(compression.get("max", math.inf)),
            max_rejections=int(compression.get("max_rejections", 2_000)),
            cpus_per_trial=float(resources.get("cpu", 1)),
            gpus_per_trial=float(resources.get("gpu", 0)),
            scheduler=str(scheduler.get("type", "none")),
            asha_grace_tasks=int(scheduler.get("grace_tasks", 1)),
            asha_reduction_factor=int(scheduler.get("reduction_factor", 2)),
            max_failures=int(raw.get("max_failures", 1)),
            experiment=str(mlflow.get("experiment") or ""),
            tracking_uri=str(mlflow.get("tracking_uri", "sqlite:///mlflow.db")),
            storage_path=str(raw.get("storage_path", "ray_results")),
            source=source,
        )
    except (TypeError, ValueError) as exc:
        raise SpecError(f"invalid value in spec: {exc}") from None
    spec.experiment = spec.experiment or spec.name
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SpecError(msg)

    need(spec.algorithm in ALGORITHMS, f"search.algorithm must be one of {', '.join(ALGORITHMS)}, got {spec.algorithm!r}")
    need(spec.mode in ("max", "min"), f"search.mode must be max or min, got {spec.mode!r}")
    need(spec.metric in ("acc_after_mean", "acc_during_mean", "val_acc_after_mean", "forgetting"),
         f"search.metric {spec.metric!r} is not reported (acc_after_mean, acc_during_mean, val_acc_after_mean, forgetting)")
    need(spec.metric != "val_acc_after_mean" or spec.base.val_fraction > 0,
         "search.metric val_acc_after_mean needs base.val_fraction > 0")
    need(spec.num_samples >= 1, f"num_samples must be >= 1, got {spec.num_samples}")
    need(spec.seeds >= 1, f"seeds must be >= 1, got {spec.seeds}")
    need(spec.max_concurrent >= 1, f"search.max_concurrent must be >= 1, got {spec.max_concurrent}")
    need(0 <= spec.compression_min < spec.compression_max,
         f"compression range must satisfy 0 <= min < max, got [{spec.compression_min}, {spec.compression_max}]")
    need(spec.cpus_per_trial > 0 and spec.gpus_per_trial >= 0, "resources: cpu must be > 0 and gpu >= 0")
    need(spec.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}, got {spec.scheduler!r}")
    need(spec.scheduler == "none" or spec.algorithm != "nsga2",
         "scheduler asha needs a single objective (nsga2 is multi-objective)")
    need(spec.max_failures >= 0, f"max_failures must be >= 0, got {spec.max_failures}")
    need(bool(spec.space), "space is empty: nothing to search")
    fields = set(spec.base.to_dict())
    for key, value in spec.space.items():
        need(key in fields, f"space: {key!r} is not a TrainConfig field")
        need(key not in ("seed", "benchmark", "num_tasks"), f"space: {key!r} cannot be searched (fixed by base/seeds)")
        if key == "chunk_size" and value == "fit":
            need(math.isfinite(spec.compression_max), "chunk_size: fit needs compression.max")
            continue
        if key == "hnet_hidden" and isinstance(value, dict):
            _check_keys("space.hnet_hidden", value, {"layers", "sizes"})
            need(all(isinstance(n, int) and n >= 0 for n in value.get("layers", [])) and value.get("layers"),
                 "space.hnet_hidden.layers must be a non-empty list of integers >= 0")
            need(all(isinstance(s, int) and s > 0 for s in value.get("sizes", [])) and value.get("sizes"),
                 "space.hnet_hidden.sizes must be a non-empty list of positive integers")
            need(spec.algorithm != "grid", "grid search needs a fixed space: list hnet_hidden choices instead")
            continue
        if isinstance(value, list):
            need(len(value) > 0, f"space.{key}: empty choice list")
            for choice in value:  # every choice must make a valid config
                try:
                    spec.base.replace(**{key: choice}).validate()
                except ConfigError as exc:
                    raise SpecError(f"space.{key}: choice {choice!r}: {exc}") from None
            continue
        if isinstance(value, dict) and {"low", "high"} <= set(value):
            _check_keys(f"space.{key}", value, {"low", "high", "log"})
            need(value["low"] < value["high"], f"space.{key}: low must be < high")
            need(spec.algorithm != "grid", f"grid search needs choices, not a range, for {key}")
            continue
        raise SpecError(f"space.{key}: expected a list of choices, a {{low, high}} range"
                        + (", {layers, sizes} or fit" if key in ("hnet_hidden", "chunk_size") else ""))


def fit_chunk_size(cfg: TrainConfig, max_ratio: float) -> int | None:
    """Largest chunk size whose compression ratio is <= max_ratio (None if there is none).

    hnet weights = a + (w + 1) * S + ceil(N / S) * chunk_emb_dim is smallest near
    S* = sqrt(N * chunk_emb_dim / (w + 1)) and grows beyond it, so a binary search over
    [S*, N] finds the largest feasible S.
    """
    target = count_weights(cfg.replace(chunk_size=1)).target_weights
    width = (cfg.hnet_hidden or (cfg.task_emb_dim + cfg.chunk_emb_dim,))[-1]

    def ok(size: int) -> bool:
        return count_weights(cfg.replace(chunk_size=size)).compression_ratio <= max_ratio

    lo = max(1, min(target, round(math.sqrt(target * cfg.chunk_emb_dim / (width + 1)))))
    if not ok(lo):
        return None
    hi = target
    if ok(hi):
        return hi
    while hi - lo > 1:  # invariant: ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo

"""Sweep specifications: YAML, validated before Ray starts.

A spec names the fixed experiment settings (``base``: TrainConfig fields, may name a preset),
how trials run (``runtime``: Runtime fields such as data_root), a search space over TrainConfig
fields, the search algorithm and everything the run needs (samples, seeds, resources,
scheduler, MLflow, storage). See sweeps/configs/*.yaml.

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hnet.config import ConfigError, Runtime, TrainConfig, UserError, coerce, resolve
from hnet.counts import count_weights

ALGORITHMS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("none", "asha")
KEEP_CHECKPOINTS = ("none", "best", "all")  # what a finished trial leaves in Tune's storage
METRICS = ("acc_after_mean", "acc_during_mean", "val_acc_after_mean", "forgetting")  # what a search may optimise


class SpecError(UserError, ValueError):
    """An invalid sweep spec; the message is one line."""


def at(where: str, default: Any) -> Any:
    """A spec field and where it is written in the YAML file ('search.seed': key seed of section search)."""
    return field(default=default, metadata={"yaml": where})


@dataclass
class SweepSpec:
    name: str
    base: TrainConfig
    space: dict[str, Any]
    runtime: Runtime = field(default_factory=Runtime)
    algorithm: str = at("search.algorithm", "tpe")
    metric: str = at("search.metric", "acc_after_mean")
    mode: str = at("search.mode", "max")
    num_samples: int = at("num_samples", 8)  # configurations to train (each with `seeds` seeds)
    seeds: int = at("seeds", 1)
    search_seed: int = at("search.seed", 0)
    max_concurrent: int = at("search.max_concurrent", 2)
    compression_min: float = at("compression.min", 0.0)
    compression_max: float = at("compression.max", math.inf)
    max_rejections: int = at("compression.max_rejections", 2_000)  # draws in a row outside the range (or repeats)
    cpus_per_trial: float = at("resources.cpu", 1.0)
    gpus_per_trial: float = at("resources.gpu", 0.0)
    scheduler: str = at("scheduler.type", "none")
    asha_grace_tasks: int = at("scheduler.grace_tasks", 1)
    asha_reduction_factor: int = at("scheduler.reduction_factor", 2)
    max_failures: int = at("max_failures", 1)  # retries of a failed trial (from its last finished task)
    keep_checkpoints: str = at("keep_checkpoints", "none")  # a finished trial's weights: none, best (by metric), all
    experiment: str = at("mlflow.experiment", "")  # MLflow experiment (default: the sweep name)
    tracking_uri: str = at("mlflow.tracking_uri", "sqlite:///mlflow.db")
    storage_path: str = at("storage_path", "ray_results")
    source: str = ""  # the YAML file it came from
    preset: str | None = None  # base: the preset it names ...
    overrides: dict[str, Any] = field(default_factory=dict)  # ... and the fields it sets on top

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """A trial's config: the base's preset and fields with the trial's ``values`` on top, assembled
        by ``hnet.config.resolve`` as `hnet train` would (not validated)."""
        return resolve(self.preset, {**self.overrides, **values})

    def set_base(self, **changes: Any) -> None:
        """Change base fields (command-line overrides): the base and every trial see them."""
        self.overrides.update(changes)
        self.base = self.trial_config({}).validate()

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
        """Sweep-level MLflow params of the parent run (the runtime is not a param)."""
        out = {f"sweep.{f.name}": str(getattr(self, f.name)) for f in fields(self)
               if f.name not in ("base", "space", "runtime", "preset", "overrides")}
        out.update({f"space.{k}": str(v) for k, v in self.space.items()})
        out.update({f"base.{k}": v for k, v in self.base.to_flat_params().items()})
        return out


_YAML_FIELDS = {f.metadata["yaml"]: f for f in fields(SweepSpec) if "yaml" in f.metadata}
_SECTIONS = {where.split(".")[0] for where in _YAML_FIELDS if "." in where}
_TOP_KEYS = {"name", "base", "space", "runtime"} | {where.split(".")[0] for where in _YAML_FIELDS}


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
    base_values = dict(_mapping(raw.get("base"), "base"))
    misplaced = sorted(set(base_values) & set(Runtime.field_names()))
    if misplaced:
        raise SpecError(f"base: {', '.join(misplaced)} describe(s) how trials run, not the experiment: "
                        f"put them under runtime:")
    space = dict(_mapping(raw.get("space"), "space"))
    try:
        name = base_values.pop("preset", None)
        base = resolve(name, base_values).validate()
    except ConfigError as exc:
        raise SpecError(f"base: {exc}") from None
    try:
        runtime = Runtime.from_dict(_mapping(raw.get("runtime"), "runtime")).validate()
    except ConfigError as exc:
        raise SpecError(f"runtime: {exc}") from None

    sections = {"": raw}
    for section in _SECTIONS:
        value = raw.get(section)
        if section == "scheduler" and isinstance(value, str):
            value = {"type": value}  # `scheduler: asha` is short for `scheduler: {type: asha}`
        sections[section] = _mapping(value, section)
        _check_keys(section, sections[section], {w.split(".")[1] for w in _YAML_FIELDS if w.startswith(section + ".")})
    values = {}
    for where, f in _YAML_FIELDS.items():
        section, key = where.split(".") if "." in where else ("", where)
        if key in sections[section]:
            try:
                values[f.name] = coerce(where, f.type, sections[section][key])
            except ConfigError as exc:
                raise SpecError(str(exc)) from None
    spec = SweepSpec(name=str(raw.get("name") or Path(source).stem or "sweep"), base=base,
                     space=space, runtime=runtime, source=source, preset=name, overrides=base_values, **values)
    spec.experiment = spec.experiment or spec.name
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise SpecError(msg)

    need(spec.algorithm in ALGORITHMS, f"search.algorithm must be one of {', '.join(ALGORITHMS)}, got {spec.algorithm!r}")
    need(spec.mode in ("max", "min"), f"search.mode must be max or min, got {spec.mode!r}")
    need(spec.metric in METRICS, f"search.metric {spec.metric!r} is not reported ({', '.join(METRICS)})")
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
    need(spec.keep_checkpoints in KEEP_CHECKPOINTS,
         f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got {spec.keep_checkpoints!r}")
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
                    spec.trial_config({key: choice}).validate()
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

    def ok(size: int) -> bool:
        return count_weights(cfg.replace(chunk_size=size)).compression_ratio <= max_ratio

    lo = max(1, min(target, round(math.sqrt(target * cfg.chunk_emb_dim / (cfg.hnet_last_width + 1)))))
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

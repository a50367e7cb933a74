"""A sweep spec's search space, one definition for both backends, without Optuna or Ray.

``to_train_config`` turns drawn values into a validated ``TrainConfig`` (deriving ``chunk_size:
fit``, rejecting architectures outside the compression range). Grid and random search are planned
here in full (``configurations``, then ``trials``: each configuration once per seed), so the Ray
backend (``sweeps.search.PlannedSearcher``), the pool (``sweeps.pool``) and ``hnet sweep dry-run``
train and list the same configurations in the same order, and a study begun on one backend goes on
with the other. TPE and NSGA-II learn from finished trials and stay with Optuna (``sweeps.search``),
which draws through the same ``to_train_config``.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from hnet.config import ConfigError, TrainConfig
from hnet.counts import count_weights

from .spec import SpecError, SweepSpec, fit_chunk_size

PLANNED = ("grid", "random")  # algorithms whose trials are known before any trains


class Rejected(Exception):
    """The drawn architecture lies outside the compression range."""

    def __init__(self, message: str, ratio: float | None = None) -> None:
        super().__init__(message)
        self.ratio = ratio  # None: no chunk size could fit the range


def config_key(cfg: TrainConfig) -> str:
    """A configuration's identity (equal keys: the same experiment): for repeated draws, and for trials
    a record already holds."""
    return repr(sorted(cfg.to_dict().items()))


def config_id(cfg: TrainConfig) -> str:
    """A short stable name of a configuration (a checkpoint's file name, the seeds' shared group)."""
    return hashlib.sha1(config_key(cfg).encode()).hexdigest()[:16]


def to_train_config(spec: SweepSpec, values: dict[str, Any]) -> TrainConfig:
    """Drawn values (field -> value) -> full validated TrainConfig with the spec's base seed
    (raises Rejected if out of range)."""
    try:
        cfg = spec.trial_config(values)
        if spec.space.get("chunk_size") == "fit":
            size = fit_chunk_size(cfg, spec.compression_max)
            if size is None:
                raise Rejected("no chunk size brings the compression ratio under the maximum")
            cfg = cfg.replace(chunk_size=size)
        cfg.validate()
    except ConfigError as exc:
        raise SpecError(f"sampled configuration is invalid: {exc}") from None
    ratio = count_weights(cfg).compression_ratio
    if not spec.compression_min <= ratio <= spec.compression_max:
        raise Rejected(f"compression ratio {ratio:.3f} outside [{spec.compression_min}, {spec.compression_max}]", ratio)
    return cfg


def too_many_misses(spec: SweepSpec) -> SpecError:
    return SpecError(f"{spec.max_rejections} draws in a row gave no new configuration that lies in the compression "
                     f"range [{spec.compression_min}, {spec.compression_max}]: widen the range or the space")


def draw(spec: SweepSpec, rng: random.Random) -> dict[str, Any]:
    """One random point of the space: a choice from each list, a value from each range (log-uniform
    with ``log``), a layer count and then one size per layer for ``hnet_hidden: {layers, sizes}``."""
    values: dict[str, Any] = {}
    for key, choice in spec.space.items():
        if choice == "fit":
            continue
        if isinstance(choice, list):
            values[key] = rng.choice(choice)
        elif "layers" in choice:
            values[key] = [rng.choice(choice["sizes"]) for _ in range(rng.choice(choice["layers"]))]
        else:
            low, high = choice["low"], choice["high"]
            u = rng.uniform(math.log(low), math.log(high)) if choice.get("log") else rng.uniform(low, high)
            u = math.exp(u) if choice.get("log") else u
            values[key] = min(high, max(low, round(u))) if isinstance(low, int) and isinstance(high, int) else u
    return values


@dataclass
class Plan:
    """A grid or random search worked out: its configurations and what the compression filter did."""

    configs: list[TrainConfig]
    drawn: int = 0  # architectures drawn (grid: its points)
    rejected: int = 0  # outside the compression range
    duplicates: int = 0  # equal to an earlier draw (e.g. chunk_size: fit mapping two draws to one)

    def stats(self) -> dict[str, int]:
        return {"architectures_drawn": self.drawn, "architectures_rejected": self.rejected,
                "duplicates_skipped": self.duplicates}


def plan(spec: SweepSpec) -> Plan:
    """The configurations of a grid or random spec, at most ``num_samples``: the grid's points inside the
    compression range in a fixed shuffled order, or the first ``num_samples`` distinct random draws inside
    it in the order drawn (fewer when ``max_rejections`` draws in a row bring nothing new). Either way a
    larger ``num_samples`` extends the list without changing its start: a study grows by running again."""
    if spec.algorithm not in PLANNED:
        raise SpecError(f"search.algorithm {spec.algorithm} learns from finished trials and needs the Ray "
                        "backend (Optuna); the pool backend runs grid and random searches")
    if spec.algorithm == "grid":
        keys = [k for k, v in spec.space.items() if v != "fit"]
        points = (dict(zip(keys, point)) for point in itertools.product(*(spec.space[k] for k in keys)))
    else:
        rng = random.Random(spec.search_seed)
        points = (draw(spec, rng) for _ in itertools.count())
    result, seen, misses = Plan([]), set(), 0
    for values in points:
        if len(result.configs) == spec.num_samples and spec.algorithm == "random":
            break
        result.drawn += 1
        try:
            cfg = to_train_config(spec, values)
        except Rejected:
            result.rejected, misses = result.rejected + 1, misses + 1
        else:
            key = config_key(cfg)
            if key in seen:
                result.duplicates, misses = result.duplicates + 1, misses + 1
            else:
                seen.add(key)
                result.configs.append(cfg)
                misses = 0  # max_rejections counts draws in a row
        if misses > spec.max_rejections and spec.algorithm == "random":
            break
    if not result.configs:
        raise too_many_misses(spec) if spec.algorithm == "random" else SpecError(
            f"none of the {result.drawn} grid points lies in the compression range "
            f"[{spec.compression_min}, {spec.compression_max}]")
    if spec.algorithm == "grid":  # a grid larger than num_samples: a random part of it
        random.Random(0).shuffle(result.configs)
        result.configs = result.configs[:spec.num_samples]
    return result


def seeded(spec: SweepSpec, cfg: TrainConfig) -> list[TrainConfig]:
    """A configuration's trials: one per seed of the spec (the base's seed, +1, ...)."""
    return [cfg.replace(seed=spec.base.seed + s) for s in range(spec.seeds)]


def trials(spec: SweepSpec, configs: list[TrainConfig], done: set[str] = frozenset()) -> list[TrainConfig]:
    """Every trial of planned configurations, seed by seed (a study cut short has covered the whole
    space once before it repeats any configuration with another seed), but those ``done`` already
    (``config_key``s of a results file)."""
    per_config = [seeded(spec, c) for c in configs]
    return [group[s] for s in range(spec.seeds) for group in per_config if config_key(group[s]) not in done]


def group_and_seed(spec: SweepSpec, cfg: TrainConfig) -> tuple[str, int]:
    """A trial's configuration group (its seeds share it: ``config_id`` at the base seed) and seed index."""
    return config_id(cfg.replace(seed=spec.base.seed)), cfg.seed - spec.base.seed


def check_feasible(spec: SweepSpec, probes: int = 300) -> int | None:
    """Before anything starts: fail fast if no configuration lies in the compression range. A grid or
    random spec is planned (returns how many configurations it has); TPE and NSGA-II are probed with
    random draws (returns None)."""
    if spec.algorithm in PLANNED:
        return len(plan(spec).configs)
    rng = random.Random(spec.search_seed)
    for _ in range(probes):
        try:
            to_train_config(spec, draw(spec, rng))
            return None
        except Rejected:
            pass
    raise SpecError(f"none of {probes} random draws lies in the compression range "
                    f"[{spec.compression_min}, {spec.compression_max}]")

"""A spec's search space -> trial configurations, without Optuna or Ray.

``to_train_config`` turns drawn values into a validated ``TrainConfig`` (deriving
``chunk_size: fit``, rejecting draws outside the compression range); both backends use it.
``expand`` lists a whole grid or random search up front, which the pool backend
(``sweeps.pool``) needs: it runs on machines that have neither Optuna nor Ray.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Any

from hnet.config import ConfigError, TrainConfig
from hnet.counts import count_weights

from .spec import SpecError, SweepSpec, fit_chunk_size


class Rejected(Exception):
    """The drawn architecture lies outside the compression range."""

    def __init__(self, message: str, ratio: float | None = None) -> None:
        super().__init__(message)
        self.ratio = ratio  # None: no chunk size could fit the range


def config_key(cfg: TrainConfig) -> str:
    """A configuration's identity (equal keys: the same experiment): for repeated draws, and for trials
    a results file already holds."""
    return repr(sorted(cfg.to_dict().items()))


def to_train_config(spec: SweepSpec, params: dict[str, Any], seed: int = 0) -> TrainConfig:
    """Drawn values (Optuna's params, or ``draw``'s) -> full validated TrainConfig (raises Rejected
    if out of range). Optuna draws conditional layer sizes as ``hnet_layers``/``hnet_layer{i}``."""
    values = {k: v for k, v in params.items() if k != "hnet_layers" and not k.startswith("hnet_layer")}
    if "hnet_layers" in params:
        values["hnet_hidden"] = [params[f"hnet_layer{i + 1}"] for i in range(params["hnet_layers"])]
    try:
        cfg = spec.trial_config(values).replace(seed=spec.base.seed + seed)
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


def expand(spec: SweepSpec) -> list[TrainConfig]:
    """Every trial of a grid or random spec: the grid's points inside the compression range (or
    ``num_samples`` distinct random draws inside it), in a fixed shuffled order, each with the
    spec's seeds (seed by seed: a run cut short has covered the whole space once)."""
    if spec.algorithm == "grid":
        keys = [k for k, v in spec.space.items() if v != "fit"]
        configs = []
        for point in itertools.product(*(spec.space[k] for k in keys)):
            try:
                configs.append(to_train_config(spec, dict(zip(keys, point))))
            except Rejected:
                pass
        configs = list({config_key(c): c for c in configs}.values())
        if not configs:
            raise SpecError("no grid point lies in the compression range "
                            f"[{spec.compression_min}, {spec.compression_max}]")
    elif spec.algorithm == "random":
        rng, configs, seen, misses = random.Random(spec.search_seed), [], set(), 0
        while len(configs) < spec.num_samples:
            try:
                cfg = to_train_config(spec, draw(spec, rng))
            except Rejected:
                cfg = None
            key = config_key(cfg) if cfg else None
            if cfg is None or key in seen:
                misses += 1
                if misses > spec.max_rejections:
                    raise SpecError(f"{spec.max_rejections} draws in a row were outside the compression range "
                                    f"[{spec.compression_min}, {spec.compression_max}] or repeated earlier "
                                    "configurations: widen the range or the space")
                continue
            seen.add(key)
            configs.append(cfg)
            misses = 0  # max_rejections counts draws in a row, as the Ray searcher does
    else:
        raise SpecError(f"search.algorithm {spec.algorithm} learns from finished trials and needs the Ray "
                        "backend (Optuna); the pool backend runs grid and random searches")
    random.Random(0).shuffle(configs)
    configs = configs[:spec.num_samples]  # a grid larger than num_samples: a random part of it
    return [c.replace(seed=c.seed + s) for s in range(spec.seeds) for c in configs]

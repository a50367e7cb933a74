"""Typed, validated run configuration and the paper's presets.

One flat dataclass describes a whole continual-learning run: benchmark, target network,
hypernetwork, regularizer and optimisation. It is validated before anything expensive
happens and serialises to flat key/value pairs (MLflow params, JSON, YAML).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("linear", "relu", "elu", "leaky_relu")
SCENARIOS = ("cl1",)  # CL2/CL3 need task inference; the config keeps room for them.
REG_FORMS = ("auto", "factored", "direct")
HNET_INITS = ("hyperfan", "xavier")


class UserError(Exception):
    """Bad input from the user: the CLI prints the one-line message and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot run."""


class DataError(UserError, RuntimeError):
    """Data cannot be loaded."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """What the model builder needs to know about a benchmark, without loading data."""

    input_dim: int
    classes_per_task: int
    max_tasks: int | None  # None: any number (permutations)
    default_tasks: int
    dataset: str  # mnist | fashion_mnist | digits


BENCHMARKS: dict[str, BenchmarkSpec] = {
    # MNIST-sized permuted benchmarks are zero-padded to 32x32 as in the paper (App. C).
    "permuted_mnist": BenchmarkSpec(1024, 10, None, 10, "mnist"),
    "split_mnist": BenchmarkSpec(784, 2, 5, 5, "mnist"),
    "permuted_fashion_mnist": BenchmarkSpec(1024, 10, None, 10, "fashion_mnist"),
    "split_fashion_mnist": BenchmarkSpec(784, 2, 5, 5, "fashion_mnist"),
    # Offline variants over scikit-learn's bundled 8x8 digits (tests and demos).
    "permuted_digits": BenchmarkSpec(64, 10, None, 5, "digits"),
    "split_digits": BenchmarkSpec(64, 2, 5, 5, "digits"),
}


@dataclass
class TrainConfig:
    # benchmark
    benchmark: str = "split_digits"
    num_tasks: int = 5
    scenario: str = "cl1"
    val_fraction: float = 0.0  # held out of each task's training set for model selection
    data_seed: int = 42  # fixes the permutations and the validation split across training seeds
    data_root: str = "data"
    # target network (fully connected, ReLU as van de Ven & Tolias 2019)
    target_hidden: tuple[int, ...] = (100, 100)
    target_activation: str = "relu"
    multi_head: bool = False  # one output head per task, only the current one used
    # hypernetwork
    hnet_hidden: tuple[int, ...] = (25, 25)
    hnet_activation: str = "elu"
    chunk_size: int = 2000
    task_emb_dim: int = 24
    chunk_emb_dim: int = 8
    hnet_init: str = "hyperfan"  # hyperfan (chunked hyperfan-in, docs/init.md) | xavier (the authors' code)
    hnet_emb_std: float = 0.0  # std of task and chunk embeddings at init; 0 = the init's own (xavier 1, hyperfan derived)
    # output regularizer, Eq. 2
    beta: float = 0.01
    lookahead: bool = True
    reg_subset: int = 0  # at most K random earlier tasks per iteration (App. D); 0 = all
    reg_form: str = "auto"  # factored | direct (materialises generated weights) | auto: the cheaper one
    # optimisation
    lr: float = 1e-3
    iters: int = 500
    batch_size: int = 128
    eval_batch_size: int = 5000
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    cuda_graph: bool = True  # on a GPU, capture the training step once and replay it (hnet/graphs.py)
    # failure injection for tests of the sweep machinery: loss becomes NaN at this task
    nan_at_task: int = -1

    # ---- derived helpers -------------------------------------------------------------
    @property
    def spec(self) -> BenchmarkSpec:
        return BENCHMARKS[self.benchmark]

    def validate(self) -> "TrainConfig":
        """Raise ConfigError with a one-line message for anything that cannot run."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.benchmark in BENCHMARKS,
             f"unknown benchmark {self.benchmark!r} (choose from {', '.join(BENCHMARKS)})")
        spec = self.spec
        need(self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}")
        need(spec.max_tasks is None or self.num_tasks <= spec.max_tasks,
             f"{self.benchmark} has at most {spec.max_tasks} tasks, got {self.num_tasks}")
        need(self.scenario in SCENARIOS, f"scenario {self.scenario!r} is not supported yet (choose from {', '.join(SCENARIOS)})")
        need(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("target_hidden", "hnet_hidden"):
            sizes = getattr(self, name)
            need(all(isinstance(s, int) and s > 0 for s in sizes),
                 f"{name} sizes must be positive integers, got {list(sizes)}")
        need(len(self.target_hidden) >= 1, "target_hidden needs at least one layer")
        for name in ("hnet_activation", "target_activation"):
            act = getattr(self, name)
            need(act in ACTIVATIONS, f"unknown {name} {act!r} (choose from {', '.join(ACTIVATIONS)})")
        for name in ("chunk_size", "task_emb_dim", "chunk_emb_dim", "iters", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value}")
        need(math.isfinite(self.beta) and self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.reg_subset >= 0, f"reg_subset must be >= 0 (0 = all earlier tasks), got {self.reg_subset}")
        need(self.hnet_init in HNET_INITS, f"unknown hnet_init {self.hnet_init!r} (choose from {', '.join(HNET_INITS)})")
        need(math.isfinite(self.hnet_emb_std) and self.hnet_emb_std >= 0,
             f"hnet_emb_std must be >= 0 (0 = the init's own), got {self.hnet_emb_std}")
        need(self.reg_form in REG_FORMS, f"unknown reg_form {self.reg_form!r} (choose from {', '.join(REG_FORMS)})")
        need(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    def resolved_reg_form(self) -> str:
        """auto: the factored form costs ~chunks*(2w+1)^2 per earlier task, the direct one
        ~chunks*chunk_size*w; factored wins for few large chunks (the paper's presets),
        direct for many small ones (e.g. chunk size 10 in the Fig. A7 grid)."""
        if self.reg_form != "auto":
            return self.reg_form
        width = (self.hnet_hidden or (self.task_emb_dim + self.chunk_emb_dim,))[-1]
        return "factored" if self.chunk_size >= 8 * width else "direct"

    # ---- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_hidden"] = list(self.target_hidden)
        d["hnet_hidden"] = list(self.hnet_hidden)
        return d

    def to_flat_params(self) -> dict[str, str]:
        """Flat string params (MLflow): lists as comma-separated sizes, '' for none."""
        return {k: (",".join(map(str, v)) if isinstance(v, list) else str(v))
                for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        clean = {k: _coerce(k, v) for k, v in values.items()}
        return cls(**clean)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def parse_sizes(value: Any) -> tuple[int, ...]:
    """'25,25' / [25, 25] / '' / None -> (25, 25) / () ; raises ConfigError."""
    if value is None or value == "" or value == []:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(str(s).strip()) for s in items)
    except ValueError:
        raise ConfigError(f"layer sizes must be comma-separated integers, got {value!r}") from None


def _coerce(key: str, value: Any) -> Any:
    """Turn YAML/CLI/MLflow values into the field's type with a one-line error."""
    kind = _FIELD_TYPES[key]
    if key in ("target_hidden", "hnet_hidden"):
        return parse_sizes(value)
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {kind}, got {value!r}") from None


# The paper's two MNIST classifier configurations (Appendix C, HNET CL1). Presets keep the
# authors' Glorot init: with their few large chunks it beats hyperfan (docs/init.md).
PRESETS: dict[str, dict[str, Any]] = {
    # 784-400-400-2 target, hnet [10,10], chunk 42,000, embeddings 96/96 -> 465,192 weights.
    "split_mnist": dict(
        benchmark="split_mnist", num_tasks=5, target_hidden=(400, 400), multi_head=False,
        hnet_hidden=(10, 10), hnet_activation="elu", chunk_size=42000, task_emb_dim=96,
        chunk_emb_dim=96, beta=0.01, lr=1e-3, iters=2000, batch_size=128, lookahead=True, hnet_init="xavier"),
    # 1024-1000-1000-10 target, hnet [25,25], chunk 78,000, embeddings 24/8 -> 2,029,691 weights.
    "permuted_mnist": dict(
        benchmark="permuted_mnist", num_tasks=10, target_hidden=(1000, 1000), multi_head=False,
        hnet_hidden=(25, 25), hnet_activation="elu", chunk_size=78000, task_emb_dim=24,
        chunk_emb_dim=8, beta=0.01, lr=1e-4, iters=5000, batch_size=128, lookahead=True, hnet_init="xavier"),
}
# The authors' published code differs from the paper's text in two places.
PRESETS["split_mnist_authors"] = {**PRESETS["split_mnist"], "hnet_activation": "relu"}
PRESETS["permuted_mnist_authors"] = {**PRESETS["permuted_mnist"], "beta": 0.1}
# Tiny offline configurations (seconds on a laptop CPU).
PRESETS["split_digits"] = dict(
    benchmark="split_digits", num_tasks=5, target_hidden=(100, 100), hnet_hidden=(25, 25),
    chunk_size=2000, task_emb_dim=24, chunk_emb_dim=8, beta=0.05, lr=1e-3, iters=300, batch_size=64, hnet_init="xavier")
PRESETS["permuted_digits"] = dict(
    benchmark="permuted_digits", num_tasks=5, target_hidden=(100, 100), hnet_hidden=(25, 25),
    chunk_size=2000, task_emb_dim=24, chunk_emb_dim=8, beta=0.05, lr=1e-3, iters=300, batch_size=64, hnet_init="xavier")


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return TrainConfig.from_dict(PRESETS[name])


__all__ = ["TrainConfig", "UserError", "ConfigError", "DataError", "BENCHMARKS", "PRESETS", "preset", "parse_sizes"]

"""Typed, validated run configuration and the paper's presets.

Two dataclasses, every field defined once with its help text (CLI flags and spec sections
are derived from them):

* ``TrainConfig``: what defines an experiment (benchmark, networks, regularizer,
  optimisation, seed). Its fields are a run's MLflow params and identify a configuration
  when seeds are aggregated.
* ``Runtime``: how a run executes (data folder, device, threads, evaluation batches, which
  of two equal regularizer computations). It never changes what a result means.

Both are validated before anything expensive happens and serialise to flat key/value pairs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import methods

ACTIVATIONS = ("linear", "relu", "elu", "leaky_relu", "sigmoid")
SCENARIOS = tuple(methods.SCENARIOS)  # what each one means: hnet.methods
METHODS = tuple(methods.METHODS)
REG_FORMS = ("auto", "factored", "direct")
HNET_INITS = ("xavier_capped", "xavier")
LR_SCHEDULES = ("constant", "cosine")
REPLAY_MIXES = ("by_tasks", "equal")


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
    dataset: str  # mnist | fashion_mnist | digits | polynomials | cifar10_100
    regression: bool = False  # one real output per task, MSE loss and metric (classes_per_task = 1)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    # MNIST-sized permuted benchmarks are zero-padded to 32x32 as in the paper (App. C).
    "permuted_mnist": BenchmarkSpec(1024, 10, None, 10, "mnist"),
    "split_mnist": BenchmarkSpec(784, 2, 5, 5, "mnist"),
    "permuted_fashion_mnist": BenchmarkSpec(1024, 10, None, 10, "fashion_mnist"),
    "split_fashion_mnist": BenchmarkSpec(784, 2, 5, 5, "fashion_mnist"),
    # Offline variants over scikit-learn's bundled 8x8 digits (tests and demos).
    "permuted_digits": BenchmarkSpec(64, 10, None, 5, "digits"),
    "split_digits": BenchmarkSpec(64, 2, 5, 5, "digits"),
    # Fig. 2: three 1-D polynomial regression tasks on disjoint input intervals (generated, hnet/data.py).
    "regression_1d": BenchmarkSpec(1, 1, 3, 3, "polynomials", regression=True),
    # Fig. 5 / A3: all of CIFAR-10, then ten classes of CIFAR-100 per task (32x32x3 images, channels first).
    "split_cifar": BenchmarkSpec(3 * 32 * 32, 10, 11, 6, "cifar10_100"),
}
# Target networks: fully connected (target_hidden), or the paper's convolutional ones for 32x32x3 images.
TARGET_ARCHS = ("mlp", "zenke", "resnet32")


def option(default: Any, help: str, choices: Sequence[str] = ()) -> Any:
    """A config field with its help text and allowed values: the one place a flag is described."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


class Fields:
    """(De)serialisation shared by the two config dataclasses: flat dicts in, validated objects out."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_flat_params(self) -> dict[str, str]:
        """Flat string values (MLflow): lists as comma-separated sizes, '' for none."""
        return {k: (",".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**{k: coerce(k, types[k], v) for k, v in values.items()})

    def replace(self, **changes: Any):
        return type(self).from_dict({**self.to_dict(), **changes})

    def _check_choices(self) -> None:
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ConfigError(f"unknown {f.name} {getattr(self, f.name)!r} (choose from {', '.join(allowed)})")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class TrainConfig(Fields):
    """One continual-learning experiment: everything that decides its result."""

    # benchmark
    benchmark: str = option("split_digits", "benchmark", BENCHMARKS)
    num_tasks: int = option(5, "number of tasks learned in sequence (default: the benchmark's, 10 permuted, 5 split)")
    scenario: str = option("cl1", "continual-learning scenario (README: heads and labels)", SCENARIOS)
    method: str = option("hnet", "what learns: the hypernetwork (cl2/cl3 by predictive entropy, HNET+ENT; hnet_tir: "
                                 "by a task-inference classifier trained with replay, HNET+TIR), the target network "
                                 "trained with replay from a hypernetwork-protected VAE (hnet_r, HNET+R), or the "
                                 "target network itself, unprotected (finetune), with online EWC or with SI", METHODS)
    val_fraction: float = option(0.0, "fraction of each task's training set held out for model selection")
    augment: bool = option(False, "training images flipped left-right and shifted by up to 4 pixels (32x32x3 only)")
    data_seed: int = option(42, "seed of the permutations and the validation split (fixed across training seeds)")
    # target network (fully connected, ReLU as van de Ven & Tolias 2019; convolutional on CIFAR)
    target_arch: str = option("mlp", "target network: mlp (fully connected: target_hidden, target_activation), or for "
                                     "32x32x3 images zenke (Zenke et al. 2017) or resnet32 (He et al. 2016)", TARGET_ARCHS)
    target_hidden: tuple[int, ...] = option((100, 100), "target MLP hidden sizes, e.g. 1000,1000")
    target_activation: str = option("relu", "target network activation", ACTIVATIONS)
    multi_head: bool = option(False, "one output head per task, only the current task's head used (cl3: the "
                                     "head of the task inferred by entropy, as the authors' code)")
    # hypernetwork
    hnet_hidden: tuple[int, ...] = option((25, 25), "hypernetwork hidden sizes, e.g. 25,25 ('' = none)")
    hnet_activation: str = option("relu", "hypernetwork activation", ACTIVATIONS)
    chunk_size: int = option(2000, "target weights generated per hypernetwork call (chunk)")
    task_emb_dim: int = option(24, "task embedding size")
    chunk_emb_dim: int = option(8, "chunk embedding size")
    hnet_init: str = option("xavier_capped", "hypernetwork initialisation: xavier_capped (Glorot, small chunks "
                                             "started at the target's fan-in variance, faster chunk embeddings) or "
                                             "xavier (the authors' code); docs/init.md", HNET_INITS)
    hnet_emb_std: float = option(0.0, "std of task and chunk embeddings at init (0 = 1, the authors')")
    # output regularizer, Eq. 2
    beta: float = option(0.01, "regularizer strength β of Eq. 2 (0 = fine-tuning baseline)")
    lookahead: bool = option(True, "evaluate the regularizer at Θ+ΔΘ, the candidate step (Sec. 2.1)")
    reg_subset: int = option(0, "regularize a random subset of at most K earlier tasks per step (App. D; 0 = all)")
    # baselines on the target network
    ewc_lambda: float = option(5000.0, "online EWC: strength λ of the Fisher penalty (Schwarz et al. 2018)")
    ewc_gamma: float = option(1.0, "online EWC: decay γ of the accumulated Fisher information")
    si_c: float = option(1.0, "SI: strength c of the importance penalty (Zenke et al. 2017)")
    si_xi: float = option(0.1, "SI: damping ξ of the importance")
    # replay model of hnet_tir / hnet_r (App. B): a VAE whose decoder weights a second hypernetwork generates per task
    replay_enc_hidden: tuple[int, ...] = option((100, 100), "replay VAE: encoder hidden sizes (trained directly)")
    replay_dec_hidden: tuple[int, ...] = option((100, 100), "replay VAE: decoder hidden sizes (generated per task)")
    replay_latent_dim: int = option(100, "replay VAE: latent size (the decoder also gets a fixed random 100-d "
                                         "input per task, App. C)")
    replay_hnet_hidden: tuple[int, ...] = option((25, 25), "replay VAE: hidden sizes of the decoder's hypernetwork")
    replay_chunk_size: int = option(2000, "replay VAE: decoder weights generated per hypernetwork call")
    replay_task_emb_dim: int = option(24, "replay VAE: task embedding size of the decoder's hypernetwork")
    replay_chunk_emb_dim: int = option(8, "replay VAE: chunk embedding size of the decoder's hypernetwork")
    replay_beta: float = option(0.05, "replay VAE: β of Eq. 2 on the decoder's hypernetwork")
    replay_mix: str = option("by_tasks", "weights of the current and the replayed loss: by_tasks (1/(t+1) and t/(t+1) "
                                         "after t tasks, every task counts the same) or equal (1/2 each)", REPLAY_MIXES)
    replay_temperature: float = option(2.0, "HNET+R: temperature of the distillation on replayed inputs")
    soft_target: float = option(1.0, "training target probability of the true class, the rest spread evenly over "
                                     "the other classes (1 = one-hot; App. D: 0.95 on the small target)")
    # optimisation
    lr: float = option(1e-3, "Adam learning rate")
    lr_schedule: str = option("constant", "learning rate within each task: constant (the paper) or cosine (from lr "
                                          "down to 0 at the task's last iteration; docs/init_history.md, CL1 parity)",
                              LR_SCHEDULES)
    iters: int = option(500, "training iterations per task")
    batch_size: int = option(128, "mini-batch size")
    seed: int = option(0, "random seed (initialisation, batches)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Values that name no ``num_tasks`` learn their benchmark's default number of tasks (10 for
        the permuted, 5 for the split ones), however the config is written (flags, file, spec)."""
        benchmark = values.get("benchmark", cls.benchmark)
        if "num_tasks" not in values and benchmark in BENCHMARKS:
            values = {**values, "num_tasks": BENCHMARKS[benchmark].default_tasks}
        return super().from_dict(values)

    @property
    def spec(self) -> BenchmarkSpec:
        return BENCHMARKS[self.benchmark]

    @property
    def method_kind(self) -> methods.Method:
        """What the method is (``hnet.methods``): learner, generated classifier, replay, penalty."""
        return methods.METHODS[self.method]

    @property
    def scenario_kind(self) -> methods.ScenarioKind:
        return methods.SCENARIOS[self.scenario]

    @property
    def hnet_last_width(self) -> int:
        """Width of the layer the hypernetwork's output layer reads: its last hidden layer, or without
        hidden layers its input (task and chunk embedding)."""
        return (self.hnet_hidden or (self.task_emb_dim + self.chunk_emb_dim,))[-1]

    @property
    def generated_classifier(self) -> bool:
        """The classifier's weights come from a hypernetwork, one set per task (hnet, hnet_tir)."""
        return self.method_kind.generated_classifier

    @property
    def uses_replay(self) -> bool:
        """A replay VAE is trained: HNET+R always, HNET+TIR where the task must be inferred (cl2/cl3)."""
        return self.method_kind.uses_replay(self.scenario_kind)

    def replay_hnet_config(self) -> "TrainConfig":
        """The replay decoder's hypernetwork described as a classifier's (the fields HypernetLearner and
        the weight counts read): its sizes and β, the optimisation of this config."""
        return self.replace(hnet_hidden=self.replay_hnet_hidden, chunk_size=self.replay_chunk_size,
                            task_emb_dim=self.replay_task_emb_dim, chunk_emb_dim=self.replay_chunk_emb_dim,
                            beta=self.replay_beta, method="hnet")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError with a one-line message for anything that cannot run."""
        self._check_choices()
        spec = self.spec
        _need(self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}")
        _need(spec.max_tasks is None or self.num_tasks <= spec.max_tasks,
              f"{self.benchmark} has at most {spec.max_tasks} tasks, got {self.num_tasks}")
        _need(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("target_hidden", "hnet_hidden"):
            sizes = getattr(self, name)
            _need(all(isinstance(s, int) and s > 0 for s in sizes),
                  f"{name} sizes must be positive integers, got {list(sizes)}")
        _need(len(self.target_hidden) >= 1, "target_hidden needs at least one layer")
        for name in ("replay_enc_hidden", "replay_dec_hidden"):
            _need(len(getattr(self, name)) >= 1 and all(isinstance(s, int) and s > 0 for s in getattr(self, name)),
                  f"{name} needs at least one layer of positive size, got {list(getattr(self, name))}")
        _need(all(isinstance(s, int) and s > 0 for s in self.replay_hnet_hidden),
              f"replay_hnet_hidden sizes must be positive integers, got {list(self.replay_hnet_hidden)}")
        _need(isinstance(self.chunk_emb_dim, int) and self.chunk_emb_dim >= 0,
              f"chunk_emb_dim must be a non-negative integer, got {self.chunk_emb_dim}")
        colour_32x32 = spec.input_dim == 3 * 32 * 32
        if self.target_arch != "mlp":
            _need(colour_32x32, f"target_arch {self.target_arch} is for 32x32x3 images (split_cifar), "
                                f"not {self.benchmark}")
            _need(not (self.target_arch == "resnet32" and self.generated_classifier and not self.scenario_kind.task_given),
                  "resnet32 keeps batch-norm statistics per task: with a hypernetwork it runs in cl1 (the task known)")
            _need(not self.uses_replay, f"{self.method} replays images through an MLP VAE: not on {self.benchmark}")
        _need(not self.augment or colour_32x32, f"augment is for 32x32x3 images, not {self.benchmark}")
        if spec.regression:
            _need(self.scenario_kind.task_given and self.method_kind.regression,
                  f"{self.benchmark} is a regression: scenario cl1 with method "
                  f"{' or '.join(m.name for m in methods.METHODS.values() if m.regression)} only")
        for name in ("chunk_size", "task_emb_dim", "iters", "batch_size", "replay_latent_dim",
                     "replay_chunk_size", "replay_task_emb_dim", "replay_chunk_emb_dim"):
            value = getattr(self, name)
            _need(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value}")
        for name in ("beta", "replay_beta"):
            _need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                  f"{name} must be >= 0, got {getattr(self, name)}")
        _need(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        _need(self.reg_subset >= 0, f"reg_subset must be >= 0 (0 = all earlier tasks), got {self.reg_subset}")
        _need(math.isfinite(self.hnet_emb_std) and self.hnet_emb_std >= 0,
              f"hnet_emb_std must be >= 0 (0 = 1), got {self.hnet_emb_std}")
        _need(math.isfinite(self.replay_temperature) and self.replay_temperature > 0,
              f"replay_temperature must be > 0, got {self.replay_temperature}")
        for name in ("ewc_lambda", "si_c", "si_xi"):
            _need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                  f"{name} must be >= 0, got {getattr(self, name)}")
        _need(1 / self.spec.classes_per_task <= self.soft_target <= 1,
              f"soft_target must be in [1/classes, 1] = [{1 / self.spec.classes_per_task:g}, 1], got {self.soft_target}")
        _need(0 < self.ewc_gamma <= 1, f"ewc_gamma must be in (0, 1], got {self.ewc_gamma}")
        _need(not (self.multi_head and not self.generated_classifier),
              f"multi_head is an option of a hypernetwork classifier (hnet, hnet_tir): for method {self.method} "
              f"the scenario decides the heads (cl1 one per task, cl2 one shared, cl3 one over all classes)")
        _need(not (self.multi_head and self.scenario_kind.heads == "shared"),
              "multi_head contradicts scenario cl2, where one output head is shared by all tasks")
        return self

    def heads(self) -> tuple[int, int]:
        """(outputs per head, number of heads) of the target network.

        A hypernetwork generates weights per task, so it needs one head of a task's classes;
        with ``multi_head`` each task trains its own head (in cl3 HNET+ENT scores every task's
        weights with that task's head: the authors' code and the paper's CL3 weight count,
        784-400-400-10 for SplitMNIST). A target network trained directly gets
        one head per task in cl1, one shared head in cl2 (labels within the task) and, in cl3,
        one head over the classes of all tasks (global labels; only the classes seen so far are
        active, as in van de Ven & Tolias 2019).
        """
        classes, tasks = self.spec.classes_per_task, self.num_tasks
        if self.generated_classifier:
            return classes, tasks if self.multi_head else 1
        return {"per_task": (classes, tasks), "shared": (classes, 1), "all_classes": (classes * tasks, 1)}[
            self.scenario_kind.heads]


@dataclass
class Runtime(Fields):
    """How a run executes; none of it changes what the result means."""

    data_root: str = option("data", "dataset folder in torchvision's layout (<root>/MNIST/raw/...)")
    device: str = option("auto", "auto, cpu or cuda[:N]")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    cuda_graph: bool = option(True, "on a GPU, capture the training step once and replay it (hnet/graphs.py)")
    eval_batch_size: int = option(5000, "test inputs per evaluation batch")
    reg_form: str = option("auto", "how Eq. 2 is computed, equal in exact arithmetic (auto: the cheaper)", REG_FORMS)

    def validate(self) -> "Runtime":
        self._check_choices()
        _need(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        _need(isinstance(self.eval_batch_size, int) and self.eval_batch_size > 0,
              f"eval_batch_size must be a positive integer, got {self.eval_batch_size}")
        _need(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    def with_cpu_share(self, cpus: float) -> "Runtime":
        """Threads 0 (unset) become a trial's share of the CPUs, at least 1: sweeps run trials side by side,
        and torch's default (every core) in each of them would oversubscribe the machine."""
        return self if self.threads else self.replace(threads=max(1, math.floor(cpus)))

    def reg_form_for(self, cfg: TrainConfig) -> str:
        """auto: the factored form costs ~chunks*(2w+1)^2 per earlier task, the direct one
        ~chunks*chunk_size*w plus passes over all generated weights; factored wins for few large
        chunks (the paper's presets), direct for many small ones (e.g. chunk size 10 in the Fig. A7
        grid); the threshold of 3w is where the measurements in docs/train.md cross."""
        if self.reg_form != "auto":
            return self.reg_form
        return "factored" if cfg.chunk_size >= 3 * cfg.hnet_last_width else "direct"


def split_fields(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A flat mapping of either kind of field -> (experiment fields, runtime fields); unknown keys raise."""
    experiment_names, runtime_names = set(TrainConfig.field_names()), set(Runtime.field_names())
    experiment = {k: v for k, v in values.items() if k in experiment_names}
    runtime = {k: v for k, v in values.items() if k in runtime_names}
    unknown = sorted(set(values) - set(experiment) - set(runtime))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    return experiment, runtime


def parse_sizes(value: Any) -> tuple[int, ...]:
    """'25,25' / [25, 25] / '' / None -> (25, 25) / () ; raises ConfigError."""
    if value is None or value == "" or value == []:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(str(s).strip()) for s in items)
    except ValueError:
        raise ConfigError(f"layer sizes must be comma-separated integers, got {value!r}") from None


def coerce(key: str, kind: str, value: Any) -> Any:
    """Turn YAML/CLI/MLflow values into the field's type (``kind``: its annotation) with a one-line error."""
    if kind.startswith("tuple"):
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


# The paper's two MNIST classifier configurations (Appendix C, HNET CL1). At their few large chunks the
# default init is the authors' Glorot, bit for bit (docs/init.md).
PRESETS: dict[str, dict[str, Any]] = {
    # 784-400-400-2 target, hnet [10,10], chunk 42,000, embeddings 96/96 -> 465,192 weights.
    "split_mnist": dict(
        benchmark="split_mnist", num_tasks=5, target_hidden=(400, 400), multi_head=False,
        hnet_hidden=(10, 10), hnet_activation="elu", chunk_size=42000, task_emb_dim=96,
        chunk_emb_dim=96, beta=0.01, lr=1e-3, iters=2000, batch_size=128, lookahead=True, lr_schedule="constant"),
    # 1024-1000-1000-10 target, hnet [25,25], chunk 78,000, embeddings 24/8 -> 2,029,691 weights.
    "permuted_mnist": dict(
        benchmark="permuted_mnist", num_tasks=10, target_hidden=(1000, 1000), multi_head=False,
        hnet_hidden=(25, 25), hnet_activation="elu", chunk_size=78000, task_emb_dim=24,
        chunk_emb_dim=8, beta=0.01, lr=1e-4, iters=5000, batch_size=128, lookahead=True),
}
# The project's variant: cosine lr within each task (what it gains and costs: docs/scenarios.md,
# docs/init_history.md).
PRESETS["split_mnist_cosine"] = {**PRESETS["split_mnist"], "lr_schedule": "cosine"}
# The authors' published code differs from the paper's text in two places.
PRESETS["split_mnist_authors"] = {**PRESETS["split_mnist"], "hnet_activation": "relu"}
PRESETS["permuted_mnist_authors"] = {**PRESETS["permuted_mnist"], "beta": 0.1}
# Tiny offline configurations (seconds on a laptop CPU).
# App. D, "small capacity target networks" (Swaroop et al. 2018): a 1024-100-100 multi-head target (122,700
# weights), hypernetwork [100,75,50] with output 2,000 and embeddings 64/12: 122,459 weights with the ten task
# embeddings; CL1 otherwise as permuted_mnist. β is lost in the paper's text: 0.01 as for PermutedMNIST-10.
PRESETS["permuted_mnist_small"] = {**PRESETS["permuted_mnist"], "target_hidden": (100, 100), "multi_head": True,
                                   "hnet_hidden": (100, 75, 50), "chunk_size": 2000, "task_emb_dim": 64,
                                   "chunk_emb_dim": 12}
# Long sequences (Fig. 3a, App. C/D). PermutedMNIST-100: the PermutedMNIST-10 setup with a [200,250,350] hypernetwork
# and chunks of 7,500 (App. C, CL1), 2,780,432 weights against the 3,027,000 of the related work's target with 100
# heads; multi-head as that target (each task trains its own head). The embeddings (24/8) are not restated for it:
# PermutedMNIST-10's, whose architecture it took. PermutedMNIST-250 (App. D): chunks of 12,000 for 250 heads,
# Eq. 2 on a random subset of 32 earlier tasks per step; its β is lost in the text: 0.01 as for 100.
PRESETS["permuted_mnist_100"] = {**PRESETS["permuted_mnist"], "num_tasks": 100, "multi_head": True,
                                 "hnet_hidden": (200, 250, 350), "chunk_size": 7500}
PRESETS["permuted_mnist_250"] = {**PRESETS["permuted_mnist_100"], "num_tasks": 250, "chunk_size": 12000, "reg_subset": 32}
# Fig. 2 (App. C): the 1-D regression toy. A 1-10-10-1 sigmoid target (141 weights) generated at once by a
# [10,10] sigmoid hypernetwork from a 2-d task embedding (no chunking); lr 0.01, 4,000 it/task, batch 32, β 0.005.
PRESETS["regression_1d"] = dict(
    benchmark="regression_1d", num_tasks=3, target_hidden=(10, 10), target_activation="sigmoid",
    hnet_hidden=(10, 10), hnet_activation="sigmoid", chunk_size=141, task_emb_dim=2, chunk_emb_dim=0,
    hnet_init="xavier", beta=0.005, lr=0.01, iters=4000, batch_size=32)
# Split CIFAR-10/100 (App. C, D), CL1 with one 10-way head per task (the paper's counts include six heads). The paper
# trains 200 epochs per task; iters is per task here: 31,250 it at batch 32 are 200 epochs of a CIFAR-100 task and
# 20 of CIFAR-10. β is not given for either: 0.01 as for MNIST.
# ResNet-32 (468,540 weights): a hypernetwork without hidden layers from embeddings 32/32 to chunks of 7,000
# (457,144 weights), Adam lr 1e-3, batch 32; flips and shifts as the Keras CIFAR-10 ResNet example the paper follows.
PRESETS["split_cifar_resnet"] = dict(
    benchmark="split_cifar", num_tasks=6, target_arch="resnet32", multi_head=True, hnet_hidden=(), chunk_size=7000,
    task_emb_dim=32, chunk_emb_dim=32, beta=0.01, lr=1e-3, iters=31250, batch_size=32, lookahead=True, augment=True)
# ZenkeNet (1,276,508 weights): hypernetwork [100,150,200] to chunks of 5,500 with embeddings 48/80 (1,182,390
# weights), lr 1e-4; batch 256 as Zenke et al. (60 epochs of a CIFAR-100 task: 1,200 it).
PRESETS["split_cifar_zenke"] = dict(
    benchmark="split_cifar", num_tasks=6, target_arch="zenke", multi_head=True, hnet_hidden=(100, 150, 200),
    hnet_activation="relu", chunk_size=5500, task_emb_dim=48, chunk_emb_dim=80, beta=0.01, lr=1e-4, iters=1200,
    batch_size=256, lookahead=True)
PRESETS["split_digits"] = dict(
    benchmark="split_digits", num_tasks=5, target_hidden=(100, 100), hnet_hidden=(25, 25),
    chunk_size=2000, task_emb_dim=24, chunk_emb_dim=8, beta=0.05, lr=1e-3, iters=300, batch_size=64, hnet_activation="elu")
PRESETS["permuted_digits"] = dict(
    benchmark="permuted_digits", num_tasks=5, target_hidden=(100, 100), hnet_hidden=(25, 25),
    chunk_size=2000, task_emb_dim=24, chunk_emb_dim=8, beta=0.05, lr=1e-3, iters=300, batch_size=64, hnet_activation="elu")


# Baseline settings tuned per scenario on a 10 % validation split (seed 0; docs/scenarios.md), by
# preset and (method, scenario): what `--preset split_mnist --method ewc --scenario cl3` runs with.
_SPLIT_MNIST_TUNED = {("ewc", "cl1"): {"ewc_lambda": 1e8}, ("ewc", "cl2"): {"ewc_lambda": 1e8},
                      ("ewc", "cl3"): {"ewc_lambda": 100.0}, ("si", "cl1"): {"si_c": 10.0},
                      ("si", "cl2"): {"si_c": 10.0}, ("si", "cl3"): {"si_c": 0.1}}
TUNED: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "split_mnist": _SPLIT_MNIST_TUNED, "split_mnist_authors": _SPLIT_MNIST_TUNED}  # both: the constant lr tuned with


# The paper's replay models (App. C), by benchmark of the preset and method. SplitMNIST: encoder 400,400, decoder
# 50,150 (TIR) / 250,350 (R), its hypernetwork [10,10] with output 50,000 and embeddings 96/96, β 0.05 (TIR) / 0.01
# (R). PermutedMNIST-10: encoder = decoder 1000,1000 (TIR) / 400,400 (R), hypernetwork [25,25] with output 85,000
# and embeddings 24/8, β 0.05. Latent 100 throughout.
_SPLIT_VAE = dict(replay_enc_hidden=(400, 400), replay_latent_dim=100, replay_hnet_hidden=(10, 10),
                  replay_chunk_size=50000, replay_task_emb_dim=96, replay_chunk_emb_dim=96)
_PERMUTED_VAE = dict(replay_latent_dim=100, replay_hnet_hidden=(25, 25), replay_chunk_size=85000,
                     replay_task_emb_dim=24, replay_chunk_emb_dim=8, replay_beta=0.05)
REPLAY_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "split_mnist": {"hnet_tir": {**_SPLIT_VAE, "replay_dec_hidden": (50, 150), "replay_beta": 0.05},
                    "hnet_r": {**_SPLIT_VAE, "replay_dec_hidden": (250, 350), "replay_beta": 0.01}},
    "permuted_mnist": {"hnet_tir": {**_PERMUTED_VAE, "replay_enc_hidden": (1000, 1000),
                                    "replay_dec_hidden": (1000, 1000)},
                       "hnet_r": {**_PERMUTED_VAE, "replay_enc_hidden": (400, 400), "replay_dec_hidden": (400, 400)}},
}


def resolve(name: str | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The one way a config is assembled, by the CLI, config files, sweep specs and scripts alike:
    preset ``name`` (or the field defaults), the paper's replay model for the method (HNET+TIR,
    HNET+R), the preset's tuned settings for the method and scenario, then ``overrides`` (field
    values). Not validated (``.validate()``)."""
    overrides = dict(overrides or {})
    if name is None:
        return TrainConfig.from_dict(overrides)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    values = dict(PRESETS[name])
    method = overrides.get("method", values.get("method", TrainConfig.method))
    scenario = overrides.get("scenario", values.get("scenario", TrainConfig.scenario))
    if method in methods.METHODS and not methods.METHODS[method].generated_classifier:
        # a target trained directly gets its heads from the scenario
        values["multi_head"] = False  # (cl1: one per task, what a multi-head preset means)
    values.update(REPLAY_SETTINGS.get(values.get("benchmark"), {}).get(method, {}))
    values.update(TUNED.get(name, {}).get((method, scenario), {}))
    return TrainConfig.from_dict({**values, **overrides})


def preset(name: str) -> TrainConfig:
    """The preset's own config: ``resolve(name)``. (``preset(n).replace(f=v)`` sets one field and
    nothing else; ``resolve(n, {f: v})`` is what `hnet train --preset n --f v` runs.)"""
    return resolve(name)


__all__ = ["TrainConfig", "Runtime", "split_fields", "UserError", "ConfigError", "DataError", "BENCHMARKS", "PRESETS",
           "TARGET_ARCHS", "TUNED", "REPLAY_SETTINGS", "preset", "resolve", "parse_sizes"]

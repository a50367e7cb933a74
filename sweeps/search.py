"""The searchers Ray Tune drives.

Grid and random search are planned by ``sweeps.space`` (the same configurations, in the same order,
as the pool backend and ``hnet sweep dry-run``); ``PlannedSearcher`` hands them to Tune one by one.

TPE and NSGA-II learn from finished trials: ``OptunaSearcher`` wraps Ray Tune's ``OptunaSearch``
and adds two things Tune lacks:

* Compression filter. The compression ratio of a drawn architecture is computed analytically
  inside ``suggest`` (``sweeps.space.to_train_config``). An architecture outside the allowed range
  is told to Optuna at once as a failed trial and another one is drawn, so it never becomes a Tune
  trial: it costs neither compute nor one of the ``num_samples`` slots.
* Seeds per configuration. A configuration is handed out ``seeds`` times (``sweeps.space.seeded``);
  Optuna sees one trial and is told the mean over the seeds when all finished.

``sample_config`` is Optuna's define-by-run space: conditional parameters (the size of hidden
layer i exists only when i layers were drawn) are asked only when they exist.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from . import space
from .record import to_tune_config
from .spec import SweepSpec


def _sizes_label(sizes: Any) -> str:
    return ",".join(map(str, sizes)) if isinstance(sizes, (list, tuple)) else str(sizes)


def sample_config(trial: optuna.Trial, spec: SweepSpec) -> None:
    """Ask ``trial`` for every searched field (the values land in ``trial.params``)."""
    for key, value in spec.space.items():
        if key == "chunk_size" and value == "fit":
            continue
        if key == "hnet_hidden" and isinstance(value, dict):
            layers = trial.suggest_categorical("hnet_layers", value["layers"])
            for i in range(layers):
                trial.suggest_categorical(f"hnet_layer{i + 1}", value["sizes"])
        elif isinstance(value, list):
            # Optuna choices must be None/bool/int/float/str: layer lists become "10,10"
            trial.suggest_categorical(key, [_sizes_label(v) if key.endswith("_hidden") else v for v in value])
        elif isinstance(value["low"], int) and isinstance(value["high"], int):
            trial.suggest_int(key, value["low"], value["high"], log=bool(value.get("log")))
        else:
            trial.suggest_float(key, float(value["low"]), float(value["high"]), log=bool(value.get("log")))


def drawn_values(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params -> field values (conditional layer sizes come as ``hnet_layers``/``hnet_layer{i}``)."""
    values = {k: v for k, v in params.items() if k != "hnet_layers" and not k.startswith("hnet_layer")}
    if "hnet_layers" in params:
        values["hnet_hidden"] = [params[f"hnet_layer{i + 1}"] for i in range(params["hnet_layers"])]
    return values


class SearchSpace:
    """Picklable define-by-run function (Tune pickles the searcher with the experiment)."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> None:
        sample_config(trial, self.spec)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.search_seed)
    return optuna.samplers.TPESampler(seed=spec.search_seed)


def make_searcher(spec: SweepSpec, stats_file: str | None = None, done: set[str] = frozenset()) -> Searcher:
    """The searcher of a spec; ``done``: configurations (``space.config_key``) a results file already holds,
    which grid and random search skip."""
    if spec.algorithm in space.PLANNED:
        return PlannedSearcher(spec, stats_file, done)
    return OptunaSearcher(spec, stats_file)


def _objectives(spec: SweepSpec) -> tuple[str | list[str], str | list[str]]:
    metrics, modes = [m for m, _ in spec.objectives], [m for _, m in spec.objectives]
    return (metrics, modes) if len(metrics) > 1 else (metrics[0], modes[0])


class _Pickled(Searcher):
    """A searcher of the spec's objectives whose whole state is its attributes: saved in one file (Tune
    syncs exactly that path)."""

    def __init__(self, spec: SweepSpec) -> None:
        metric, mode = _objectives(spec)  # two objectives: the searcher itself knows them, not Tune
        super().__init__(metric=None if isinstance(metric, list) else metric,
                         mode=None if isinstance(mode, list) else mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric/mode come from the sweep spec

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _write_stats(stats_file: str | None, stats: dict[str, int]) -> None:
    if stats_file:
        Path(stats_file).write_text(json.dumps(stats))


class PlannedSearcher(_Pickled):
    """Grid and random search: the space's trials (``sweeps.space.trials``) in order, except those ``done``
    already, then FINISHED."""

    def __init__(self, spec: SweepSpec, stats_file: str | None = None, done: set[str] = frozenset()) -> None:
        super().__init__(spec)
        planned = space.plan(spec)
        base = spec.base.to_flat_params()
        self.queue = [to_tune_config(cfg, base, *space.group_and_seed(spec, cfg))
                      for cfg in space.trials(spec, planned.configs, done)]
        self.num_trials = len(self.queue)
        self.stats = planned.stats()
        _write_stats(stats_file, self.stats)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self.queue.pop(0) if self.queue else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # nothing to learn


class OptunaSearcher(_Pickled):
    """TPE / NSGA-II through Optuna, with the compression filter and a configuration's seeds as one trial."""

    def __init__(self, spec: SweepSpec, stats_file: str | None = None) -> None:
        super().__init__(spec)
        metric, mode = _objectives(spec)
        self.spec = spec
        self.inner = OptunaSearch(space=SearchSpace(spec), metric=metric, mode=mode,
                                  sampler=make_sampler(spec), seed=spec.search_seed)
        self.pending: list[dict[str, Any]] = []  # trial configs of the current group still to hand out
        self.groups: dict[str, dict[str, Any]] = {}  # group -> {"members": n, "results": [...]}
        self.member_group: dict[str, str] = {}
        self.seen: dict[str, str] = {}  # configuration -> its group (identical draws are not retrained)
        self.stats = space.Plan([]).stats()
        self.stats_file = stats_file
        self.num_trials = spec.num_trials

    @property
    def study(self) -> optuna.Study:
        """The Optuna study of this search: one trial per configuration (rejected draws as FAIL),
        told the mean over its seeds. Ray's OptunaSearch keeps it private; this is the one place it is read."""
        return self.inner._ot_study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.pending:
            self._draw_group(trial_id)
        config = self.pending.pop(0)
        self.member_group[trial_id] = config["config_group"]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        group_id = self.member_group.get(trial_id)
        if group_id is None:
            return
        group = self.groups[group_id]
        group["done"] += 1
        if result and not error and all(m in result for m in self._metrics()):
            group["results"].append(result)
        if group["done"] == group["members"]:  # every seed finished: tell Optuna the mean
            if group["results"]:
                group["mean"] = {m: sum(r[m] for r in group["results"]) / len(group["results"]) for m in self._metrics()}
                self.inner.on_trial_complete(group_id, result=group["mean"])
            else:
                self.inner.on_trial_complete(group_id, error=True)

    def _metrics(self) -> list[str]:
        return [m for m, _ in self.spec.objectives]

    def _draw_group(self, trial_id: str) -> None:
        for attempt in range(self.spec.max_rejections + 1):
            group_id = f"{trial_id}" if attempt == 0 else f"{trial_id}-r{attempt}"
            params = self.inner.suggest(group_id)
            self.stats["architectures_drawn"] += 1
            try:
                cfg = space.to_train_config(self.spec, drawn_values(params))
            except space.Rejected:
                self.stats["architectures_rejected"] += 1
                self.inner.on_trial_complete(group_id, error=True)  # a FAIL in Optuna; no Tune trial
                continue
            key = space.config_key(cfg)
            if key in self.seen:  # TPE redraws points of small categorical spaces: reuse, don't retrain
                self.stats["duplicates_skipped"] += 1
                known = self.groups[self.seen[key]].get("mean")
                self.inner.on_trial_complete(group_id, result=known, error=known is None)
                continue
            self.seen[key] = group_id
            self.groups[group_id] = {"members": self.spec.seeds, "done": 0, "results": []}
            base = self.spec.base.to_flat_params()
            self.pending = [to_tune_config(c, base, group_id, s) for s, c in enumerate(space.seeded(self.spec, cfg))]
            _write_stats(self.stats_file, self.stats)
            return
        _write_stats(self.stats_file, self.stats)
        raise space.too_many_misses(self.spec)

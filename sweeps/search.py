"""Optuna search space and the searcher Ray Tune drives.

``sample_config`` is Optuna's define-by-run space: conditional parameters (the size of
hidden layer i exists only when i layers were drawn) are asked only when they exist.

``SweepSearcher`` wraps Ray Tune's ``OptunaSearch`` and adds two things Tune lacks:

* Compression filter. The compression ratio of a drawn architecture is computed
  analytically (``hnet.models.count_weights``) inside ``suggest``. An architecture
  outside the allowed range is told to Optuna at once as a failed trial and another one
  is drawn, so it never becomes a Tune trial: it costs neither compute nor one of the
  ``num_samples`` slots (those count trained configurations only).
* Seeds per configuration. A configuration is handed out ``seeds`` times with seeds
  0..k-1; Optuna sees one trial and is told the mean over the seeds when all finished.
"""
from __future__ import annotations

import itertools
import json
import pickle
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .expand import Rejected, config_key, to_train_config
from .record import to_tune_config
from .spec import SpecError, SweepSpec


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


class SearchSpace:
    """Picklable define-by-run function (Tune pickles the searcher with the experiment)."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> None:
        sample_config(trial, self.spec)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=spec.search_seed)
    if spec.algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.search_seed)
    if spec.algorithm == "grid":
        grid = {k: ([_sizes_label(x) for x in v] if k.endswith("_hidden") else v)
                for k, v in spec.space.items() if isinstance(v, list)}
        return optuna.samplers.GridSampler(grid, seed=spec.search_seed)
    return optuna.samplers.TPESampler(seed=spec.search_seed)


def check_feasible(spec: SweepSpec, probes: int = 300) -> int | None:
    """Before Ray starts: fail fast if no configuration lies in the compression range.

    Grid search enumerates its grid and returns how many points are trainable (the sweep
    is capped there); other algorithms probe random draws of the space.
    """
    def key(params: dict[str, Any]) -> str | None:
        try:
            return config_key(to_train_config(spec, params))
        except Rejected:
            return None

    if spec.algorithm == "grid":
        names = [k for k, v in spec.space.items() if isinstance(v, list)]
        grid = list(itertools.product(*(spec.space[k] for k in names)))
        feasible = {key(dict(zip(names, point))) for point in grid} - {None}
        if not feasible:
            raise SpecError(f"none of the {len(grid)} grid points lies in the compression range "
                            f"[{spec.compression_min}, {spec.compression_max}]")
        return len(feasible)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.search_seed))
    for _ in range(probes):
        trial = study.ask()
        sample_config(trial, spec)
        found = key(trial.params)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if found:
            return None
    raise SpecError(f"none of {probes} random draws lies in the compression range "
                    f"[{spec.compression_min}, {spec.compression_max}]")


class SweepSearcher(Searcher):
    def __init__(self, spec: SweepSpec, stats_file: str | None = None) -> None:
        objectives = spec.objectives
        metric = [m for m, _ in objectives] if len(objectives) > 1 else objectives[0][0]
        mode = [m for _, m in objectives] if len(objectives) > 1 else objectives[0][1]
        super().__init__(metric=None if isinstance(metric, list) else metric,
                         mode=None if isinstance(mode, list) else mode)
        self.spec = spec
        self.inner = OptunaSearch(space=SearchSpace(spec), metric=metric, mode=mode,
                                  sampler=make_sampler(spec), seed=spec.search_seed)
        self.pending: list[dict[str, Any]] = []  # trial configs of the current group still to hand out
        self.groups: dict[str, dict[str, Any]] = {}  # group -> {"members": n, "results": [...]}
        self.member_group: dict[str, str] = {}
        self.seen: dict[str, str] = {}  # configuration -> its group (identical draws are not retrained)
        self.stats = {"architectures_drawn": 0, "architectures_rejected": 0, "duplicates_skipped": 0}
        self.stats_file = stats_file

    @property
    def study(self) -> optuna.Study:
        """The Optuna study of this search: one trial per configuration (rejected draws as FAIL),
        told the mean over its seeds. Ray's OptunaSearch keeps it private; this is the one place it is read."""
        return self.inner._ot_study

    # Tune calls these ---------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric/mode come from the sweep spec

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

    # internals ----------------------------------------------------------------------------
    def _metrics(self) -> list[str]:
        return [m for m, _ in self.spec.objectives]

    def _draw_group(self, trial_id: str) -> None:
        for attempt in range(self.spec.max_rejections + 1):
            group_id = f"{trial_id}" if attempt == 0 else f"{trial_id}-r{attempt}"
            params = self.inner.suggest(group_id)
            self.stats["architectures_drawn"] += 1
            try:
                cfg = to_train_config(self.spec, params)
            except Rejected:
                self.stats["architectures_rejected"] += 1
                self.inner.on_trial_complete(group_id, error=True)  # a FAIL in Optuna; no Tune trial
                continue
            key = config_key(cfg)
            if key in self.seen:  # TPE redraws points of small categorical spaces: reuse, don't retrain
                self.stats["duplicates_skipped"] += 1
                known = self.groups[self.seen[key]].get("mean")
                self.inner.on_trial_complete(group_id, result=known, error=known is None)
                continue
            self.seen[key] = group_id
            self.groups[group_id] = {"members": self.spec.seeds, "done": 0, "results": []}
            base = self.spec.base.to_flat_params()
            self.pending = [to_tune_config(cfg.replace(seed=self.spec.base.seed + s), base, group_id, s)
                            for s in range(self.spec.seeds)]
            self._write_stats()
            return
        self._write_stats()
        raise SpecError(f"{self.spec.max_rejections} draws in a row were outside the compression range "
                        f"[{self.spec.compression_min}, {self.spec.compression_max}] or repeated earlier "
                        "configurations: widen the range or the space")

    def _write_stats(self) -> None:
        if self.stats_file:
            Path(self.stats_file).write_text(json.dumps(self.stats))

    def save(self, checkpoint_path: str) -> None:
        # One file (Tune syncs exactly this path): our state and the Optuna study together.
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

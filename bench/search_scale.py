#!/usr/bin/env python3
"""Search at scale: seconds per suggestion of the sweep's searchers after N finished trials.

For each algorithm that learns from results (TPE, NSGA-II; grid and random search are planned up
front by ``sweeps.space``), an Optuna study on a spec's space (``sweeps.search.make_sampler`` and
``sample_config``, as the Ray backend drives them) is told N finished trials with random
accuracies, then the next suggestions are timed (ask, draw the space, tell), and the size of
the searcher's pickled state (what Tune saves with every experiment snapshot).

    python bench/search_scale.py --spec fig_a7_splitmnist --finished 100 1000 2000
"""
from __future__ import annotations

import argparse
import pickle
import random
import time

import optuna

from sweeps.cli import resolve_spec_path
from sweeps.search import make_sampler, sample_config
from sweeps.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="fig_a7_splitmnist")
    ap.add_argument("--finished", type=int, nargs="+", default=[100, 1000, 2000])
    ap.add_argument("--algorithms", nargs="+", default=["tpe", "nsga2"])
    ap.add_argument("--timed", type=int, default=20, help="suggestions timed after the N finished ones")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"space of {args.spec}; seconds per suggestion (mean of {args.timed}) after N finished trials")
    print(f"{'algorithm':<10}{'N':>7}{'s/suggestion':>14}{'state MB':>10}", flush=True)
    for algorithm in args.algorithms:
        spec = load_spec(resolve_spec_path(args.spec), {"search": {"algorithm": algorithm, "seed": 0}})
        rng = random.Random(0)
        study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
        done = 0
        for n in sorted(args.finished):
            while done < n:  # filling the history is not timed
                trial = study.ask()
                sample_config(trial, spec)
                study.tell(trial, rng.uniform(50, 100))
                done += 1
            started = time.perf_counter()
            for _ in range(args.timed):
                trial = study.ask()
                sample_config(trial, spec)
                study.tell(trial, rng.uniform(50, 100))
            per = (time.perf_counter() - started) / args.timed
            done += args.timed
            size = len(pickle.dumps(study)) / 2**20
            print(f"{algorithm:<10}{n:>7}{per:>14.4f}{size:>10.2f}", flush=True)


if __name__ == "__main__":
    main()

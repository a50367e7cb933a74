"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020).

The core of the project; it imports nothing above it (no sweeps, analysis, Ray, MLflow, Optuna
or pandas). Modules: ``config`` (TrainConfig and Runtime, presets), ``counts`` (weight counts),
``models`` (target networks, chunked hypernetwork), ``regularizer`` (Eq. 2), ``data``
(benchmarks), ``trainer`` (the continual trainer), ``results`` (what a run reports), ``cli``
(``hnet train``; other subcommands plug in through the ``hnet.commands`` entry points).
Importing the package itself stays light (no torch).
"""

"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020).

The core of the project; it imports nothing above it (no sweeps, analysis, Ray, MLflow, Optuna
or pandas). Modules: ``config`` (TrainConfig and Runtime, presets), ``counts`` (weight counts),
``models`` (target networks, chunked hypernetwork), ``regularizer`` (Eq. 2), ``data``
(benchmarks), ``learners`` (what each method learns and adds to the loss), ``replay`` (HNET+TIR
and HNET+R: the hypernetwork-protected replay VAE), ``baselines`` (EWC, SI), ``evaluation``
(scenarios, task inference), ``trainer`` (the continual trainer), ``results`` (what a run reports), ``cli``
(``hnet train``; other subcommands plug in through the ``hnet.commands`` entry points).
Importing the package itself stays light (no torch).
"""

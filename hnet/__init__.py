"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020).

Modules: ``config`` (TrainConfig, presets), ``counts`` (weight counts), ``models`` (target
networks, chunked hypernetwork), ``regularizer`` (Eq. 2), ``data`` (benchmarks), ``trainer``
(the continual trainer), ``cli``. Importing the package itself stays light (no torch).
"""

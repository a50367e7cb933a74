"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020)."""
from .config import PRESETS, ConfigError, TrainConfig, preset
from .models import ChunkedHypernetwork, MLP, build_models, count_weights, target_forward
from .trainer import Callback, train

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "preset", "ChunkedHypernetwork", "MLP", "build_models",
           "count_weights", "target_forward", "Callback", "train"]

"""Analytic weight counts and compression ratio of a configuration.

Pure arithmetic (no torch): sweeps filter thousands of architectures with it before any
training, and the CLI validates specs without importing torch. Tests check it against the
built modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig


@dataclass(frozen=True)
class WeightCounts:
    target_weights: int
    hnet_weights: int  # Θ, chunk embeddings included
    task_embedding_weights: int
    num_chunks: int

    @property
    def compression_ratio(self) -> float:
        return self.hnet_weights / self.target_weights

    @property
    def compression_ratio_with_task_embeddings(self) -> float:
        """As the authors' code counts: task embeddings are trained weights too (they grow with tasks)."""
        return (self.hnet_weights + self.task_embedding_weights) / self.target_weights

    def to_dict(self) -> dict[str, float]:
        return {"target_weights": self.target_weights, "hnet_weights": self.hnet_weights,
                "task_embedding_weights": self.task_embedding_weights,
                "num_chunks": self.num_chunks, "compression_ratio": self.compression_ratio,
                "compression_ratio_with_task_embeddings": self.compression_ratio_with_task_embeddings}


def _linear_stack_weights(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def count_weights(cfg: TrainConfig) -> WeightCounts:
    """Analytic weight counts: no allocation, so sweeps can filter architectures cheaply."""
    outputs, heads = cfg.heads()
    target = _linear_stack_weights([cfg.spec.input_dim, *cfg.target_hidden]) + \
        _linear_stack_weights([cfg.target_hidden[-1], outputs * heads])
    if cfg.method != "hnet":  # the target network's own weights are trained: nothing compressed
        return WeightCounts(target, target, 0, 0)
    num_chunks = math.ceil(target / cfg.chunk_size)
    hnet = _linear_stack_weights([cfg.task_emb_dim + cfg.chunk_emb_dim, *cfg.hnet_hidden, cfg.chunk_size])
    hnet += num_chunks * cfg.chunk_emb_dim
    return WeightCounts(target, hnet, cfg.num_tasks * cfg.task_emb_dim, num_chunks)

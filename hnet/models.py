"""Target networks and the chunked, task-conditioned hypernetwork that generates their weights.

The split follows hypnettorch: a target network is an ordinary ``nn.Module``; its weights
come from outside as one flat vector (``target_forward``). The hypernetwork only knows how
many weights to produce, so other targets (ResNet-32, ZenkeNet) plug in unchanged.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig

_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": F.relu,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}


class MLP(nn.Module):
    """Fully connected target network; with ``num_heads > 1`` one output head per task.

    The heads are one wide linear layer whose rows for task ``t`` are selected at run
    time; this has exactly the weights of separate heads (the paper's multi-head count).
    """

    def __init__(self, input_dim: int, hidden: tuple[int, ...], output_dim: int,
                 activation: str = "relu", num_heads: int = 1) -> None:
        super().__init__()
        dims = [input_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], output_dim * num_heads)
        self.activation = activation
        self.output_dim, self.num_heads = output_dim, num_heads

    def forward(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = act(layer(x))
        logits = self.head(x)
        if self.num_heads > 1:
            logits = logits[:, task * self.output_dim:(task + 1) * self.output_dim]
        return logits


def num_weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def target_forward(target: nn.Module, weights: torch.Tensor, x: torch.Tensor, task: int = 0) -> torch.Tensor:
    """Run ``target`` on ``x`` with its parameters taken from the flat vector ``weights``.

    The vector is laid out in ``named_parameters`` order (trailing extra entries are
    ignored); slices are views, no copies.
    """
    names, shapes = zip(*[(n, p.shape) for n, p in target.named_parameters()])
    sizes = [math.prod(s) for s in shapes]
    # Entries past the target's weights (the hypernetwork's last-chunk padding) are ignored;
    # splitting them off here is cheaper than truncating first (no extra copy in backward).
    pieces = torch.split(weights, [*sizes, weights.numel() - sum(sizes)])
    params = {n: w.view(s) for n, w, s in zip(names, pieces, shapes)}
    return torch.func.functional_call(target, params, (x, task))


def flat_weights(target: nn.Module) -> torch.Tensor:
    """The module's own parameters as one flat vector (inverse of ``target_forward``)."""
    return torch.cat([p.detach().reshape(-1) for p in target.parameters()])


class ChunkedHypernetwork(nn.Module):
    """Maps task embeddings to all weights of a target network, chunk by chunk.

    Input of one call: [task embedding, chunk embedding]; an MLP (any hidden sizes,
    including none) outputs ``chunk_size`` weights; the concatenated chunks are truncated
    to ``num_outputs``. All chunks of all given task embeddings are one batched call.
    Task embeddings (one per task) and chunk embeddings (shared) are learned.
    """

    def __init__(self, num_outputs: int, num_tasks: int, chunk_size: int, hidden: tuple[int, ...],
                 activation: str, task_emb_dim: int, chunk_emb_dim: int) -> None:
        super().__init__()
        self.num_outputs, self.chunk_size, self.activation = num_outputs, chunk_size, activation
        self.num_chunks = math.ceil(num_outputs / chunk_size)
        self.task_embs = nn.ParameterList(
            nn.Parameter(torch.randn(task_emb_dim)) for _ in range(num_tasks))
        self.chunk_embs = nn.Parameter(torch.randn(self.num_chunks, chunk_emb_dim))
        dims = [task_emb_dim + chunk_emb_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], chunk_size)
        # Glorot-uniform weights and zero biases (as the authors' hypercl code): the output
        # layer's huge fan-out keeps generated target weights small at the start, where
        # PyTorch's fan-in default would generate weights ~10x too large (loss ~20 at step 0).
        for layer in [*self.layers, self.out]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, task_embs: torch.Tensor, features_only: bool = False, padded: bool = False) -> torch.Tensor:
        """(T, task_emb_dim) -> generated weights (T, num_outputs).

        With ``padded`` the last chunk is not truncated: (T, num_chunks * chunk_size).
        With ``features_only`` return the input of the (linear) output layer instead,
        shape (T, num_chunks, width); the factored regularizer works on it.
        """
        T, C = task_embs.shape[0], self.num_chunks
        h = torch.cat([task_embs[:, None, :].expand(T, C, -1),
                       self.chunk_embs[None].expand(T, C, -1)], dim=-1)
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers:
            h = act(layer(h))
        if features_only:
            return h
        weights = self.out(h).reshape(T, C * self.chunk_size)
        return weights if padded else weights[:, :self.num_outputs]

    def theta(self) -> dict[str, nn.Parameter]:
        """Θ: every trainable weight except task embeddings (chunk embeddings included)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("task_embs.")}

    def embeddings(self, tasks: range | list[int]) -> torch.Tensor:
        return torch.stack([self.task_embs[t] for t in tasks])


def build_models(cfg: TrainConfig, device: torch.device | str = "cpu") -> tuple[MLP, ChunkedHypernetwork]:
    """Target (weights on the meta device: they always come from the hypernetwork) and hnet.

    The hypernetwork is initialised from ``cfg.seed``.
    """
    spec = cfg.spec
    with torch.device("meta"):
        target = MLP(spec.input_dim, cfg.target_hidden, spec.classes_per_task, cfg.target_activation,
                     num_heads=cfg.num_tasks if cfg.multi_head else 1)
    torch.manual_seed(cfg.seed)
    hnet = ChunkedHypernetwork(num_weights(target), cfg.num_tasks, cfg.chunk_size, cfg.hnet_hidden,
                               cfg.hnet_activation, cfg.task_emb_dim, cfg.chunk_emb_dim)
    return target, hnet.to(device)

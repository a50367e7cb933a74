"""Target networks and the chunked, task-conditioned hypernetwork that generates their weights.

The split follows hypnettorch: a target network is an ordinary ``nn.Module``; its weights
come from outside as one flat vector (``target_forward``). The hypernetwork only knows how
many weights to produce, so the convolutional targets (ZenkeNet, ResNet-32) plug in unchanged. The
baselines (fine-tuning, EWC, SI) learn the target's weights directly: ``TargetWeights``.
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
    "sigmoid": torch.sigmoid,
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

    def forward(self, x: torch.Tensor, task: int | None = 0) -> torch.Tensor:
        """Logits of ``task``'s head; ``task=None``: all heads side by side (heads x outputs)."""
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers:
            x = act(layer(x))
        return select_head(self.head(x), task, self.output_dim, self.num_heads)


def select_head(logits: torch.Tensor, task: int | None, output_dim: int, num_heads: int) -> torch.Tensor:
    """The columns of ``task``'s head (all heads side by side for ``task=None`` or a single head)."""
    if num_heads > 1 and task is not None:
        return logits[:, task * output_dim:(task + 1) * output_dim]
    return logits


class TaskBatchNorm(nn.Module):
    """Batch norm whose scale and shift are ordinary (generated) parameters and whose running statistics
    are kept per task: App. C checkpoints them after every task; here task t's row is only ever updated
    while task t is trained (one row for a target trained directly: its statistics are shared, as the
    paper's fine-tuning). Training uses the batch's statistics, evaluation task t's running ones."""

    def __init__(self, channels: int, stat_sets: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.channels, self.stat_sets = channels, stat_sets
        self.register_buffer("running_mean", torch.zeros(stat_sets, channels))
        self.register_buffer("running_var", torch.ones(stat_sets, channels))

    def reset_stats(self, device: torch.device | str) -> None:
        """Real statistics buffers (the target is built on the meta device: its parameters come from outside)."""
        self.running_mean = torch.zeros(self.stat_sets, self.channels, device=device)
        self.running_var = torch.ones(self.stat_sets, self.channels, device=device)

    def forward(self, x: torch.Tensor, task: int | None) -> torch.Tensor:
        if self.stat_sets > 1 and task is None:
            raise ValueError("per-task batch-norm statistics need the task (convolutional targets run in cl1)")
        row = task if self.stat_sets > 1 else 0
        return F.batch_norm(x, self.running_mean[row], self.running_var[row], self.weight, self.bias,
                            self.training, momentum=0.1, eps=1e-5)


class ZenkeNet(nn.Module):
    """The CIFAR network of Zenke et al. (2017), as App. D reproduces it: two blocks of two 3x3 convolutions
    (32, 32 / 64, 64 channels; the first of each padded, the second not) with 2x2 max-pooling and dropout 0.25,
    a dense layer of 512 with dropout 0.5, one 10-way head per task (1,276,508 weights for 6 tasks)."""

    def __init__(self, output_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3),
                                    nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3)])
        self.dense = nn.Linear(64 * 6 * 6, 512)
        self.head = nn.Linear(512, output_dim * num_heads)
        self.activation, self.output_dim, self.num_heads = "relu", output_dim, num_heads

    def forward(self, x: torch.Tensor, task: int | None = 0) -> torch.Tensor:
        x = x.view(len(x), 3, 32, 32)
        for i in (0, 2):
            x = F.max_pool2d(F.relu(self.convs[i + 1](F.relu(self.convs[i](x)))), 2)
            x = F.dropout(x, 0.25, self.training)
        x = F.dropout(F.relu(self.dense(x.flatten(1))), 0.5, self.training)
        return select_head(self.head(x), task, self.output_dim, self.num_heads)


class ResNet32(nn.Module):
    """ResNet-32 for CIFAR (He et al. 2016): a 3x3 convolution to 16 channels, three stages of five basic
    blocks (16, 32, 64 channels; stride 2 and zero-padded identity shortcuts where the size changes), global
    average pooling, one 10-way head per task. Convolutions carry biases and every batch norm its scale and
    shift, all generated: 468,540 weights for 6 tasks, App. C's count."""

    def __init__(self, output_dim: int, num_heads: int = 1, stat_sets: int = 1) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 16, 3, padding=1), TaskBatchNorm(16, stat_sets)
        convs, norms, self.strides = [], [], []
        channels = 16
        for width in (16, 32, 64):
            for block in range(5):
                stride = 2 if block == 0 and width != 16 else 1
                convs += [nn.Conv2d(channels, width, 3, stride, 1), nn.Conv2d(width, width, 3, 1, 1)]
                norms += [TaskBatchNorm(width, stat_sets), TaskBatchNorm(width, stat_sets)]
                self.strides.append(stride)
                channels = width
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.head = nn.Linear(64, output_dim * num_heads)
        self.activation, self.output_dim, self.num_heads = "relu", output_dim, num_heads

    def forward(self, x: torch.Tensor, task: int | None = 0) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x.view(len(x), 3, 32, 32)), task))
        for b, stride in enumerate(self.strides):
            conv1, conv2, bn1, bn2 = self.convs[2 * b], self.convs[2 * b + 1], self.norms[2 * b], self.norms[2 * b + 1]
            out = bn2(conv2(F.relu(bn1(conv1(x), task))), task)
            shortcut = x
            if stride != 1:  # option A: subsample, zero-pad the new channels (no weights)
                shortcut = x[:, :, ::2, ::2]
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, out.shape[1] - shortcut.shape[1]))
            x = F.relu(out + shortcut)
        return select_head(self.head(x.mean((2, 3))), task, self.output_dim, self.num_heads)


def build_target(cfg: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """``cfg``'s target network, parameters on the meta device (they always come from outside), batch-norm
    statistics on ``device``: one set per task for a hypernetwork, one shared set for a target trained directly."""
    outputs, heads = cfg.heads()
    with torch.device("meta"):
        if cfg.target_arch == "zenke":
            target = ZenkeNet(outputs, heads)
        elif cfg.target_arch == "resnet32":
            target = ResNet32(outputs, heads, cfg.num_tasks if cfg.generated_classifier else 1)
        else:
            target = MLP(cfg.spec.input_dim, cfg.target_hidden, outputs, cfg.target_activation, num_heads=heads)
    for module in target.modules():
        if isinstance(module, TaskBatchNorm):
            module.reset_stats(device)
    return target


def fan_in(p: torch.Tensor) -> int:
    """Inputs feeding one output of a weight (out, in) or convolution kernel (out, in, kh, kw)."""
    return math.prod(p.shape[1:])


def num_weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def target_forward(target: nn.Module, weights: torch.Tensor, x: torch.Tensor, task: int | None = 0) -> torch.Tensor:
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


def fan_in_variances(target: nn.Module, activation: str) -> torch.Tensor:
    """Per target parameter (flat, ``named_parameters`` order): the variance a fan-in
    initialisation of the target gives it. A weight (out, in) gets gain²/in with the gain of
    the activation that follows it (the last layer feeds the loss: gain 1); a bias gets
    PyTorch's default 1/(3·in), kept non-zero so that no chunk of biases starts (and stays) at 0.
    """
    params = list(target.parameters())
    last_weight = max(i for i, p in enumerate(params) if p.dim() >= 2)
    hidden_gain2 = activation_gain(activation) ** 2
    pieces, inputs = [], 1
    for i, p in enumerate(params):
        if p.dim() >= 2:  # a weight matrix or convolution kernel
            inputs = fan_in(p)
            gain2 = 1.0 if i == last_weight else hidden_gain2
            pieces.append(torch.full((p.numel(),), gain2 / inputs))
        else:  # a bias (or a batch norm's scale and shift): that of the layer before
            pieces.append(torch.full((p.numel(),), 1 / (3 * inputs)))
    return torch.cat(pieces)


def activation_gain(activation: str) -> float:
    """Gain g with E[φ(g·x)²] = 1 for x ~ N(0, 1): the fan-in gain that keeps the second moment of a
    layer's output equal to its unit-variance input's (ReLU: √2, linear: 1, ELU ≈ 1.28)."""
    act = _ACTIVATIONS[activation]
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    density = torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi)

    def moment(g: float) -> float:  # E[φ(g z)²], z ~ N(0, 1), by quadrature
        return torch.trapezoid(act(g * z) ** 2 * density, z).item()

    lo, hi = 0.5, 4.0  # moment(g) grows with g for every activation here
    if moment(hi) < 1.0:  # bounded below 1 (sigmoid): no gain reaches it; Glorot's gain 1
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if moment(mid) < 1.0 else (lo, mid)
    return (lo + hi) / 2


class ChunkedHypernetwork(nn.Module):
    """Maps task embeddings to all weights of a target network, chunk by chunk.

    Input of one call: [task embedding, chunk embedding]; an MLP (any hidden sizes,
    including none) outputs ``chunk_size`` weights; the concatenated chunks are truncated
    to ``num_outputs``. All chunks of all given task embeddings are one batched call.
    Task embeddings (one per task) and chunk embeddings (shared) are learned.

    Initialisation (docs/init.md): Glorot-uniform weights, zero biases, embeddings N(0, emb_std²) with
    emb_std 1 by default, as the authors' code (``xavier``). Glorot's output variance 2 / (width +
    chunk_size) grows as chunks shrink, so the default ``xavier_capped`` scales every chunk whose
    generated weights would start above the target's fan-in variances down to them by a fixed gain
    (``cap_chunk_scale``). For chunks smaller than the target's widest fan-in it also shrinks the
    pattern all chunks share (``shrink_common_mode``) and lets Adam move the chunk embeddings
    fan_in / chunk_size times faster (``chunk_emb_scale``): with many small chunks they are the
    chunk-specific capacity, and at unit scale and lr 1e-4 they barely move (docs/init.md). At the
    presets' few large chunks it is ``xavier``, bit for bit.
    """

    def __init__(self, num_outputs: int, num_tasks: int, chunk_size: int, hidden: tuple[int, ...],
                 activation: str, task_emb_dim: int, chunk_emb_dim: int, init: str = "xavier",
                 emb_std: float = 0.0, target_variances: torch.Tensor | None = None, target_fan_in: int = 1) -> None:
        super().__init__()
        self.num_outputs, self.chunk_size, self.activation = num_outputs, chunk_size, activation
        self.num_chunks = math.ceil(num_outputs / chunk_size)
        self.register_buffer("chunk_scale", None)  # fixed per-chunk output gain (cap_chunk_scale), or none
        emb_std = emb_std or 1.0
        self.task_embs = nn.ParameterList(
            nn.Parameter(emb_std * torch.randn(task_emb_dim)) for _ in range(num_tasks))
        # xavier_capped stores the chunk embeddings at 1/chunk_emb_scale of the size the network sees them
        # at, so that Adam (steps of about lr whatever a parameter's size) moves them that much faster.
        self.chunk_emb_scale = max(1.0, target_fan_in / chunk_size) if init == "xavier_capped" else 1.0
        self.chunk_embs = nn.Parameter(emb_std / self.chunk_emb_scale * torch.randn(self.num_chunks, chunk_emb_dim))
        dims = [task_emb_dim + chunk_emb_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], chunk_size)
        for layer in [*self.layers, self.out]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if init == "xavier_capped":
            self.shrink_common_mode(min(1.0, math.sqrt(chunk_size / target_fan_in)))
            self.cap_chunk_scale(target_variances)

    @torch.no_grad()
    def shrink_common_mode(self, kept: float) -> None:
        """Scale the output layer's mean over its chunk_size outputs to ``kept``. That mean is a pattern
        every chunk repeats; a first-layer row of the target (target_fan_in weights) holds about
        target_fan_in / chunk_size repeats, which add up coherently on non-negative inputs and at chunk
        size 10 start every unit of the row dead in half of the seeds. Kept at sqrt(chunk_size /
        target_fan_in), their sum has the variance of a sum of independent repeats; from chunk_size =
        target_fan_in on nothing changes."""
        self.out.weight.sub_((1 - kept) * self.out.weight.mean(0, keepdim=True))

    @torch.no_grad()
    def cap_chunk_scale(self, target_variances: torch.Tensor) -> None:
        """Glorot's output variance 2 / (width + chunk_size) grows as chunks shrink; where a chunk's
        generated weights would start above the target's fan-in variances, a fixed gain
        sqrt(v_k / m_k) < 1 brings them down (and scales Adam's steps on the output layer by the
        same factor). Chunks already below keep gain 1: at the presets' large chunks this is
        the authors' init, bit for bit."""
        # the tasks' generated weights in blocks of 16 tasks (250 tasks of PermutedMNIST-250 at once would take GBs)
        blocks = torch.stack(list(self.task_embs)).split(16)
        moments = [self._per_chunk_mean(self(block).square()) for block in blocks]
        moment = moments[0] if len(moments) == 1 else sum(m * len(b) for m, b in zip(moments, blocks)) / len(self.task_embs)
        gain = (self._per_chunk_mean(target_variances) / moment).sqrt().clamp(max=1.0)
        self.chunk_scale = None if bool((gain == 1.0).all()) else gain

    def _per_chunk_mean(self, values: torch.Tensor) -> torch.Tensor:
        """(..., num_outputs) -> (num_chunks,): the mean of each chunk's entries (padding left out)."""
        padded = torch.full((*values.shape[:-1], self.num_chunks * self.chunk_size), math.nan)
        padded[..., :self.num_outputs] = values
        return padded.view(-1, self.num_chunks, self.chunk_size).transpose(0, 1).reshape(self.num_chunks, -1).nanmean(1)

    def forward(self, task_embs: torch.Tensor, features_only: bool = False, padded: bool = False) -> torch.Tensor:
        """(T, task_emb_dim) -> generated weights (T, num_outputs).

        With ``padded`` the last chunk is not truncated: (T, num_chunks * chunk_size).
        With ``features_only`` return the input of the (linear) output layer instead,
        shape (T, num_chunks, width); the factored regularizer works on it.
        """
        T, C = task_embs.shape[0], self.num_chunks
        h = torch.cat([task_embs[:, None, :].expand(T, C, -1),
                       (self.chunk_emb_scale * self.chunk_embs)[None].expand(T, C, -1)], dim=-1)
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers:
            h = act(layer(h))
        if features_only:
            return h
        weights = self.out(h)
        if self.chunk_scale is not None:
            weights = weights * self.chunk_scale[:, None]
        weights = weights.reshape(T, C * self.chunk_size)
        return weights if padded else weights[:, :self.num_outputs]

    def theta(self) -> dict[str, nn.Parameter]:
        """Θ: every trainable weight except task embeddings (chunk embeddings included)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("task_embs.")}

    def embeddings(self, tasks: range | list[int]) -> torch.Tensor:
        return torch.stack([self.task_embs[t] for t in tasks])


class TargetWeights(nn.Module):
    """What the baselines (hnet/learners.py, ``PenaltyLearner``) learn: the target's own weights, one
    flat vector in ``named_parameters`` order, with PyTorch's default init."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        pieces, inputs = [], 1
        for name, p in target.named_parameters():
            owner = target.get_submodule(name.rpartition(".")[0])
            if isinstance(owner, TaskBatchNorm):  # PyTorch's batch-norm default: scale 1, shift 0
                pieces.append(torch.full(p.shape, 1.0 if name.endswith("weight") else 0.0))
                continue
            # nn.Linear's and nn.Conv2d's default: U(±1/sqrt(fan_in)) for weight and bias
            inputs = fan_in(p) if p.dim() >= 2 else inputs
            pieces.append(torch.empty(p.shape).uniform_(-1 / math.sqrt(inputs), 1 / math.sqrt(inputs)))
        self.weights = nn.Parameter(torch.cat([piece.reshape(-1) for piece in pieces]))


def build_models(cfg: TrainConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, "ChunkedHypernetwork | TargetWeights"]:
    """The target (``build_target``: its weights always come from outside) and what learns them:
    the hypernetwork, or for the baselines the target's own weights (``TargetWeights``).

    Both are initialised from ``cfg.seed``.
    """
    target = build_target(cfg, device)
    torch.manual_seed(cfg.seed)
    if not cfg.generated_classifier:
        return target, TargetWeights(target).to(device)
    return target, build_hypernetwork(cfg, target).to(device)


def build_hypernetwork(cfg: TrainConfig, target: nn.Module) -> ChunkedHypernetwork:
    """The chunked hypernetwork ``cfg`` describes, generating every weight of ``target`` (the classifier,
    or the replay VAE's decoder with ``cfg.replay_hnet_config()``)."""
    return ChunkedHypernetwork(num_weights(target), cfg.num_tasks, cfg.chunk_size, cfg.hnet_hidden,
                               cfg.hnet_activation, cfg.task_emb_dim, cfg.chunk_emb_dim, cfg.hnet_init,
                               cfg.hnet_emb_std, fan_in_variances(target, target.activation),
                               max(fan_in(p) for p in target.parameters() if p.dim() >= 2))

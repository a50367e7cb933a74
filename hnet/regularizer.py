"""The output regularizer of Eq. 2 and its lookahead.

    reg = 1/|S| * sum_{t in S} || f_h(e_t, Θ*) - f_h(e_t, Θ + ΔΘ) ||^2

over the earlier tasks S (all of them, or a random subset of at most K; App. D), with
Θ* the hypernetwork before the current task and ΔΘ the optimizer's candidate step on the
task loss alone (Sec. 2.1). The caller multiplies by β. All earlier tasks go through the
hypernetwork in ONE batched call.

Two forms, equal in exact arithmetic:

* ``direct`` stores the generated weights W*_t (T-1 rows of N weights) and materialises
  f_h(e_t, Θ + ΔΘ) for every earlier task: O((T-1) N) memory traffic per iteration.
* ``factored`` (default) uses that the output layer is linear, W = H A^T + b, with H the
  output layer's input (num_chunks x width per task). Writing A = A* + dA, H = H* + dH,
  b = b* + db gives, per task and exactly,

      W - W* = H* dA^T + dH A^T + 1 db^T = U V^T,
      U = [H*, dH, 1] (chunks x (2w+1)),  V = [dA, A, db] (chunk_size x (2w+1)),

  so ||W - W*||^2 = <U^T U, V^T V>. Summed over tasks only the small Gram Σ_t U_t^T U_t
  grows with T; V^T V is shared. Every term is built from the differences dA, dH, db
  themselves (never ||W||^2 - 2<W, W*> + ||W*||^2), so float32 keeps its relative
  precision when W is close to W*. The last, truncated chunk is computed directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from .models import ChunkedHypernetwork


@dataclass
class RegTargets:
    """What the regularizer remembers of Θ* for the earlier tasks (fixed during a task)."""

    embeddings: torch.Tensor  # (P, task_emb_dim), earlier task embeddings (frozen)
    weights: torch.Tensor | None = None  # direct: W*_t, (P, N)
    features: torch.Tensor | None = None  # factored: H*_t, (P, C, width)
    out_weight: torch.Tensor | None = None  # factored: A*, (chunk_size, width)
    out_bias: torch.Tensor | None = None  # factored: b*, (chunk_size,)


@torch.no_grad()
def snapshot(hnet: ChunkedHypernetwork, num_earlier: int, form: str = "factored") -> RegTargets:
    """Freeze what Eq. 2 needs before learning task ``num_earlier`` (0-based)."""
    embs = hnet.embeddings(range(num_earlier)).detach().clone()
    if form == "direct":
        return RegTargets(embs, weights=hnet(embs))
    return RegTargets(embs, features=hnet(embs, features_only=True),
                      out_weight=hnet.out.weight.detach().clone(), out_bias=hnet.out.bias.detach().clone())


def adam_lookahead(optimizer: torch.optim.Adam, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """ΔΘ: the step Adam would take now from the current gradients, without taking it."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    delta = {}
    for name, p in params.items():
        if p.grad is None:
            continue
        state = optimizer.state.get(p, {})
        step = state["step"] + 1 if "step" in state else 1
        if torch.is_tensor(step) and step.device.type == "cpu":
            step = step.item()  # bias corrections in float64, as Adam computes them
        # (capturable Adam keeps its step on the GPU: used there, no sync, CUDA-graph safe)
        m = p.grad * (1 - beta1) if "exp_avg" not in state else torch.lerp(state["exp_avg"], p.grad, 1 - beta1)
        v = p.grad.square() * (1 - beta2) if "exp_avg_sq" not in state else \
            state["exp_avg_sq"] * beta2 + p.grad.square() * (1 - beta2)
        denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
        delta[name] = m.div_(denom).mul_(-lr / (1 - beta1 ** step))
    return delta


def output_regularizer(hnet: ChunkedHypernetwork, targets: RegTargets,
                       delta: dict[str, torch.Tensor] | None = None,
                       subset: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the selected earlier tasks of ||f_h(e_t, Θ*) - f_h(e_t, Θ + ΔΘ)||^2."""
    params = hnet.theta()
    if delta:
        params = {n: p + delta[n] if n in delta else p for n, p in params.items()}
    embs = targets.embeddings if subset is None else targets.embeddings[subset]
    if targets.weights is not None:  # direct form
        stored = targets.weights if subset is None else targets.weights[subset]
        generated = functional_call(hnet, params, (embs,))
        return (generated - stored).square().sum() / len(embs)

    stored_h = targets.features if subset is None else targets.features[subset]
    h = functional_call(hnet, params, (embs,), {"features_only": True})  # (P, C, w)
    d_weight = params["out.weight"] - targets.out_weight  # (S, w)
    d_bias = params["out.bias"] - targets.out_bias  # (S,)
    ones = torch.ones_like(h[..., :1])
    U = torch.cat([stored_h, h - stored_h, ones], dim=-1)  # (P, C, 2w+1)
    if hnet.chunk_scale is not None:  # W_k = s_k (H_k A^T + 1 b^T): the gain scales U's rows
        U = U * hnet.chunk_scale[:, None]
    full = hnet.num_outputs // hnet.chunk_size  # chunks that are not truncated
    U_full = U[:, :full].reshape(-1, U.shape[-1])
    total = _QuadraticForm.apply(d_weight, params["out.weight"], d_bias, U_full.T @ U_full)
    if full < hnet.num_chunks:  # the truncated last chunk: only its first `rest` outputs count
        rest = hnet.num_outputs - full * hnet.chunk_size
        V_rest = torch.cat([d_weight[:rest], params["out.weight"][:rest], d_bias[:rest, None]], dim=-1)
        total = total + (U[:, full] @ V_rest.T).square().sum()
    return total / len(embs)


class _QuadraticForm(torch.autograd.Function):
    """Σ_s v_s^T G v_s = <G, V^T V> for V = [dA, A, db] (S x (2w+1)), G = U^T U symmetric.

    The rows of V are never concatenated: Y = V G is two matrix products and a rank-1
    update, the value is Σ V ⊙ Y, and the gradient w.r.t. V is 2Y, already computed.
    This touches the (chunk_size x w) matrices a few times instead of the many passes of
    autograd through cat / Gram / elementwise product (memory-bound on CPU).
    """

    @staticmethod
    def forward(ctx, d_weight, weight, d_bias, gram):
        w = d_weight.shape[1]
        Y = d_weight @ gram[:w]
        Y.addmm_(weight, gram[w:2 * w]).addr_(d_bias, gram[2 * w])
        ctx.save_for_backward(d_weight, weight, d_bias, Y)
        return ((Y[:, :w] * d_weight).sum() + (Y[:, w:2 * w] * weight).sum()) + Y[:, 2 * w] @ d_bias

    @staticmethod
    def backward(ctx, grad):
        d_weight, weight, d_bias, Y = ctx.saved_tensors
        w = d_weight.shape[1]
        Y2 = Y * (2 * grad)
        grad_gram = None
        if ctx.needs_input_grad[3]:
            V = torch.cat([d_weight, weight, d_bias[:, None]], dim=1)
            grad_gram = (V.T @ V) * grad
        return Y2[:, :w], Y2[:, w:2 * w], Y2[:, 2 * w], grad_gram

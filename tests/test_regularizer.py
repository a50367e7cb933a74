"""The output regularizer of Eq. 2: value, gradient, lookahead, subsets, both forms."""

import pytest
import torch

from hnet.models import ChunkedHypernetwork
from hnet.regularizer import adam_lookahead, output_regularizer, snapshot


def make_hnet(num_outputs=1000, chunk_size=96, hidden=(6, 5), dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    hnet = ChunkedHypernetwork(num_outputs, num_tasks=5, chunk_size=chunk_size, hidden=hidden,
                               activation="elu", task_emb_dim=4, chunk_emb_dim=3)
    return hnet.to(dtype)


def perturb(hnet, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hnet.theta().values():
            p.add_((scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))


def reference(hnet, targets, tasks):
    """Eq. 2 by the book: one task at a time, materialised weights, float64."""
    total = 0.0
    for t in tasks:
        w = hnet(targets.embeddings[t:t + 1])
        total = total + (w - targets.weights[t]).square().sum()
    return total / len(tasks)


@pytest.mark.parametrize("form", ["factored", "direct"])
@pytest.mark.parametrize("chunk_size, hidden", [(96, (6, 5)), (100, ()), (2000, (4,))])
def test_zero_with_zero_gradient_at_theta_star(form, chunk_size, hidden):
    hnet = make_hnet(chunk_size=chunk_size, hidden=hidden)
    targets = snapshot(hnet, 4, form)
    reg = output_regularizer(hnet, targets)
    reg.backward()
    assert reg.item() == pytest.approx(0.0, abs=1e-10)
    for p in hnet.theta().values():
        assert p.grad.abs().max().item() < 1e-10


@pytest.mark.parametrize("chunk_size, hidden", [(96, (6, 5)), (100, ()), (1000, (4,)), (37, (3, 3, 3))])
def test_factored_equals_direct_and_definition(chunk_size, hidden):
    hnet = make_hnet(chunk_size=chunk_size, hidden=hidden, dtype=torch.float64)
    direct, factored = snapshot(hnet, 4, "direct"), snapshot(hnet, 4, "factored")
    perturb(hnet, 0.05)
    expected = reference(hnet, direct, range(4))
    values, grads = [], []
    for targets in (direct, factored):
        hnet.zero_grad()
        reg = output_regularizer(hnet, targets)
        reg.backward()
        values.append(reg)
        grads.append(torch.cat([p.grad.flatten() for p in hnet.theta().values()]))
    torch.testing.assert_close(values[0], expected)
    torch.testing.assert_close(values[1], expected)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("deviation", [1e-2, 1e-3, 1e-4])
def test_factored_form_keeps_float32_precision_near_targets(deviation):
    """Close to Θ* the factored form must be as precise in float32 as the direct one.

    Expanding ||W - W*||^2 into ||W||^2 - 2<W, W*> + ||W*||^2 would lose most digits here.
    """
    grads, values = {}, {}
    for dtype in (torch.float64, torch.float32):
        for form in ("direct", "factored"):
            hnet = make_hnet(num_outputs=20_000, chunk_size=700, hidden=(10, 10), dtype=dtype)
            targets = snapshot(hnet, 4, form)
            perturb(hnet, deviation)
            reg = output_regularizer(hnet, targets)
            reg.backward()
            values[dtype, form] = reg.double()
            grads[dtype, form] = torch.cat([p.grad.flatten() for p in hnet.theta().values()]).double()
    exact_value, exact_grad = values[torch.float64, "direct"], grads[torch.float64, "direct"]
    errors = {}
    for form in ("direct", "factored"):
        value_err = abs(values[torch.float32, form] - exact_value) / exact_value
        grad_err = (grads[torch.float32, form] - exact_grad).norm() / exact_grad.norm()
        errors[form] = (value_err.item(), grad_err.item())
    for i in (0, 1):  # value, gradient: no worse than the direct form (both limited by float32 H, W)
        assert errors["factored"][i] <= 1.5 * errors["direct"][i] + 1e-7, errors
    if deviation >= 1e-3:
        assert errors["factored"][1] < 5e-5, errors


def test_lookahead_evaluates_at_adams_next_step():
    """With ΔΘ = Adam's candidate step, reg(Θ + ΔΘ) equals reg after Adam really steps."""
    hnet = make_hnet()
    targets = snapshot(hnet, 3, "direct")
    theta = hnet.theta()
    opt = torch.optim.Adam([*theta.values(), hnet.task_embs[3]], lr=1e-2)
    for step in range(4):  # several steps so that Adam's moments are non-trivial
        opt.zero_grad()
        hnet(hnet.embeddings([3])).square().mean().backward()
        delta = adam_lookahead(opt, theta)
        before = {n: p.detach().clone() for n, p in theta.items()}
        with torch.no_grad():
            with_lookahead = output_regularizer(hnet, targets, delta)
            without = output_regularizer(hnet, targets)
        opt.step()
        for name, p in theta.items():
            torch.testing.assert_close(before[name] + delta[name], p)
        with torch.no_grad():
            torch.testing.assert_close(with_lookahead, output_regularizer(hnet, targets))
        assert abs(with_lookahead.item() - without.item()) > 1e-8  # the lookahead changes the loss


@pytest.mark.parametrize("form", ["factored", "direct"])
def test_subset_averages_over_the_chosen_tasks_only(form):
    hnet = make_hnet()
    direct, targets = snapshot(hnet, 4, "direct"), snapshot(hnet, 4, form)
    perturb(hnet, 0.05)
    subset = torch.tensor([3, 1])
    got = output_regularizer(hnet, targets, subset=subset)
    torch.testing.assert_close(got, reference(hnet, direct, [3, 1]))
    assert abs(got.item() - output_regularizer(hnet, targets).item()) > 1e-6


def test_quadratic_form_gradient():
    from hnet.regularizer import _QuadraticForm

    g = torch.Generator().manual_seed(0)
    d_weight, weight = (torch.randn(30, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    d_bias = torch.randn(30, generator=g, dtype=torch.float64, requires_grad=True)
    U = torch.randn(11, 7, generator=g, dtype=torch.float64)
    gram = (U.T @ U).requires_grad_()
    assert torch.autograd.gradcheck(_QuadraticForm.apply, (d_weight, weight, d_bias, gram))
    V = torch.cat([d_weight, weight, d_bias[:, None]], 1)
    torch.testing.assert_close(_QuadraticForm.apply(d_weight, weight, d_bias, gram), (U @ V.T).square().sum())


def test_auto_form_picks_factored_for_large_chunks_and_direct_for_small():
    from hnet.config import Runtime, preset

    auto = Runtime()
    assert auto.reg_form_for(preset("permuted_mnist")) == "factored"
    assert auto.reg_form_for(preset("split_mnist")) == "factored"
    assert auto.reg_form_for(preset("split_mnist").replace(chunk_size=10, hnet_hidden=(100,))) == "direct"
    assert Runtime(reg_form="factored").reg_form_for(preset("split_mnist").replace(chunk_size=10)) == "factored"


def test_factored_equals_direct_with_chunk_gains():
    torch.manual_seed(0)
    hnet = ChunkedHypernetwork(1000, 5, 96, (6, 5), "elu", 4, 3, init="xavier_capped",
                               target_variances=torch.rand(1000) * 0.01 + 0.001, target_fan_in=200).double()
    assert hnet.chunk_scale is not None and (hnet.chunk_scale < 1).any()
    direct, factored = snapshot(hnet, 4, "direct"), snapshot(hnet, 4, "factored")
    perturb(hnet, 0.05)
    torch.testing.assert_close(output_regularizer(hnet, factored), output_regularizer(hnet, direct))

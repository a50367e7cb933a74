"""Weight counts, target networks and the chunked hypernetwork."""
import pytest
import torch

from hnet.config import TrainConfig, preset
from hnet.counts import count_weights
from hnet.models import (MLP, ChunkedHypernetwork, build_models, dead_unit_fraction, fan_in_variances, flat_weights, num_weights,
                         shared_chunk_share, target_forward)


def built_counts(cfg):
    target, hnet = build_models(cfg)
    return (num_weights(target), sum(p.numel() for p in hnet.theta().values()),
            sum(p.numel() for p in hnet.task_embs))


@pytest.mark.parametrize("name, multi_head, target, hnet, task_embs", [
    # Appendix C: PermutedMNIST-10 classifier, single 10-way head / 10 heads (CL1, CL3)
    ("permuted_mnist", False, 2_036_010, 2_029_691, 240),
    ("permuted_mnist", True, 2_126_100, 2_029_699, 240),  # one more chunk: 28 chunk embeddings
    # Appendix C: SplitMNIST classifier, one 2-way head / five 2-way heads (paper: 478,410 for CL1)
    ("split_mnist", False, 475_202, 465_192, 480),
    ("split_mnist", True, 478_410, 465_192, 480),
])
def test_paper_weight_counts(name, multi_head, target, hnet, task_embs):
    cfg = preset(name).replace(multi_head=multi_head)
    counts = count_weights(cfg)
    assert (counts.target_weights, counts.hnet_weights, counts.task_embedding_weights) == (target, hnet, task_embs)
    assert built_counts(cfg) == (target, hnet, task_embs)
    assert counts.compression_ratio == pytest.approx(hnet / target)
    assert counts.compression_ratio_with_task_embeddings == pytest.approx((hnet + task_embs) / target)


def test_counts_without_hidden_layers_and_full_hypernetwork():
    cfg = TrainConfig(benchmark="split_digits", hnet_hidden=(), chunk_size=100_000)
    counts = count_weights(cfg)
    assert counts.num_chunks == 1  # one chunk covers the target: an unchunked hypernetwork
    assert built_counts(cfg) == (counts.target_weights, counts.hnet_weights, counts.task_embedding_weights)
    assert counts.hnet_weights == (24 + 8) * 100_000 + 100_000 + 8


@pytest.mark.parametrize("num_heads", [1, 3])
def test_functional_target_equals_ordinary_module(num_heads):
    torch.manual_seed(0)
    module = MLP(20, (16, 8), 4, "relu", num_heads=num_heads)
    x = torch.randn(5, 20)
    for task in range(num_heads):
        expected = module(x, task)
        got = target_forward(module, flat_weights(module), x, task)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # and gradients reach the flat weight vector
    w = flat_weights(module).requires_grad_()
    target_forward(module, w, x).sum().backward()
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["linear", "relu", "elu", "leaky_relu"])
def test_batched_chunks_equal_per_chunk_loop(activation):
    torch.manual_seed(0)
    hnet = ChunkedHypernetwork(num_outputs=1000, num_tasks=3, chunk_size=128, hidden=(7, 5),
                               activation=activation, task_emb_dim=4, chunk_emb_dim=3)
    act = {"linear": lambda h: h, "relu": torch.relu, "elu": torch.nn.functional.elu,
           "leaky_relu": torch.nn.functional.leaky_relu}[activation]
    batched = hnet(hnet.embeddings(range(3)))
    assert batched.shape == (3, 1000)
    for t in range(3):
        chunks = []
        for c in range(hnet.num_chunks):  # one hypernetwork call per chunk, the naive way
            h = torch.cat([hnet.task_embs[t], hnet.chunk_embs[c]])
            for layer in hnet.layers:
                h = act(layer(h))
            chunks.append(hnet.out(h))
        torch.testing.assert_close(batched[t], torch.cat(chunks)[:1000])


def test_target_weights_live_on_meta_and_hnet_is_seeded():
    cfg = TrainConfig()
    target, hnet = build_models(cfg)
    assert all(p.is_meta for p in target.parameters())
    _, again = build_models(cfg)
    for a, b in zip(hnet.parameters(), again.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("init", ["hyperfan", "hyperfan_shrunk_mean", "hyperfan_out_step"])
@pytest.mark.parametrize("chunk_size, hidden, activation, target_activation", [
    (50, (20, 20), "elu", "relu"), (200, (50,), "relu", "relu"), (2000, (10, 10), "elu", "relu"),
    (100, (25, 25), "relu", "elu"), (10, (15,), "elu", "relu")])
def test_hyperfan_generates_the_targets_fan_in_variance(chunk_size, hidden, activation, target_activation, init):
    """Every target layer spanning at least two chunks gets the second moment a fan-in init gives it (±20 %)."""
    cfg = preset("split_mnist").replace(chunk_size=chunk_size, hnet_hidden=hidden, hnet_activation=activation,
                                        target_activation=target_activation, hnet_init=init)
    target, hnet = build_models(cfg)
    with torch.no_grad():
        generated = hnet(hnet.embeddings(range(cfg.num_tasks)))
    gain2 = 2.0 if target_activation == "relu" else 1.2779600754 ** 2
    weights = list(target.named_parameters())
    offset, checked = 0, 0
    for i, (name, p) in enumerate(weights):
        piece = generated[:, offset:offset + p.numel()]
        offset += p.numel()
        if p.dim() != 2 or p.numel() < 2 * chunk_size:
            continue
        expected = (1.0 if i == len(weights) - 2 else gain2) / p.shape[1]
        assert piece.square().mean().item() == pytest.approx(expected, rel=0.2), name
        checked += 1
    assert checked >= 2


def test_xavier_keeps_the_authors_init():
    cfg = preset("split_mnist")
    assert cfg.hnet_init == "xavier"
    _, hnet = build_models(cfg)
    assert hnet.chunk_scale is None and abs(hnet.task_embs[0].std().item() - 1.0) < 0.2
    assert all(layer.bias.abs().max() == 0 for layer in [*hnet.layers, hnet.out])


# Chunk size 10, where plain hyperfan can start with every first-layer unit dead.
CHUNK_10 = preset("split_mnist").replace(hnet_init="hyperfan", hnet_activation="relu", hnet_hidden=(65, 70),
                                         chunk_emb_dim=8, chunk_size=10)


def task0_at_init(init: str, seed: int, images: torch.Tensor) -> tuple[float, float]:
    """CHUNK_10 with ``init``: (shared share of the first-layer chunks, dead first-layer units) for task 0."""
    target, hnet = build_models(CHUNK_10.replace(hnet_init=init, seed=seed))
    embedding = hnet.embeddings([0])[0]
    with torch.no_grad():
        first_layer = hnet(embedding[None])[0][:784 * 400]
    return shared_chunk_share(first_layer, CHUNK_10.chunk_size), dead_unit_fraction(target, hnet, embedding, images)


def mnist_like_images() -> torch.Tensor:
    return torch.rand(256, 784) * (torch.rand(256, 784) < 0.2)  # sparse, non-negative


def test_shrunk_mean_hyperfan_keeps_sqrt_chunk_over_fan_in_of_the_common_mode():
    """Plain hyperfan gives every chunk ~90 % the same weights (the task embedding dominates the
    input); at chunk size 10 each first-layer row repeats that pattern 78 times, and on inputs
    >= 0 (images) all 400 units can start dead. hyperfan_shrunk_mean scales the output layer's
    mean over a chunk's outputs by sqrt(chunk_size / 784) (784: the target's widest fan-in): the
    pattern stays, the units start alive, and from chunk size 784 on it is plain hyperfan."""
    images = mnist_like_images()
    plain = [task0_at_init("hyperfan", seed, images) for seed in range(4)]
    shrunk = [task0_at_init("hyperfan_shrunk_mean", seed, images) for seed in range(4)]
    assert min(share for share, _ in plain) > 0.8 and max(dead for _, dead in plain) > 0.9
    assert min(share for share, _ in shrunk) > 0.5 and max(dead for _, dead in shrunk) < 0.05
    for chunk_size, kept in [(10, (10 / 784) ** 0.5), (200, (200 / 784) ** 0.5), (2000, 1.0)]:
        cfg = CHUNK_10.replace(chunk_size=chunk_size)
        _, plain_hnet = build_models(cfg)
        _, hnet = build_models(cfg.replace(hnet_init="hyperfan_shrunk_mean"))
        plain_mean, mean = plain_hnet.out.weight.mean(0), hnet.out.weight.mean(0)
        torch.testing.assert_close(mean, kept * plain_mean)
        torch.testing.assert_close(hnet.out.weight - mean, plain_hnet.out.weight - plain_mean)


@pytest.mark.parametrize("chunk_size", [50, 4000])
def test_out_step_init_is_the_same_function_with_a_larger_output_layer_step(chunk_size):
    """hyperfan_out_step generates the same weights as hyperfan_shrunk_mean at init; its chunk gains
    average sqrt(min(1, chunk_size / fan_in)) / emb_std, so Adam's first step on the output layer
    (lr times the gradient's sign, whatever the layer's scale) moves the generated weights that
    much more than with the gains of hyperfan_shrunk_mean (~0.05)."""
    cfg = preset("permuted_mnist").replace(hnet_hidden=(20,), chunk_size=chunk_size, hnet_activation="relu")
    generated, moved, gains = {}, {}, {}
    for init in ["hyperfan_shrunk_mean", "hyperfan_out_step"]:
        _, hnet = build_models(cfg.replace(hnet_init=init))
        embedding = hnet.embeddings([0])
        before = hnet(embedding).detach()
        optimizer = torch.optim.Adam(hnet.out.parameters(), lr=1e-4)
        (hnet(embedding) * torch.linspace(-1, 1, before.shape[1])).sum().backward()
        optimizer.step()
        generated[init], gains[init] = before, hnet.chunk_scale
        moved[init] = (hnet(embedding).detach() - before).square().mean().sqrt()
    torch.testing.assert_close(generated["hyperfan_out_step"], generated["hyperfan_shrunk_mean"], rtol=1e-4, atol=1e-7)
    target, _ = build_models(cfg)
    emb_std = fan_in_variances(target, cfg.target_activation).mean().sqrt().item()  # the init's embedding std
    step = min(1.0, (chunk_size / 1024) ** 0.5)  # 1024: the widest fan-in (32 x 32 inputs, 1024-1000-1000-10 target)
    torch.testing.assert_close(gains["hyperfan_out_step"].mean().item(), step / emb_std, rtol=1e-5, atol=0)
    ratio = (gains["hyperfan_out_step"] / gains["hyperfan_shrunk_mean"]).mean().item()
    assert 0.9 * ratio < moved["hyperfan_out_step"] / moved["hyperfan_shrunk_mean"] < 1.1 * ratio
    assert ratio > 50  # the output layer was ~frozen under Adam before


def test_hyperfan_chunk_gain_stays_finite_when_a_chunk_has_no_live_feature():
    """A 5-unit ReLU hypernetwork leaves some chunks with all features 0 (seed 2 here): their gain
    would be infinite and the generated weights NaN; it is floored instead."""
    cfg = preset("split_mnist").replace(hnet_init="hyperfan", hnet_activation="relu", hnet_hidden=(5,),
                                        chunk_emb_dim=96, chunk_size=500, seed=2)
    _, hnet = build_models(cfg)
    with torch.no_grad():
        features = hnet(hnet.embeddings(range(cfg.num_tasks)), features_only=True)
        generated = hnet(hnet.embeddings(range(cfg.num_tasks)))
    assert (features.abs().sum((0, 2)) == 0).any()  # the case this test is about
    assert torch.isfinite(hnet.chunk_scale).all() and torch.isfinite(generated).all()

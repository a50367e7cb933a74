"""Weight counts, target networks and the chunked hypernetwork."""
import pytest
import torch

from hnet.config import TrainConfig, preset
from hnet.counts import count_weights
from hnet.diagnostics import dead_unit_fraction
from hnet.models import (MLP, ChunkedHypernetwork, build_models, fan_in_variances, flat_weights, num_weights,
                         target_forward)


def built_counts(cfg):
    """Counts of the built modules; the init does not change them, and the authors' skips the default's pass
    over every task's generated weights (250 tasks of 4.5 M weights: 20 s)."""
    target, hnet = build_models(cfg.replace(hnet_init="xavier"))
    return (num_weights(target), sum(p.numel() for p in hnet.theta().values()),
            sum(p.numel() for p in hnet.task_embs))


@pytest.mark.parametrize("name, multi_head, target, hnet, task_embs", [
    # Appendix C: PermutedMNIST-10 classifier, single 10-way head / 10 heads (CL1, CL3)
    ("permuted_mnist", False, 2_036_010, 2_029_691, 240),
    ("permuted_mnist", True, 2_126_100, 2_029_699, 240),  # one more chunk: 28 chunk embeddings
    # Appendix C: SplitMNIST classifier, one 2-way head / five 2-way heads (paper: 478,410 for CL1)
    ("split_mnist", False, 475_202, 465_192, 480),
    ("split_mnist", True, 478_410, 465_192, 480),
    # Appendix C/D: long sequences, one 10-way head per task (the related work's target: 3,027,000 for 100 tasks);
    # the paper gives no hypernetwork count for them: ours from its sizes ([200,250,350], chunks 7,500 / 12,000)
    ("permuted_mnist_100", True, 3_027_000, 2_780_432, 2_400),
    ("permuted_mnist_250", True, 4_528_500, 4_359_724, 6_000),
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


def test_xavier_keeps_the_authors_init():
    cfg = preset("split_mnist").replace(hnet_init="xavier")
    _, hnet = build_models(cfg)
    assert hnet.chunk_scale is None and abs(hnet.task_embs[0].std().item() - 1.0) < 0.2
    assert all(layer.bias.abs().max() == 0 for layer in [*hnet.layers, hnet.out])


@pytest.mark.parametrize("name", ["split_mnist", "permuted_mnist"])
def test_capped_xavier_is_the_authors_init_at_the_presets_chunks(name):
    cfg = preset(name)
    _, capped = build_models(cfg.replace(hnet_init="xavier_capped"))
    _, authors = build_models(cfg.replace(hnet_init="xavier"))
    assert capped.chunk_scale is None
    embs = authors.embeddings(range(cfg.num_tasks))
    assert torch.equal(capped(embs), authors(embs))


@pytest.mark.parametrize("chunk_size", [50, 500, 2000])
def test_capped_xavier_starts_no_chunk_above_the_targets_fan_in_variance(chunk_size):
    """Glorot's generated weights grow as chunks shrink; capped, no chunk's second moment exceeds the mean
    fan-in variance of the target parameters it generates, and every chunk with a gain < 1 lands on it."""
    cfg = preset("split_mnist").replace(hnet_init="xavier_capped", chunk_size=chunk_size)
    target, hnet = build_models(cfg)
    with torch.no_grad():
        moment = hnet._per_chunk_mean(hnet(hnet.embeddings(range(cfg.num_tasks))).square())
    fan_in = hnet._per_chunk_mean(fan_in_variances(target, cfg.target_activation))
    capped = hnet.chunk_scale < 1
    assert capped.float().mean() > 0.5 and (moment <= fan_in * (1 + 1e-4)).all()
    torch.testing.assert_close(moment[capped], fan_in[capped], rtol=1e-4, atol=0)


def test_capped_xavier_starts_the_target_alive_at_chunk_size_10():
    """At chunk size 10 every chunk repeats the output layer's mean pattern ~78 times in a first-layer row;
    with Glorot those repeats add up on non-negative inputs and all 400 units of the row start dead in some
    seeds (ELU). The default shrinks that pattern to sqrt(10 / 784) of its size: no unit starts dead."""
    images = torch.rand(256, 784) * (torch.rand(256, 784) < 0.2)  # MNIST-like: sparse, non-negative
    cfg = preset("split_mnist").replace(hnet_hidden=(65, 70), chunk_emb_dim=8, chunk_size=10)

    def dead_at_init(init, activation, seed):
        target, hnet = build_models(cfg.replace(hnet_init=init, hnet_activation=activation, seed=seed))
        return dead_unit_fraction(target, hnet(hnet.embeddings([0]))[0], images)

    assert max(dead_at_init("xavier", "elu", seed) for seed in range(4)) == 1.0  # what the test is about
    assert max(dead_at_init("xavier_capped", act, seed) for act in ("elu", "relu") for seed in range(4)) < 0.05


def test_capped_xavier_moves_small_chunks_embeddings_faster_under_adam():
    """Below the target's widest fan-in (784), the chunk embeddings are stored at chunk_size / 784 of the
    size the network sees (unit scale, as Glorot's): one Adam step (about lr per stored entry) moves what
    the network sees 784 / chunk_size times further than with the authors' init."""
    moved = {}
    for init in ("xavier", "xavier_capped"):
        _, hnet = build_models(preset("split_mnist").replace(hnet_init=init, chunk_size=49))
        seen = lambda: (hnet.chunk_emb_scale * hnet.chunk_embs).detach().clone()
        before = seen()
        assert 0.9 < before.std().item() < 1.1
        optimizer = torch.optim.Adam([hnet.chunk_embs], lr=1e-3)
        hnet(hnet.embeddings([0])).sum().backward()
        optimizer.step()
        moved[init] = (seen() - before).abs().mean().item()
    assert moved["xavier_capped"] / moved["xavier"] == pytest.approx(784 / 49, rel=1e-3)

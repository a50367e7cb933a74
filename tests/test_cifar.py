"""Split CIFAR-10/100 with the paper's convolutional targets (ZenkeNet, ResNet-32), on generated images:
no CIFAR files exist offline, so the loader is checked up to torchvision and the training on 32x32x3
blobs whose colour names the class."""
from pathlib import Path

import pytest
import torch

from hnet.config import Runtime, resolve
from hnet.counts import count_weights
from hnet.data import _RAW_CACHE, load_benchmark
from hnet.models import build_models, num_weights
from hnet.trainer import Callback, train


@pytest.mark.parametrize("preset, target, hnet, embeddings", [
    ("split_cifar_resnet", 468_540, 457_144, 192),  # App. C
    ("split_cifar_zenke", 1_276_508, 1_182_390, 288),  # App. D
])
def test_counts_match_the_paper(preset, target, hnet, embeddings):
    cfg = resolve(preset).validate()
    counts = count_weights(cfg)
    assert (counts.target_weights, counts.hnet_weights, counts.task_embedding_weights) == (target, hnet, embeddings)
    built_target, built_hnet = build_models(cfg)
    assert num_weights(built_target) == target
    assert sum(p.numel() for p in built_hnet.theta().values()) == hnet
    fine_tuned = resolve(preset, {"method": "finetune"}).validate()  # the same target, one head per task
    assert count_weights(fine_tuned).target_weights == target == build_models(fine_tuned)[1].weights.numel()


def generated_cifar(root: Path, n_per_class: int = 12, seed: int = 0) -> None:
    """110 classes (10 + 100) of 32x32x3 uint8 images, placed where the split_cifar loader keeps CIFAR-10/100
    for ``root``: a class is a random colour, plus noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (110, 3, 1, 1), generator=g).float()
    store = {}
    for part, n in (("train", n_per_class), ("test", n_per_class // 2)):
        labels = torch.arange(110).repeat(n)
        noise = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g).float()
        images = (0.75 * colours[labels] + 0.25 * noise).to(torch.uint8)
        store[part] = (images.reshape(len(labels), -1), labels)
    _RAW_CACHE[("cifar10_100", str(root.resolve()))] = store


@pytest.fixture
def cifar_root(tmp_path):
    generated_cifar(tmp_path)
    yield tmp_path
    _RAW_CACHE.pop(("cifar10_100", str(tmp_path.resolve())), None)


def test_split_cifar_tasks_are_cifar10_then_ten_cifar100_classes(cifar_root):
    bench = load_benchmark(resolve("split_cifar_zenke", {"num_tasks": 3}), data_root=str(cifar_root))
    labels = _RAW_CACHE[("cifar10_100", str(cifar_root.resolve()))]["train"][1]
    for t, task in enumerate(bench.tasks):
        assert sorted(set(labels[task.train.rows].tolist())) == list(range(10 * t, 10 * t + 10))
        assert torch.equal(task.train.labels, labels[task.train.rows] - 10 * t)
    x = bench.inputs(1, "test", bench.tasks[1].test.rows[:4])
    assert x.shape == (4, 3 * 32 * 32) and 0 <= x.min() and x.max() <= 1


def small(preset: str, **changes):
    return resolve(preset, {"num_tasks": 2, "iters": 40, "batch_size": 16, **changes})


def test_zenke_hypernetwork_learns_generated_images(cifar_root):
    """Chance is 10 %. At the preset's lr 1e-4, 80 it/task, the mean over both tasks after task 1 was
    55.0 / 83.3 / 68.3 / 82.5 % (seeds 0-3); at lr 1e-3 it stays at chance."""
    result = train(small("split_cifar_zenke", iters=80), runtime=Runtime(data_root=str(cifar_root), threads=1))
    assert sum(result["acc_matrix"][-1]) / 2 > 35, result["acc_matrix"]


class StopAfterFirstTask(Callback):
    def on_task_end(self, task, summary, checkpoint):
        if task == 0:
            raise KeyboardInterrupt  # a crash right after task 0's checkpoint


def test_resnet_keeps_batch_norm_statistics_per_task_and_resumes(cifar_root, tmp_path):
    """Task 0's running statistics are not touched by task 1 (task 0 is evaluated with them after task 1),
    and a run resumed after task 0 restores them from the checkpoint: it equals the uninterrupted run."""
    cfg, runtime = small("split_cifar_resnet", iters=15), Runtime(data_root=str(cifar_root), threads=1)
    whole = train(cfg, checkpoint=tmp_path / "whole.pt", runtime=runtime)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAfterFirstTask()], checkpoint=tmp_path / "cut.pt", runtime=runtime)
    after_task_0 = torch.load(tmp_path / "cut.pt", weights_only=True)["target_buffers"]
    after_task_1 = torch.load(tmp_path / "whole.pt", weights_only=True)["target_buffers"]
    for name in ("stem_bn.running_mean", "norms.29.running_var"):
        assert torch.equal(after_task_0[name][0], after_task_1[name][0])  # task 1 left task 0's row alone
        assert not torch.equal(after_task_1[name][0], after_task_1[name][1])
        assert not torch.equal(after_task_0[name][1], after_task_1[name][1])  # ... and updated its own
    resumed = train(cfg, checkpoint=tmp_path / "cut.pt", resume=True, runtime=runtime)
    assert resumed["acc_matrix"] == whole["acc_matrix"]


def test_fine_tuned_resnet_shares_its_statistics(cifar_root, tmp_path):
    """A target trained directly keeps one set of running statistics, updated by every task (the paper's fine-tuning)."""
    cfg = small("split_cifar_resnet", method="finetune", iters=10)
    result = train(cfg, checkpoint=tmp_path / "run.pt", runtime=Runtime(data_root=str(cifar_root), threads=1))
    assert len(result["acc_matrix"]) == 2 and result["target_weights"] == 464_640 + 2 * 650  # two 10-way heads
    assert torch.load(tmp_path / "run.pt", weights_only=True)["target_buffers"]["stem_bn.running_mean"].shape == (1, 16)


def test_augmentation_mirrors_and_shifts_each_training_image():
    """Every augmented image is its original, possibly mirrored, shifted by at most 4 pixels (zeros fill in);
    both mirror states and several shifts occur."""
    from hnet.data import flip_and_shift

    x = torch.rand(16, 3 * 32 * 32) + 0.1  # no zeros: the padding is recognisable
    out = flip_and_shift(x, torch.Generator().manual_seed(0)).view(16, 3, 32, 32)
    seen = set()
    for image, original in zip(out, x.view(16, 3, 32, 32)):
        matches = [(flip, dy, dx) for flip in (False, True) for dy in range(9) for dx in range(9)
                   if torch.equal(torch.nn.functional.pad(original.flip(-1) if flip else original, (4,) * 4)
                                  [:, dy:dy + 32, dx:dx + 32], image)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert {flip for flip, _, _ in seen} == {False, True} and len(seen) > 8


def test_evaluation_switches_dropout_off_and_restores_the_mode(cifar_root):
    """A callback may score mid-task with the target in training mode: evaluate runs it in eval mode (two calls
    agree although ZenkeNet has dropout) and leaves it as it found it."""
    from hnet.evaluation import evaluate

    cfg = small("split_cifar_zenke", num_tasks=1)
    bench = load_benchmark(cfg, data_root=str(cifar_root))
    target, hnet = build_models(cfg)
    weights = hnet(hnet.embeddings([0])).detach()
    target.train()
    scores = [evaluate(cfg, target, weights, bench, 1, "test", 64)[0] for _ in range(2)]
    assert scores[0] == scores[1] and target.training

"""On a GPU: the captured (CUDA-graph) training step trains exactly like the eager one.

Skipped without CUDA (CI has none); run on a lent GPU by ``bench/gpu_suite.sh``.
"""
import pytest
import torch

from hnet.config import Runtime, TrainConfig
from hnet.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("reg_form, lookahead, lr_schedule, reg_subset", [
    ("factored", True, "constant", 0), ("direct", True, "constant", 0), ("direct", False, "constant", 0),
    ("factored", True, "cosine", 0),  # cosine: the graph reads lr from a tensor the schedule refills
    ("factored", True, "constant", 2), ("direct", True, "constant", 2)])  # subset: drawn outside, read inside
def test_cuda_graph_step_matches_eager(reg_form, lookahead, lr_schedule, reg_subset):
    from hnet.trainer import use_cuda_graph

    cfg = TrainConfig(benchmark="split_digits", num_tasks=5 if reg_subset else 3, iters=60, batch_size=32,
                      chunk_size=500, hnet_hidden=(10, 10), lookahead=lookahead, beta=0.05, lr_schedule=lr_schedule,
                      reg_subset=reg_subset)
    assert use_cuda_graph(cfg, Runtime(cuda_graph=True), torch.device("cuda"))
    eager = train(cfg, runtime=Runtime(device="cuda", reg_form=reg_form, cuda_graph=False))
    graphed = train(cfg, runtime=Runtime(device="cuda", reg_form=reg_form, cuda_graph=True))
    # Same iterations, same batches; only kernel launch differs, so accuracies agree up to float32
    # reassociation (one test image at most).
    for row_e, row_g in zip(eager["acc_matrix"], graphed["acc_matrix"]):
        assert row_g == pytest.approx(row_e, abs=0.5)


def test_trainer_on_gpu_learns():
    cfg = TrainConfig(benchmark="split_digits", num_tasks=5, iters=200, batch_size=64)
    result = train(cfg, runtime=Runtime(device="cuda"))
    assert result["acc_after_mean"] > 90


def test_cosine_lr_reaches_the_captured_graph():
    """The graph reads lr from the tensor it captured: the schedule must refill that tensor in place
    (were it replaced by a float, replays would keep the first lr)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    seen = []  # (optimizer, its lr object) at every eager or captured step, not at replays
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append((opt, opt.param_groups[0]["lr"])))
    cfg = TrainConfig(benchmark="split_digits", num_tasks=2, iters=60, batch_size=32, lr_schedule="cosine")
    try:
        train(cfg, runtime=Runtime(device="cuda", cuda_graph=True))
    finally:
        hook.remove()
    optimizer, captured_lr = seen[-1]
    final_lr = optimizer.param_groups[0]["lr"]
    assert torch.is_tensor(final_lr) and final_lr is captured_lr and final_lr.item() < 0.01 * cfg.lr


def test_cuda_graph_with_per_task_batch_norm(tmp_path):
    """ResNet-32's batch norm updates task t's running statistics inside the captured step: eager and
    graphed runs on generated images agree (evaluation uses those statistics)."""
    from hnet.config import resolve
    from test_cifar import generated_cifar

    generated_cifar(tmp_path)
    cfg = resolve("split_cifar_resnet", {"num_tasks": 2, "iters": 30, "batch_size": 16})
    eager = train(cfg, runtime=Runtime(device="cuda", cuda_graph=False, data_root=str(tmp_path)))
    graphed = train(cfg, runtime=Runtime(device="cuda", cuda_graph=True, data_root=str(tmp_path)))
    for row_e, row_g in zip(eager["acc_matrix"], graphed["acc_matrix"]):
        assert row_g == pytest.approx(row_e, abs=5.0)  # 60 test images per task: a few flips of float32 order

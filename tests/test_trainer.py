"""The continual trainer on offline data (scikit-learn's 8x8 digits)."""
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hnet.config import ConfigError, preset
from hnet.data import load_benchmark
from hnet.diagnostics import DeadUnits
from hnet.results import summarize
from hnet.trainer import Callback, TrainingDiverged, train


class Recorder(Callback):
    def __init__(self, stop_after=None):
        self.reg_seen, self.ends, self.stop_after = [], [], stop_after

    def on_iteration(self, task, iteration, loss_task, loss_reg):
        self.reg_seen.append((task, loss_reg is not None))

    def on_task_end(self, task, summary, checkpoint):
        self.ends.append((task, summary["tasks_done"], checkpoint))
        if task == self.stop_after:
            raise KeyboardInterrupt  # a crash right after the checkpoint of this task


def small(**changes):
    return preset("permuted_digits").replace(**{"num_tasks": 3, "iters": 60, **changes})


def test_summary_metrics():
    s = summarize([[90.0], [80.0, 95.0], [70.0, 90.0, 99.0]])
    assert s["acc_during"] == [90.0, 95.0, 99.0] and s["acc_after"] == [70.0, 90.0, 99.0]
    assert s["acc_after_mean"] == pytest.approx(259 / 3)
    assert s["forgetting"] == pytest.approx((20 + 5) / 2)


def test_beta_zero_turns_the_regularizer_off():
    rec = Recorder()
    train(small(beta=0.0, num_tasks=2, iters=5), callbacks=[rec])
    assert not any(has_reg for _, has_reg in rec.reg_seen)
    rec = Recorder()
    train(small(num_tasks=2, iters=5), callbacks=[rec])
    assert [has for task, has in rec.reg_seen] == [False] * 5 + [True] * 5


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])  # cosine restarts with every task
def test_checkpoint_resume_equals_uninterrupted(tmp_path, lr_schedule):
    cfg = small(reg_subset=1, lr_schedule=lr_schedule)  # the random subset of earlier tasks must resume identically too
    full = train(cfg, checkpoint=tmp_path / "full.pt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Recorder(stop_after=1)], checkpoint=tmp_path / "cut.pt")
    assert torch.load(tmp_path / "cut.pt", weights_only=True)["next_task"] == 2
    rec = Recorder()
    resumed = train(cfg, callbacks=[rec], checkpoint=tmp_path / "cut.pt", resume=True)
    assert [task for task, _, _ in rec.ends] == [2]  # only the last task was trained again
    assert resumed["acc_matrix"] == full["acc_matrix"]
    a = torch.load(tmp_path / "full.pt", weights_only=True)["hnet"]
    b = torch.load(tmp_path / "cut.pt", weights_only=True)["hnet"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_lr_schedule_runs_within_each_task(lr_schedule):
    """The lr Adam steps with (read by torch's global optimizer hook): constant, or cosine from lr
    down to ~0 at every task's last iteration, restarting with the next task."""
    lrs = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: lrs.append(float(opt.param_groups[0]["lr"])))
    try:
        train(small(num_tasks=2, iters=20, lr_schedule=lr_schedule))
    finally:
        hook.remove()
    lr = small().lr
    for task_lrs in (lrs[:20], lrs[20:]):
        assert len(task_lrs) == 20 and task_lrs[0] == pytest.approx(lr)
        if lr_schedule == "constant":
            assert task_lrs == [pytest.approx(lr)] * 20
        else:
            assert all(b < a for a, b in zip(task_lrs, task_lrs[1:])) and task_lrs[-1] < 0.01 * lr


def test_a_callbacks_results_join_the_record_and_survive_resume(tmp_path):
    """DeadUnits (hnet.diagnostics) measures during task 0; a run resumed at task 2 still reports it."""
    cfg = small(iters=20)
    full = train(cfg, callbacks=[DeadUnits(at=10)])
    assert 0.0 <= full["dead_units_first_layer"] <= 1.0
    plain = train(cfg)
    assert "dead_units_first_layer" not in plain  # only with the callback ...
    assert plain["acc_matrix"] == full["acc_matrix"]  # ... which draws its own batch: training is unchanged
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[DeadUnits(at=10), Recorder(stop_after=1)], checkpoint=tmp_path / "cut.pt")
    resumed = train(cfg, callbacks=[DeadUnits(at=10)], checkpoint=tmp_path / "cut.pt", resume=True)
    assert resumed["dead_units_first_layer"] == full["dead_units_first_layer"]


def test_resume_refuses_a_different_config(tmp_path):
    train(small(num_tasks=1, iters=2), checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="different configuration"):
        train(small(num_tasks=1, iters=2, lr=0.5), checkpoint=tmp_path / "c.pt", resume=True)


def test_divergence_raises():
    with pytest.raises(TrainingDiverged):
        train(small(num_tasks=2, iters=3, beta=1e300))  # β·reg overflows float32 at task 1


def test_validation_split_is_reported():
    result = train(small(num_tasks=2, iters=20, val_fraction=0.2))
    assert len(result["val_acc_matrix"]) == 2 and 0 <= result["val_acc_after_mean"] <= 100


def test_regularizer_prevents_forgetting_which_fine_tuning_suffers():
    """The paper's central claim, on PermutedDigits: with β > 0 earlier tasks keep the accuracy they
    were learned to, with β = 0 they lose much of it.

    Thresholds from studies/test_margins (8 seeds x 4 CPU code paths: ATEN_CPU_CAPABILITY default,
    avx2, avx512 with 1 thread, avx512 with 2): each task learned to 94.65..98.22; forgetting (mean
    drop of tasks 1-4 since they were learned) protected -0.39..1.00, fine-tuned 20.04..39.25. One
    task's drop alone is too noisy to test (fine-tuned task 1: 24.28..63.47).
    """
    cfg = preset("permuted_digits")  # 5 tasks, 300 iterations each
    bench = load_benchmark(cfg)
    protected = train(cfg, bench)
    fine_tuned = train(cfg.replace(beta=0.0), bench)
    assert protected["acc_during"][0] > 90 and fine_tuned["acc_during"][0] > 90  # both learn (min 94.65)
    assert protected["forgetting"] < 4  # max measured 1.00
    assert fine_tuned["forgetting"] > 10  # min measured 20.04


def test_soft_target_puts_its_probability_on_the_true_class():
    """App. D's soft targets: 0.95 on the true class, the rest spread evenly, as PyTorch's label smoothing."""
    from hnet.learners import label_smoothing

    logits, labels = torch.randn(6, 10), torch.tensor([0, 3, 9, 2, 2, 5])
    targets = torch.full((6, 10), 0.05 / 9).scatter_(1, labels[:, None], 0.95)
    by_hand = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    smoothed = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing(0.95, 10))
    assert torch.allclose(smoothed, by_hand) and label_smoothing(1.0, 10) == 0.0
    with pytest.raises(ConfigError, match="soft_target must be in"):
        preset("permuted_digits").replace(soft_target=0.05).validate()


def test_regression_toy_keeps_protected_fits_and_forgets_unprotected_ones():
    """Fig. 2: after the three 1-D tasks the protected hypernetwork still fits the first two, the
    unprotected one (β = 0, a shorter run: it forgets at any length) has lost them. MSE of tasks 0 and 1
    after all tasks, measured on seeds 0-3: β 0.005 at most 0.011; β 0 at 1,500 it/task at least 0.24."""
    cfg = preset("regression_1d")
    protected, unprotected = train(cfg), train(cfg.replace(beta=0.0, iters=1500))
    assert protected["metric"] == "mse" and max(protected["acc_after"][:2]) < 0.05, protected["acc_after"]
    assert min(unprotected["acc_after"][:2]) > 0.1, unprotected["acc_after"]
    assert max(protected["acc_during"] + unprotected["acc_during"]) < 0.1  # every task is learned first


def test_a_checkpoint_in_another_layout_fails_in_one_line(tmp_path):
    """A checkpoint this version does not write (here: a baseline's weights under the old key "hnet") is
    refused with one line that says what to do, not a traceback from deep inside PyTorch."""
    cfg = small(method="ewc", num_tasks=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Recorder(stop_after=0)], checkpoint=tmp_path / "cut.pt")
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)
    saved["hnet"] = saved.pop("target")
    torch.save(saved, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="another layout") as error:
        train(cfg, checkpoint=tmp_path / "cut.pt", resume=True)
    assert "\n" not in str(error.value) and "delete it" in str(error.value)

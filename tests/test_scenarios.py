"""CL1/CL2/CL3 heads and labels, HNET+ENT task inference, and the baselines (fine-tuning,
online EWC, SI) against hand-computed values, on offline data."""
import math

import pytest
import torch
import torch.nn.functional as F

from hnet.baselines import EWCPenalty, SIPenalty, diagonal_fisher
from hnet.config import ConfigError, preset
from hnet.counts import count_weights
from hnet.data import load_benchmark
from hnet.evaluation import Scenario, evaluate, infer_task
from hnet.models import MLP, target_forward
from hnet.trainer import build_learner, Callback, train


@pytest.mark.parametrize("method, scenario, heads, weights", [
    # the paper's counts for the SplitMNIST target (App. C): 478,410 for CL1/CL3, 475,202 for CL2
    ("ewc", "cl1", (2, 5), 478_410), ("ewc", "cl2", (2, 1), 475_202), ("si", "cl3", (10, 1), 478_410),
    ("hnet", "cl3", (2, 1), 475_202),  # a hypernetwork generates weights per task: one head of a task's classes
    ("hnet_tir", "cl3", (2, 1), 475_202), ("hnet_r", "cl1", (2, 5), 478_410),  # HNET+R: the target trained directly
])
def test_heads_per_method_and_scenario(method, scenario, heads, weights):
    cfg = preset("split_mnist").replace(method=method, scenario=scenario)
    assert cfg.heads() == heads
    counts = count_weights(cfg)
    assert counts.target_weights == weights
    if method not in ("hnet", "hnet_tir"):  # the target's own weights are trained: nothing compressed
        assert counts.hnet_weights == weights and counts.compression_ratio == 1.0
    target, learner = build_learner(cfg)
    assert sum(p.numel() for p in target.parameters()) == weights and learner.task_weights(1).shape[-1] >= weights


def test_multi_head_hypernetwork_target_is_the_papers_cl3_count():
    """The paper counts 478,410 target weights for SplitMNIST CL3 (784-400-400-10): a head per task."""
    cfg = preset("split_mnist").replace(scenario="cl3", multi_head=True).validate()
    assert cfg.heads() == (2, 5) and count_weights(cfg).target_weights == 478_410


def test_labels_are_global_only_in_cl3():
    y = torch.tensor([0, 1, 1])
    assert Scenario.of(preset("split_digits").replace(scenario="cl3")).scored_labels(y, 3).tolist() == [6, 7, 7]
    for scenario in ("cl1", "cl2"):
        assert Scenario.of(preset("split_digits").replace(scenario=scenario)).scored_labels(y, 3).tolist() == [0, 1, 1]


@pytest.mark.parametrize("method", ["hnet", "ewc", "hnet_tir", "hnet_r"])
def test_cl2_and_cl3_never_see_the_task_identity(method):
    """Task 1's test split replaced by task 0's: without the task identity the model must give
    the same answers on both, so the same accuracy in cl2; in cl1 (task given) they differ."""
    accs = {}
    for scenario in ("cl1", "cl2", "cl3"):
        cfg = preset("split_digits").replace(method=method, scenario=scenario, num_tasks=2, iters=40)
        bench = load_benchmark(cfg)
        torch.manual_seed(0)
        target, learner = build_learner(cfg)
        with torch.no_grad():
            for p in learner.module.parameters():  # distinct weights per task
                p.add_(0.5 * torch.randn_like(p))
        weights = learner.task_weights(2)
        bench.tasks[1].test = bench.tasks[0].test
        accs[scenario] = evaluate(cfg, target, weights, bench, 2, "test", 1000, learner.infer_task)[0]
    assert accs["cl2"][0] == accs["cl2"][1]
    if method in ("hnet", "hnet_tir"):
        assert accs["cl1"][0] != accs["cl1"][1]  # the check can fail: with the task given, answers differ
    # cl3 scores against global labels (task 1's are shifted by 2): identical answers, different truth
    assert accs["cl3"][0] + accs["cl3"][1] <= 100.0 + 1e-9


def test_entropy_inference_picks_the_confident_task():
    """Two hand-built target weight sets: task 0 is confident when x[0] is large, task 1 when x[1] is."""
    with torch.device("meta"):
        target = MLP(2, (2,), 2)

    def weights(column: int, label: int) -> torch.Tensor:
        w1 = torch.zeros(2, 2)
        w1[0, column] = 1.0  # hidden unit 0 = relu(x[column])
        w2 = torch.zeros(2, 2)
        w2[label, 0], w2[1 - label, 0] = 10.0, -10.0
        return torch.cat([w1.flatten(), torch.zeros(2), w2.flatten(), torch.zeros(2)])

    both = torch.stack([weights(0, 1), weights(1, 0)])
    x = torch.tensor([[5.0, 0.0], [0.0, 5.0], [3.0, 0.1]])
    task, label = infer_task(target, both, x)
    assert task.tolist() == [0, 1, 0] and label.tolist() == [1, 0, 1]
    # batched = one target call per task, entropies compared by hand
    for i in range(len(x)):
        entropies = []
        for t in range(2):
            p = F.softmax(target_forward(target, both[t], x[i:i + 1]), -1)
            entropies.append(-(p * p.log().nan_to_num()).sum().item())
        assert task[i].item() == min(range(2), key=entropies.__getitem__)


def test_entropy_inference_scores_each_task_through_its_own_head():
    """Multi-head target (cl3 as the authors' code): each task's weights are read through its own
    head. Each weight set's *other* head is built more confident on the other task's inputs, so
    reading any head but the task's own would pick the wrong task."""
    with torch.device("meta"):
        target = MLP(2, (2,), 2, num_heads=2)

    def weights(task: int, label: int) -> torch.Tensor:
        w1 = torch.eye(2)  # hidden unit j = relu(x[j])
        head = torch.zeros(4, 2)  # rows 2t, 2t+1: task t's head
        head[2 * task + label, task], head[2 * task + 1 - label, task] = 10.0, -10.0
        other = 1 - task
        head[2 * other, other] = 100.0  # the other head, very confident on the other task's inputs
        return torch.cat([w1.flatten(), torch.zeros(2), head.flatten(), torch.zeros(4)])

    both = torch.stack([weights(0, 1), weights(1, 0)])
    x = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    task, label = infer_task(target, both, x)
    assert task.tolist() == [0, 1] and label.tolist() == [1, 0]


def test_multi_head_hypernetwork_trains_and_infers_in_cl3():
    result = train(preset("split_digits").replace(scenario="cl3", multi_head=True, num_tasks=3, iters=60))
    assert len(result["acc_after"]) == 3 and 0 <= result["task_inference_acc"] <= 100
    assert result["target_weights"] == count_weights(preset("split_digits").replace(multi_head=True, num_tasks=3)).target_weights


def test_ewc_fisher_matches_the_closed_form_for_the_output_bias():
    """d log p_ŷ / d b_k = 1[k = ŷ] − p_k for the output bias: F_k = mean over inputs of its square."""
    torch.manual_seed(0)
    with torch.device("meta"):
        target = MLP(3, (4,), 3)
    w = torch.randn(sum(p.numel() for p in target.parameters()))
    x = torch.randn(7, 3)
    fisher = diagonal_fisher(lambda w_, xi: F.log_softmax(target_forward(target, w_, xi[None])[0], -1), w, x,
                             batch_size=3)
    p = F.softmax(target_forward(target, w, x), -1)
    onehot = F.one_hot(p.argmax(1), 3).float()
    expected_bias = (onehot - p).square().mean(0)
    assert torch.allclose(fisher[-3:], expected_bias, atol=1e-6)
    # every entry against per-input autograd
    reference = torch.zeros_like(w)
    for xi in x:
        wi = w.clone().requires_grad_()
        log_p = F.log_softmax(target_forward(target, wi, xi[None])[0], -1)
        (g,) = torch.autograd.grad(log_p.max(), wi)
        reference += g.square() / len(x)
    assert torch.allclose(fisher, reference, atol=1e-6)


def test_si_importance_and_online_ewc_accumulation_by_hand():
    cfg = preset("split_digits").replace(method="si", si_c=2.0, si_xi=0.5)
    weights = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    penalty = SIPenalty(cfg, weights)
    assert penalty.loss(weights) is None  # nothing to protect during the first task

    class Jump:  # an optimizer step that lands on given weights
        def __init__(self, new: list[float]) -> None:
            self.new = new

        def step(self) -> None:
            with torch.no_grad():
                weights.copy_(torch.tensor(self.new))

    # two steps: (gradient, new weights)
    for grad, new in (([0.5, -1.0], [0.9, -0.8]), ([0.2, 0.0], [0.7, -0.8])):
        weights.grad = torch.tensor(grad)
        penalty.optimizer_step(weights, Jump(new))
    penalty.end_task(weights, target=None, bench=None, task=0, generator=None)  # SI needs no data
    # ω = −Σ g δθ = −(0.5·(−0.1) + 0.2·(−0.2), −1.0·0.2 + 0) = (0.09, 0.2); Δ = (−0.3, 0.2)
    expected = torch.tensor([0.09 / (0.09 + 0.5), 0.2 / (0.04 + 0.5)])
    assert torch.allclose(penalty.omega, expected)
    moved = torch.tensor([0.0, 0.0])
    assert math.isclose(penalty.loss(moved).item(), (expected * torch.tensor([0.49, 0.64])).sum().item(), rel_tol=1e-6)
    assert penalty.strength == 2.0

    ewc = EWCPenalty(preset("split_digits").replace(method="ewc", ewc_lambda=10.0, ewc_gamma=0.5), weights)
    ewc.accumulate(weights, torch.tensor([1.0, 2.0]))
    ewc.accumulate(weights, torch.tensor([3.0, 0.0]))
    assert torch.allclose(ewc.omega, torch.tensor([0.5 * 1.0 + 3.0, 0.5 * 2.0 + 0.0])) and ewc.strength == 5.0


@pytest.mark.parametrize("method, scenario", [("hnet", "cl3"), ("ewc", "cl3"), ("si", "cl2"), ("finetune", "cl1"),
                                              ("hnet_tir", "cl3"), ("hnet_r", "cl1"), ("hnet_r", "cl3")])
def test_every_method_and_scenario_trains_and_resumes(tmp_path, method, scenario):
    """Resuming after task 1 gives the uninterrupted result: penalty state (EWC/SI) and the replay
    VAE, the classifier the soft targets come from and TIR's task classifier come back too."""
    cfg = preset("split_digits").replace(method=method, scenario=scenario, num_tasks=3, iters=60)
    full = train(cfg)
    assert len(full["acc_matrix"]) == 3 and ("task_inference_acc" in full) == (method in ("hnet", "hnet_tir"))

    class Stop(Exception):
        pass

    class StopAfterTask1(Callback):
        def on_task_end(self, task, summary, checkpoint):
            if task == 1:
                raise Stop

    with pytest.raises(Stop):
        train(cfg, callbacks=[StopAfterTask1()], checkpoint=tmp_path / "c.pt")
    resumed = train(cfg, checkpoint=tmp_path / "c.pt", resume=True)
    assert resumed["acc_matrix"] == full["acc_matrix"]


def test_class_incremental_fine_tuning_forgets_all_but_the_last_task():
    result = train(preset("split_digits").replace(method="finetune", scenario="cl3", num_tasks=3, iters=100))
    assert result["acc_after"][-1] > 80 and max(result["acc_after"][:-1]) < 20  # 98.89 and 0.00 on every code path


@pytest.mark.parametrize("changes, message", [
    ({"method": "rehearsal"}, "unknown method"),
    ({"scenario": "cl4"}, "unknown scenario"),
    ({"method": "ewc", "multi_head": True}, "multi_head is an option of a hypernetwork classifier"),
    ({"method": "hnet_r", "multi_head": True}, "for method hnet_r the scenario decides the heads"),
    ({"scenario": "cl2", "multi_head": True}, "contradicts scenario cl2"),
    ({"ewc_gamma": 1.5}, "ewc_gamma must be in (0, 1]"),
])
def test_meaningless_combinations_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        preset("split_digits").replace(**changes).validate()

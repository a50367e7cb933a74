"""The continual-learning methods and scenarios, one table each.

What the rest of the code needs to know about a method (does a hypernetwork generate the
classifier? does it replay? which penalty protects the target's own weights? which learner
trains it?) or about a scenario (is the task given at test time? which output heads?) is read
here: no other module compares method names, and only ``hnet.evaluation.Scenario`` scenario
names. Pure data (no torch): configs are validated with it before anything heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScenarioKind:
    """van de Ven & Tolias (2019): cl1 task-incremental, cl2 domain-incremental, cl3 class-incremental."""

    name: str
    task_given: bool  # at test time (cl1); else inferred (a hypernetwork) or not needed (a shared head)
    heads: str  # of a target trained directly: "per_task" (cl1), "shared" (cl2), "all_classes" (cl3)


SCENARIOS = {s.name: s for s in (
    ScenarioKind("cl1", task_given=True, heads="per_task"),
    ScenarioKind("cl2", task_given=False, heads="shared"),
    ScenarioKind("cl3", task_given=False, heads="all_classes"),
)}


@dataclass(frozen=True)
class Method:
    name: str
    generated_classifier: bool  # a hypernetwork generates the classifier's weights, one set per task
    learner: str  # the learner that trains it (``hnet.trainer.LEARNERS``)
    replays: str = "never"  # its replay VAE (hnet/replay.py): "never", "always", or "without_task" (cl2/cl3 only)
    penalty: str | None = None  # the quadratic penalty on the target's own weights: "ewc", "si" or none
    task_classifier: bool = False  # a classifier trained on replay names the task (HNET+TIR)
    regression: bool = False  # also runs a regression benchmark (cl1, one real output)

    def uses_replay(self, scenario: ScenarioKind) -> bool:
        return self.replays == "always" or (self.replays == "without_task" and not scenario.task_given)

    def learner_in(self, scenario: ScenarioKind) -> str:
        """HNET+TIR where the task is given has nothing to infer: the plain hypernetwork learner."""
        return self.learner if self.replays != "without_task" or self.uses_replay(scenario) else "hypernet"


METHODS = {m.name: m for m in (
    # the paper's: the hypernetwork (cl2/cl3: the task by predictive entropy, HNET+ENT) ...
    Method("hnet", generated_classifier=True, learner="hypernet", regression=True),
    # ... the task by a classifier trained with replay (HNET+TIR), the target trained with replay (HNET+R)
    Method("hnet_tir", generated_classifier=True, learner="task_inference", replays="without_task",
           task_classifier=True),
    Method("hnet_r", generated_classifier=False, learner="replay", replays="always"),
    # the baselines: the target network's own weights, unprotected, with online EWC, with SI
    Method("finetune", generated_classifier=False, learner="penalty", regression=True),
    Method("ewc", generated_classifier=False, learner="penalty", penalty="ewc"),
    Method("si", generated_classifier=False, learner="penalty", penalty="si"),
)}

"""The config sections that decide what a run feeds its GRPO stages, how it rewards them and when a stage ends:
difficulty curricula (`schedule`), online filtering (`grpo.filter`), reward curricula (`grpo.reward_schedule`),
reasoning budgets (`budget`) and held-out targets (`<stage>.stop_at`). Part of the config schema of
`mmreason.config`, which re-exports every class here and owns loading and checking; kept apart so the schema module
stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ScheduleBy = Literal["difficulty", "pass_rate"]


Curriculum = Literal["none", "linear", "stages"]


@dataclass
class DifficultyStage:
    """The difficulty one GRPO stage prefers (schedule.curriculum: stages): a range or a target on the 0..1 scale."""

    stage: int | None = None  # the stage: its 0-based position in `stages` (a grpo stage)
    low: float | None = None  # a range: prompts with low <= difficulty <= high (a missing end: 0 or 1)
    high: float | None = None
    target: float | None = None  # or a target: prompts near it (a kernel of schedule.width around it)


@dataclass
class MixturePhase:
    """The task mixture of one GRPO stage: task -> weight, in place of data[i].weight for every entry of the task."""

    stage: int | None = None  # the stage: its 0-based position in `stages` (a grpo stage)
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight >= 0 (0: not drawn in this stage)


@dataclass
class ScheduleConfig:
    """Difficulty-aware data scheduling of the GRPO stages: prompts drawn by difficulty along a curriculum (easy to
    hard), and task weights per stage (mmreason.data.schedule; README: "Data scheduling and budgets")."""

    enabled: bool = False  # draw the GRPO stages' prompts by difficulty and per-stage task weights
    # a prompt's difficulty: its record's `difficulty` field (normalised per source), or 1 - its pass rate so far
    by: ScheduleBy = "difficulty"
    # level names a `difficulty` field may hold -> numbers (any case; "level N" is N without being listed)
    levels: dict[str, float] = field(default_factory=lambda: {"easy": 0.0, "medium": 1.0, "hard": 2.0})
    prior: float = 0.5  # difficulty (0..1) of a record without one, or of a prompt not drawn yet (by: pass_rate)
    # linear: a target moving from start to end over each GRPO stage; stages: each stage's own range or target
    # (schedule.stages); none: no difficulty weighting (the mixture alone)
    curriculum: Curriculum = "linear"
    start: float = 0.0  # target difficulty at a GRPO stage's first step (curriculum: linear)
    end: float = 1.0  # ... at its last step (start = end: a fixed target)
    width: float = 0.25  # kernel width: weight exp(-((d - target) / width)^2) off target; 0: the target alone
    floor: float = 0.05  # least weight (a prompt on target weighs 1): floor + (1 - floor) * kernel; 0: none
    stages: list[DifficultyStage] = field(default_factory=list)  # curriculum: stages: one entry per GRPO stage
    mixture: list[MixturePhase] = field(default_factory=list)  # task weights of some GRPO stages


@dataclass
class FilterConfig:
    """Online filtering (EasyR1's online_filtering; DAPO's dynamic sampling with refill): a group trains only when
    its mean accuracy lies strictly between `low` and `high`; prompts are drawn from the data stream until a step has
    prompts_per_step such groups or `max_extra_prompts` more prompts were drawn (mmreason.train.online_filter)."""

    enabled: bool = False  # filter the groups and refill the batch from the data stream
    # a completion's accuracy: null = the weighted mean of its task's rewards other than the format and budget ones
    # (0..1 for the built-in rewards), "total" = its total reward, or a reward's name = that reward's score
    reward: str | None = None
    low: float = 0.0  # keep a group when low < its mean accuracy ...
    high: float = 1.0  # ... < high (the defaults drop the groups all solved or all failed)
    max_extra_prompts: int = 16  # prompts drawn per step beyond prompts_per_step, over all processes; 0: no refill


@dataclass
class RewardPhase:
    """One phase of a reward curriculum (RewardMap): from `start` on, the named tasks' reward weights are these
    (mmreason.train.reward_schedule)."""

    start: float = 0.0  # where it begins: below 1 a share of the stage's steps (0.5: halfway), else a step number
    stage: int | None = None  # only in this stage: its 0-based position in `stages` (None: every GRPO stage)
    rewards: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> reward name -> weight


@dataclass
class BudgetConfig:
    """Reasoning budgets (AdaCtrl): the policy opens its thinking with a difficulty tag and keeps its thinking within
    that level's budget; rewards `budget_length` and `budget_difficulty` (mmreason.data.budget, rewards.budget)."""

    enabled: bool = False  # ask for the tags in every prompt and add the two budget rewards to every task
    levels: dict[str, int] = field(default_factory=lambda: {"easy": 32, "hard": 256})  # level -> words, easiest first
    force: str | None = None  # a level every prompt names instead of asking for an estimate (set at inference)
    length_weight: float = 0.5  # weight of budget_length in every task's total reward
    difficulty_weight: float = 0.5  # weight of budget_difficulty (the tag names the prompt's true level)


@dataclass
class StopAt:
    """End a stage early, at the first of its periodic held-out evaluations (`eval_every`) where `metric` reaches a
    target: at_least (a metric where higher is better) or at_most (lower is better). A cold start stopped at a
    held-out target leaves every seed at the same point, however fast each one learns (`mmreason.train.early_stop`).
    """

    metric: str | None = None  # "<task>/<metric>" as the evaluations log it, e.g. grounding/mean_iou; null: off
    at_least: float | None = None  # stop once the metric is >= this
    at_most: float | None = None  # or once it is <= this

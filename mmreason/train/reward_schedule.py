"""Reward curricula (RewardMap: dense partial-credit rewards early, sparse exact-match rewards later): the one place
that decides a task's reward weights at a GRPO step.

A step's weights are the configured ones (a data entry's `rewards`, else the task's defaults), then every phase of
`grpo.reward_schedule` that has begun by that step, in the order they are listed (later phases win): a phase sets the
weights it names for the tasks it names (weight 0 turns a reward off; a name the task does not have adds it;
`format` means `format_nothink` in an answer-only run). A phase
begins at `start`: below 1 a share of the stage's steps (0.5 = halfway), from 1 on a step number (1 = the first
step); `stage` limits it to one stage of `stages` (its 0-based position, as in the run folder's `s01-grpo`).

Held-out evaluations score with the configured weights, so their totals stay comparable across the run.
"""

from __future__ import annotations

import math

from mmreason.config import ConfigError, RewardPhase, RunConfig


def phase_started(phase: RewardPhase, stage_index: int, step: int, steps: int) -> bool:
    """Whether the phase applies at 0-based `step` of the stage at `stage_index` (of `steps` steps)."""
    if phase.stage is not None and phase.stage != stage_index:
        return False
    if phase.start >= 1:
        return step + 1 >= phase.start
    return step >= math.ceil(phase.start * steps - 1e-9)


def styled(name: str, think: bool) -> str:
    """A phase's reward name in the run's prompt style: `format` is `format_nothink` in answer-only runs, as a task's
    default weights swap it (`Task.reward_weights`), so `{format: 0}` turns the format credit off in either style."""
    return "format_nothink" if name == "format" and not think else name


def scheduled_weights(
    base: dict[str, float],
    task: str,
    schedule: list[RewardPhase],
    stage_index: int,
    step: int,
    steps: int,
    think: bool = True,
) -> dict[str, float]:
    """`base` (the task's configured weights) with every begun phase's weights for `task` laid over it in order."""
    weights = dict(base)
    for phase in schedule:
        if task in phase.rewards and phase_started(phase, stage_index, step, steps):
            weights.update({styled(name, think): w for name, w in phase.rewards[task].items()})
    return weights


def scheduled_reward_names(cfg: RunConfig) -> set[str]:
    """Every reward name a phase of the schedule uses (the rollout store keeps a column for each from the start)."""
    return {styled(name, cfg.think) for phase in cfg.grpo.reward_schedule for weights in phase.rewards.values()
            for name in weights}


def check_schedule(cfg: RunConfig) -> None:
    """ConfigError naming the phase for a task no data entry trains or a stage that is not a GRPO stage."""
    tasks = {d.task for d in cfg.data}
    for i, phase in enumerate(cfg.grpo.reward_schedule):
        where = f"grpo.reward_schedule[{i}]"
        unknown = sorted(set(phase.rewards) - tasks)
        if unknown:
            raise ConfigError(f"{where}.rewards names task(s) {', '.join(unknown)} that no data entry trains; "
                              f"the run's tasks: {', '.join(sorted(tasks))}")
        if phase.stage is not None and not (0 <= phase.stage < len(cfg.stages) and cfg.stages[phase.stage] == "grpo"):
            grpo = [str(k) for k, s in enumerate(cfg.stages) if s == "grpo"]
            raise ConfigError(f"{where}.stage must be the position of a grpo stage in `stages` (0-based): "
                              f"{', '.join(grpo) or 'none'}; got {phase.stage}")

"""Reasoning budgets in the prompt and in SFT targets (AdaCtrl): what the `budget` config adds to a sample.

With a `Budget`, every sample's user text asks the policy to open its thinking with a difficulty tag and to keep its
thinking within that level's budget (or, with `force`, names the level the user chose: inference-time control), and
the sample gets the columns the budget rewards read (`mmreason.rewards.budget`, which owns the tag syntax and the
word count): `budget_words`, `budget_tag` (the forced level) and `difficulty_label` (the record's own level). An SFT
target of a record whose level is known (its `difficulty` field, or the forced level) opens its thinking with the
tag, so the cold start teaches the layout.

A record's `difficulty` is a level name (`easy`, any case) or a number in [0, 1] (0 easiest), which falls into level
ceil(d * n) - 1 of the n levels (`rewards.budget.level_for_difficulty`); anything else leaves its level unknown (the
pass rate decides during GRPO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mmreason.data.sample import Sample, with_user_text
from mmreason.rewards.budget import format_tag, level_for_difficulty

THINK_OPEN = "<think>"


@dataclass(frozen=True)
class Budget:
    """Levels of thinking, easiest first, each with its budget in words; `force`: the level every prompt names."""

    levels: dict[str, int] = field(default_factory=lambda: {"easy": 32, "hard": 256})
    force: str | None = None


def record_level(record: dict[str, Any], levels: list[str]) -> str | None:
    """The level of a record's `difficulty` field (module doc), or None."""
    value = record.get("difficulty")
    if isinstance(value, str) and value.strip().lower() in levels:
        return value.strip().lower()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1:
        return level_for_difficulty(levels, float(value))
    return None


def budget_instruction(budget: Budget) -> str:
    """The sentence added to the user text."""
    if budget.force:
        return (f" Begin your thinking with {format_tag(budget.force)} and think in at most "
                f"{budget.levels[budget.force]} words.")
    tags = ", ".join(format_tag(level) for level in budget.levels)
    limits = ", ".join(f"{format_tag(level)} at most {words} words" for level, words in budget.levels.items())
    return (f" Begin your thinking with your estimate of the problem's difficulty, one of {tags}, and keep your "
            f"thinking within its budget: {limits}.")


def apply_budget(sample: Sample, record: dict[str, Any], budget: Budget | None) -> Sample:
    """The sample with the budget's instruction, columns and tagged SFT target (module doc); unchanged without one."""
    if budget is None:
        return sample
    levels = list(budget.levels)
    label = record_level(record, levels)
    sample.messages = with_user_text(sample.messages, budget_instruction(budget))
    sample.columns.update(budget_words=dict(budget.levels), budget_tag=budget.force, difficulty_label=label)
    level = budget.force or label
    if level and sample.target and sample.target.lstrip().startswith(THINK_OPEN):
        head, rest = sample.target.split(THINK_OPEN, 1)
        sample.target = f"{head}{THINK_OPEN}{format_tag(level)} {rest.lstrip()}"
    return sample

"""Reasoning budgets (AdaCtrl): the difficulty tag a completion opens its thinking with, the length of that thinking,
and the two rewards that train a policy to assess difficulty and keep to the budget its assessment sets.

Layout: the think part starts with one tag in square brackets naming a budget level, e.g.
`<think>[Easy] 2 + 2 is 4.</think><answer>4</answer>`. Levels are ordered from the easiest to the hardest and each
has a budget in words of thinking (the `budget_words` column, e.g. {"easy": 32, "hard": 256}); words are
whitespace-separated pieces of the think part after the tag, a measure every tokenizer agrees on.

`budget_length`: how well the thinking keeps to the budget of its level: 1.0 within the budget, then linearly down to
0.0 at twice the budget. The level is the one the prompt forced (`budget_tag` column: a user set the budget), else the
completion's own tag; no tag, an unknown level, or no think part -> 0.0 (a policy must not dodge the budget by
leaving the tag out).

`budget_difficulty`: whether the completion's tag names the prompt's true level: the record's `difficulty_label`
when the data gives one, else the level its tracked pass rate puts it at (`prompt_pass_rate`: difficulty 1 - pass
rate falls into level ceil(d * n) - 1 of n, so with two a prompt solved half the time or more is easy). 1.0 or 0.0;
None (not applicable) when neither is known, e.g. a prompt's first draw.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_think, score_each

_TAG_RE = re.compile(r"^\s*\[([A-Za-z][\w -]{0,30})\]")


def format_tag(level: str) -> str:
    """The tag text of a level: `[Easy]`."""
    return f"[{level[:1].upper()}{level[1:]}]"


def parse_tag(completion: str) -> str | None:
    """The level named by the tag that opens the think part, lower-cased; None without one."""
    think = extract_think(completion)
    m = None if think is None else _TAG_RE.match(think)
    return None if m is None else m.group(1).strip().lower()


def think_words(completion: str) -> int | None:
    """Words of thinking after the tag; None when there is no think part."""
    think = extract_think(completion)
    if think is None:
        return None
    return len(_TAG_RE.sub("", think, count=1).split())


def check_budgets(value: Any, name: str = "budget_words") -> dict[str, int]:
    """Level -> words, easiest first: a non-empty mapping of names to whole numbers >= 1, else ColumnError."""
    ok = isinstance(value, dict) and value and all(
        isinstance(k, str) and k.strip() and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in value.items())
    if not ok:
        raise ColumnError(f"column {name!r} must map level names to word budgets >= 1, e.g. {{'easy': 32, "
                          f"'hard': 256}}; got {value!r}")
    return {k.strip().lower(): int(v) for k, v in value.items()}


def level_for_difficulty(levels: Sequence[str], difficulty: float) -> str:
    """The level of a difficulty in [0, 1] (0 easiest): ceil(d * n) - 1 of n levels (at least the first), so with
    two levels up to 0.5 is the easy one."""
    clipped = min(1.0, max(0.0, difficulty))  # a pass rate outside [0, 1] (bad input) must not overflow ceil
    index = min(len(levels) - 1, max(0, math.ceil(clipped * len(levels)) - 1))
    return levels[index]


def length_score(completion: str, budget_words: Any, budget_tag: str | None = None) -> float:
    budgets = check_budgets(budget_words)
    level = (budget_tag or parse_tag(completion) or "").lower()
    words = think_words(completion)
    if level not in budgets or words is None:
        return 0.0
    budget = budgets[level]
    return max(0.0, min(1.0, 1.0 - (words - budget) / budget))


def difficulty_score(completion: str, budget_words: Any, difficulty_label: str | None = None,
                     prompt_pass_rate: float | None = None) -> float | None:
    levels = list(check_budgets(budget_words))
    if isinstance(difficulty_label, str) and difficulty_label.strip():
        truth = difficulty_label.strip().lower()
    elif isinstance(prompt_pass_rate, int | float) and math.isfinite(prompt_pass_rate):
        truth = level_for_difficulty(levels, 1.0 - float(prompt_pass_rate))
    else:
        return None
    return 1.0 if parse_tag(completion) == truth else 0.0


@register_reward("budget_length")
def budget_length_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Keeping to the level's budget of thinking (module doc); columns budget_words, budget_tag?."""
    return score_each("budget_length", completions, columns, length_score, required=("budget_words",),
                      optional={"budget_tag": None})


@register_reward("budget_difficulty")
def budget_difficulty_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The tag names the prompt's true level (module doc); columns budget_words, difficulty_label?,
    prompt_pass_rate?."""
    out: list[float | None] = []
    rows = score_each("budget_difficulty", completions, columns, _difficulty_or_nan, required=("budget_words",),
                      optional={"difficulty_label": None, "prompt_pass_rate": None})
    for value in rows:
        out.append(None if value is None or math.isnan(value) else value)
    return out


def _difficulty_or_nan(completion: str, **row: Any) -> float:
    score = difficulty_score(completion, **row)
    return math.nan if score is None else score

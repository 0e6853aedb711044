"""Counting reward `count_match`: is the answered count exactly the true one.

Column `solution`: the count (int, or an integral float / numeric string such as "3"). The answer is read by
`parse_int` (digits, "three", "3 apples"; "none"/"no"/"zero" alone = 0; several different numbers, decimals and
overflowing values score 0). Exact match only: 1.0 or 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_answer, parse_int, score_each


def check_count(value: Any, name: str = "solution") -> int:
    """A non-negative integer count from a column value, else ColumnError."""
    if isinstance(value, str):
        parsed = parse_int(value)
        value = parsed if parsed is not None else value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ColumnError(f"{name}: expected a non-negative integer count, got {value!r}")


def predicted_count(completion: str) -> int | None:
    """The count in the completion's answer tag, or None."""
    answer = extract_answer(completion)
    return None if answer is None else parse_int(answer)


def count_score(completion: str, solution: Any) -> float:
    """1.0 when the answered count equals the true count, else 0.0."""
    truth = check_count(solution)
    return 1.0 if predicted_count(completion) == truth else 0.0


@register_reward("count_match")
def count_match_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`count_score` per completion. Column: solution (int)."""
    return score_each("count_match", completions, columns, count_score)

"""Counting: the whole-number answer type's ground-truth check, gold-answer formatter and reward `count_match`
(is the answered count exactly the true one). The answer parser is the generic `parse_int`.

Ground truth (`check_count`, the one rule for reward columns and for the counting task's records): a whole number
>= 0 and at most MAX_COUNT (no picture holds more: `1e300` is a data error) given as an int, an integral float (3.0)
or a string of digits ("3"). Number words and prose ("three",
"3 apples") are answers, not ground truth. The answer is read by `parse_int` (digits, "three", "3 apples";
"none"/"no"/"zero" alone = 0; several different numbers, decimals and overflowing values score 0). Exact match only:
1.0 or 0.0.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import bad_value, extract_answer, parse_int, score_each

MAX_COUNT = 1_000_000
COUNT_EXPECTED = f"a whole number >= 0 and <= {MAX_COUNT:,} (an int, an integral float or a string of digits)"


def check_count(value: Any, name: str = "solution") -> int:
    """A non-negative whole number from a value (see the module doc), else ColumnError."""
    count = None
    if isinstance(value, str):
        digits = unicodedata.normalize("NFKC", value).strip()
        count = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 20 else None
    elif isinstance(value, bool):
        count = None
    elif isinstance(value, numbers.Integral):
        count = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        count = int(value)
    if count is None or count < 0 or count > MAX_COUNT:
        raise bad_value(name, COUNT_EXPECTED, value)
    return count


def format_count(count: int) -> str:
    """Answer text for a count: its digits ("3"), which `parse_int` reads back."""
    return str(int(count))


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

"""Multiple-choice reward `choice_match`: is the answered option letter the true one.

Column `solution`: the letter ("B"; "(B)" and "b" are accepted too); optional column `options` (the option texts,
A first). The answer is read by `parse_choice` ("B", "(B)", "B. Paris", "Answer: B"; with options, a letter past
the last option is wrong and an answer equal to exactly one option's text selects that option). 1.0 or 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_answer, parse_choice, score_each


def check_letter(value: Any, name: str = "solution") -> str:
    """The upper-case option letter of a column value ("B", "(b)"), else ColumnError."""
    letter = parse_choice(value) if isinstance(value, str) and len(value) <= 5 else None
    if letter is None:
        raise ColumnError(f"{name}: expected an option letter A-Z such as 'B', got {value!r}")
    return letter


def _check_options(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ColumnError(f"options: expected a list of option strings or None, got {value!r}")


def predicted_choice(completion: str, options: Sequence[str] | None = None) -> str | None:
    """The letter in the completion's answer tag, or None."""
    answer = extract_answer(completion)
    return None if answer is None else parse_choice(answer, options)


def choice_score(completion: str, solution: Any, options: Any = None) -> float:
    """1.0 when the answered letter is the true one, else 0.0."""
    truth, opts = check_letter(solution), _check_options(options)
    return 1.0 if predicted_choice(completion, opts) == truth else 0.0


@register_reward("choice_match")
def choice_match_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`choice_score` per completion. Columns: solution (letter), options (optional)."""
    return score_each("choice_match", completions, columns, choice_score, optional={"options": None})

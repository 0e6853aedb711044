"""Format: the answer layout's checks, its gold formatter (`format_completion`, the layout of every SFT target) and
the rewards that ask whether a completion follows the layout the prompt asked for (1.0) or not (0.0).

`format`: exactly one `<think>...</think>` followed by exactly one `<answer>...</answer>`; whitespace is allowed
before, between and after them and nothing else. The think part may be empty (the SFT target of a record without
gold reasoning is `<think></think><answer>...</answer>`); the answer must hold non-blank text.
`format_nothink` (the CLS-RL no-thinking style): exactly one `<answer>...</answer>` with non-blank content,
surrounded by whitespace only, and no think tags anywhere.

Both also take an optional `answer_valid` column (one bool per completion): where it is given and false, the layout
earns nothing. A run fills it from the task (`Task.valid_answer`: the answer parses as a valid answer of the task,
e.g. boxes inside the image, a permutation of the tiles, a letter among the options), as VLM-R1's grounding format
reward asks for the box JSON: otherwise a policy can collect the format reward with `<answer>]</answer>` and never
answer at all.

Both are checked with string operations rather than a regex with two lazy groups, which is quadratic on a long
completion full of tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import score_each

_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
_TAGS = (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)


def _answer_part_ok(part: str) -> bool:
    """`part` is exactly `<answer>X</answer>` with X non-blank (tag counts are checked by the callers)."""
    return (
        part.startswith(_ANSWER_OPEN)
        and part.endswith(_ANSWER_CLOSE)
        and len(part) >= len(_ANSWER_OPEN) + len(_ANSWER_CLOSE)
        and part[len(_ANSWER_OPEN) : -len(_ANSWER_CLOSE)].strip() != ""
    )


def has_think_answer_format(text: str) -> bool:
    """True iff `text` is `<think>...</think>` then `<answer>...</answer>` (whitespace around/between only)."""
    if not isinstance(text, str):
        return False
    t = text.strip()
    if any(t.count(tag) != 1 for tag in _TAGS) or not t.startswith(_THINK_OPEN):
        return False
    think_end = t.index(_THINK_CLOSE) + len(_THINK_CLOSE)
    return _answer_part_ok(t[think_end:].lstrip())


def has_answer_only_format(text: str) -> bool:
    """True iff `text` is exactly one `<answer>...</answer>` with whitespace around it and no think tags."""
    if not isinstance(text, str):
        return False
    t = text.strip()
    if t.count(_ANSWER_OPEN) != 1 or t.count(_ANSWER_CLOSE) != 1 or _THINK_OPEN in t or _THINK_CLOSE in t:
        return False
    return _answer_part_ok(t)


def format_completion(answer: str, think: bool = True, reasoning: str = "") -> str:
    """The completion in the layout the `format` (think=True) or `format_nothink` reward asks for, around `answer`:
    `<think>{reasoning}</think><answer>{answer}</answer>`, or `<answer>{answer}</answer>`."""
    if think:
        return f"{_THINK_OPEN}{reasoning}{_THINK_CLOSE}{_ANSWER_OPEN}{answer}{_ANSWER_CLOSE}"
    return f"{_ANSWER_OPEN}{answer}{_ANSWER_CLOSE}"


def _think_score(text: str, answer_valid: bool = True) -> float:
    return 1.0 if answer_valid and has_think_answer_format(text) else 0.0


def _nothink_score(text: str, answer_valid: bool = True) -> float:
    return 1.0 if answer_valid and has_answer_only_format(text) else 0.0


_VALIDITY = {"answer_valid": True}  # the optional column and its default (no column: the layout alone decides)


@register_reward("format")
def format_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 when the completion is `<think>...</think><answer>...</answer>` (see module doc) and its answer is valid
    (the optional `answer_valid` column), else 0.0. Other columns are ignored."""
    return score_each("format", completions, columns, _think_score, required=(), optional=_VALIDITY)


@register_reward("format_nothink")
def format_nothink_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 when the completion is exactly one `<answer>...</answer>` and nothing else and its answer is valid (the
    optional `answer_valid` column), else 0.0. Other columns are ignored."""
    return score_each("format_nothink", completions, columns, _nothink_score, required=(), optional=_VALIDITY)

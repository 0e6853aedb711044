"""Jigsaw tile orders: the answer type's parser, ground-truth check and gold-answer formatter, and the rewards
`jigsaw_exact` (is the predicted order right) and `jigsaw_fraction` (how much of it is).

Column `solution`: the 1-based answer order, row-major: solution[i] is the ORIGINAL position (1-based) of the tile
shown at position i of the shuffled image (`mmreason.processors.make_jigsaw` order + 1). It must be a permutation
of 1..n (a grid of rows [[3, 1], [4, 2]] is flattened row-major), as `check_order` checks for reward columns and
for the jigsaw task's records alike (there n is the grid's tile count).

Answer text: "[3, 1, 4, 2]", "3 1 4 2", "3,1,4,2" or a grid of rows (see `parse_order`), 1-based.

Only a valid answer earns anything: an order that is not a permutation of 1..n (no answer tag, not a list of
integers, a length other than n, a repeated or out-of-range value, a 0-based answer) scores 0.0 on both rewards, so
a constant list such as [1, 1, 1, 1] earns no "fraction" credit for the one position it happens to get right.
`jigsaw_fraction` = (# positions i with pred[i] == solution[i]) / n for a permutation `pred`, in [0, 1]; the
solution itself scores 1.0.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import bad_value, extract_answer, list_from_text, loads_or_none, score_each, strip_code_fence


def check_order(value: Any, name: str = "solution", n: int | None = None) -> list[int]:
    """A 1-based permutation of 1..n from a value (flat list or grid of rows), else ColumnError.

    With `n` (the tile count of a record's grid) the permutation must have exactly n entries.
    """
    value = list_from_text(value)
    flat: list[Any] = []
    if isinstance(value, (list, tuple)):
        for item in value:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
    ints = [v for v in flat if isinstance(v, int) and not isinstance(v, bool)]
    size = len(ints) if n is None else n
    if not flat or len(ints) != len(flat) or sorted(ints) != list(range(1, size + 1)):
        shown = "n" if n is None else str(n)
        raise bad_value(name, f"a permutation of 1..{shown} (1-based tile order, one entry per tile)", value)
    return ints


def is_permutation(pred: Sequence[int] | None, n: int) -> bool:
    """True when `pred` is a permutation of 1..n (a valid answer to an n-tile puzzle)."""
    return pred is not None and n > 0 and sorted(pred) == list(range(1, n + 1))


def order_fraction(pred: Sequence[int] | None, solution: Sequence[int]) -> float:
    """Fraction of positions where `pred` equals `solution`; 0.0 when `pred` is not a permutation of 1..n."""
    if not is_permutation(pred, len(solution)):
        return 0.0
    return sum(p == s for p, s in zip(pred, solution, strict=True)) / len(solution)


def order_exact(pred: Sequence[int] | None, solution: Sequence[int]) -> float:
    """1.0 when `pred` equals `solution` exactly, else 0.0."""
    return 1.0 if pred is not None and list(pred) == list(solution) else 0.0


_ORDER_CHARS_RE = re.compile(r"[\d\s,;]*")
_DIGITS_RE = re.compile(r"\d+")


def parse_order(text: str) -> list[int] | None:
    """A list of non-negative integers: "[3, 1, 4, 2]", "3 1 4 2", "3,1,4,2", "(3; 1; 4; 2)", or a JSON grid of
    rows "[[3, 1], [4, 2]]" (flattened row-major). Anything else in the text (words, signs, decimals, a number with
    more than 9 digits) -> None. Whether the list is a valid permutation is the caller's business.
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", strip_code_fence(text)).strip().rstrip(".").strip()
    if body.startswith("["):
        parsed = loads_or_none(body)
        if isinstance(parsed, list):
            return _flat_ints(parsed)
    inner = body.strip("[](){} \t\r\n")
    if not inner or _ORDER_CHARS_RE.fullmatch(inner) is None:
        return None
    runs = _DIGITS_RE.findall(inner)
    if not runs or any(len(r) > 9 for r in runs):
        return None
    return [int(r) for r in runs]


def _flat_ints(items: list[Any]) -> list[int] | None:
    flat: list[Any] = []
    for item in items:
        flat.extend(item if isinstance(item, list) else [item])
    if not flat or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**9 for v in flat):
        return None
    return flat


def predicted_order(completion: str) -> list[int] | None:
    """The order in the completion's answer tag, or None when there is none."""
    answer = extract_answer(completion)
    return None if answer is None else parse_order(answer)


def jigsaw_exact_score(completion: str, solution: Any) -> float:
    return order_exact(predicted_order(completion), check_order(solution))


def jigsaw_fraction_score(completion: str, solution: Any) -> float:
    return order_fraction(predicted_order(completion), check_order(solution))


def format_order(order: Sequence[int]) -> str:
    """Answer text for an order: "[3, 1, 4, 2]" (what `parse_order` reads back)."""
    return "[" + ", ".join(str(int(v)) for v in order) + "]"


@register_reward("jigsaw_exact")
def jigsaw_exact_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 for exactly the right tile order, else 0.0. Column: solution (1-based order)."""
    return score_each("jigsaw_exact", completions, columns, jigsaw_exact_score)


@register_reward("jigsaw_fraction")
def jigsaw_fraction_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Fraction of tiles in the right position (module doc has the malformed-order rules). Column: solution."""
    return score_each("jigsaw_fraction", completions, columns, jigsaw_fraction_score)

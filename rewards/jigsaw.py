"""Jigsaw rewards: is the predicted tile order right (`jigsaw_exact`), and how much of it (`jigsaw_fraction`).

Column `solution`: the 1-based answer order, row-major: solution[i] is the ORIGINAL position (1-based) of the tile
shown at position i of the shuffled image (`mmreason.processors.make_jigsaw` order + 1). It must be a permutation
of 1..n (a grid of rows [[3, 1], [4, 2]] is flattened row-major).

Answer text: "[3, 1, 4, 2]", "3 1 4 2", "3,1,4,2" or a grid of rows (see `parse_order`), 1-based.

Scoring of malformed orders (documented partial credit):
- no answer tag, or an answer that is not a list of integers -> 0.0 for both rewards;
- a list whose length differs from n -> 0.0 for both (positions no longer correspond to tiles);
- right length with repeats or out-of-range values (0-based answers included) -> `jigsaw_exact` 0.0;
  `jigsaw_fraction` still counts the positions holding the right tile. That cannot beat a valid permutation:
  correct positions always hold distinct values, so any set of them extends to a permutation scoring the same.
`jigsaw_fraction` = (# positions i with pred[i] == solution[i]) / n, in [0, 1]; the identity of the solution
scores 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_answer, parse_order, score_each


def check_order(value: Any, name: str = "solution") -> list[int]:
    """A 1-based permutation of 1..n from a column value (flat list or grid of rows), else ColumnError."""
    flat: list[Any] = []
    if isinstance(value, (list, tuple)):
        for item in value:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
    ints = [v for v in flat if isinstance(v, int) and not isinstance(v, bool)]
    if not flat or len(ints) != len(flat) or sorted(ints) != list(range(1, len(ints) + 1)):
        raise ColumnError(f"{name}: expected a permutation of 1..n (1-based tile order), got {value!r}")
    return ints


def order_fraction(pred: Sequence[int] | None, solution: Sequence[int]) -> float:
    """Fraction of positions where `pred` equals `solution`; 0.0 for None or a length mismatch."""
    if pred is None or len(pred) != len(solution) or not solution:
        return 0.0
    return sum(p == s for p, s in zip(pred, solution, strict=True)) / len(solution)


def order_exact(pred: Sequence[int] | None, solution: Sequence[int]) -> float:
    """1.0 when `pred` equals `solution` exactly, else 0.0."""
    return 1.0 if pred is not None and list(pred) == list(solution) else 0.0


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

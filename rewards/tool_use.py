"""Trajectory rewards for multi-turn tool use (columns filled by mmreason.rollout.multiturn, None on single-turn rows).

- `tool_success`: 1.0 when the trajectory made at least one successful tool call, else 0.0 (a bonus for using
  the tools; weight it small so it cannot outweigh the answer).
- `tool_discipline`: 1.0 when no call was malformed or failed and the turn budget was respected, else 0.0 (the
  penalty for bad calls or for exceeding the budget is the 1.0 it forgoes).
Rows without trajectory columns (tool_calls is None) score None: not applicable.
"""

from __future__ import annotations

from typing import Any

from mmreason.registry import register_reward


def _rows(completions: list[str], column: list[Any] | None) -> list[Any]:
    return list(column) if column is not None else [None] * len(completions)


@register_reward("tool_success")
def tool_success(completions: list[str], tool_calls: list[int | None] | None = None, **_: Any) -> list[float | None]:
    return [None if n is None else float(int(n) >= 1) for n in _rows(completions, tool_calls)]


@register_reward("tool_discipline")
def tool_discipline(
    completions: list[str],
    tool_errors: list[int | None] | None = None,
    budget_exceeded: list[bool | None] | None = None,
    **_: Any,
) -> list[float | None]:
    errors, exceeded = _rows(completions, tool_errors), _rows(completions, budget_exceeded)
    return [None if e is None else float(int(e) == 0 and not x) for e, x in zip(errors, exceeded, strict=True)]

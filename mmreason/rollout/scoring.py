"""Calling a task's rewards on a batch of completions: per-completion columns, isolation of failing reward
functions, and the weighted total.

A reward function that raises does not stop a run: its scores are recorded as missing (None), the error is
counted and logged once per (reward, error type), unless `strict` is set.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mmreason.data.sample import Sample
from mmreason.registry import resolve_reward

log = logging.getLogger(__name__)


@dataclass
class RewardErrors:
    """Counts of reward-function failures by (reward, exception type); each kind is logged once."""

    counts: Counter = field(default_factory=Counter)

    def record(self, name: str, exc: Exception) -> None:
        key = (name, type(exc).__name__)
        if key not in self.counts:
            log.warning("reward %r raised %s: %s (scores recorded as missing; logged once)", name, key[1], exc)
        self.counts[key] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def state_dict(self) -> list[list]:
        """[[reward, error type, count], ...] (JSON) for checkpoints, so a resumed run keeps counting."""
        return [[name, kind, n] for (name, kind), n in sorted(self.counts.items())]

    def load_state_dict(self, state: list[list]) -> None:
        """Continue from saved counts; kinds already seen are not logged again."""
        self.counts = Counter({(name, kind): int(n) for name, kind, n in state})


def expand_columns(samples: list[Sample], group_size: int) -> dict[str, list]:
    """Per-sample answer columns -> per-completion lists (each sample's value repeated group_size times)."""
    keys = sorted({k for s in samples for k in s.columns})
    return {k: [s.columns.get(k) for s in samples for _ in range(group_size)] for k in keys}


def _clean(score: object) -> float | None:
    if score is None:
        return None
    value = float(score)  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def call_reward(
    name: str,
    fn: Callable[..., list],
    completions: list[str],
    columns: dict[str, list],
    errors: RewardErrors,
    strict: bool = False,
) -> list[float | None]:
    """One reward over all completions; a raising or malformed reward yields Nones (or raises when strict)."""
    try:
        scores = fn(completions, **columns)
        if len(scores) != len(completions):
            raise ValueError(f"returned {len(scores)} scores for {len(completions)} completions")
        return [_clean(s) for s in scores]
    except Exception as exc:
        if strict:
            raise RuntimeError(f"reward {name!r} failed: {exc}") from exc
        errors.record(name, exc)
        return [None] * len(completions)


def score_completions(
    weights: dict[str, float],
    samples: list[Sample],
    completions: list[str],
    group_size: int,
    errors: RewardErrors,
    strict: bool = False,
    extra_columns: dict[str, list] | None = None,
) -> tuple[dict[str, list[float | None]], list[float]]:
    """All named rewards and their weighted total (a missing score contributes 0) for B = len(samples) * G.

    extra_columns: per-completion columns that are not the sample's (e.g. a trajectory's tool-call counts).
    """
    columns = {**expand_columns(samples, group_size), **(extra_columns or {})}
    named = {name: call_reward(name, resolve_reward(name), completions, columns, errors, strict) for name in weights}
    total = [sum(w * (named[n][i] or 0.0) for n, w in weights.items()) for i in range(len(completions))]
    return named, total

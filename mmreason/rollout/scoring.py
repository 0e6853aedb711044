"""Calling a task's rewards on a batch of completions: per-completion columns, the shape each reward takes,
isolation of failing reward functions, and the weighted total.

Shapes (registry.REWARD_SHAPES): mmreason's `fn(completions: list[str], **columns)`, or TRL GRPOTrainer's keyword
call (`prompts`, `completions`, `completion_ids`, `trainer_state`, `log_extra`, `log_metric` and the columns) with
plain strings or conversational message lists. A reward's shape is declared (`register_reward(..., shape=)` or a
`reward_shape` attribute) or decided on its first call and kept for the process: see `shaped_call`.

A reward function that raises does not stop a run: its scores are recorded as missing (None), the error is
counted and logged once per (reward, error type), unless `strict` is set. A reward that raises on its first call
in a GRPO stage of this process (`first_call_fatal`) never scored anything: the run stops with a RewardError.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmreason.config import ConfigError
from mmreason.data.sample import Sample
from mmreason.registry import REWARD_SHAPES, resolve_reward
from mmreason.tasks.base import answer_validity

log = logging.getLogger(__name__)

# keywords TRL's GRPOTrainer passes to a reward besides `completions` and the dataset columns (TRL 1.16)
TRL_KEYWORDS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric")
# what treating a string as a message list raises: c[0]["content"], c[-1].get("content"), ""[0], m["content"]
_SHAPE_ERRORS = (TypeError, KeyError, AttributeError, IndexError)
# id(fn) -> (fn, shape) decided on a reward's first call; fn is kept so its id cannot be reused
_detected: dict[int, tuple[Callable[..., Any], str]] = {}
_FAILED = object()


class RewardError(ConfigError):
    """A reward that cannot score at all (it does not fit the reward contract); like a config error, the CLI shows
    it as one `error:` line and exits with code 2."""


@dataclass(frozen=True)
class StepState:
    """What a TRL-style reward may read from `trainer_state` to shape itself by progress."""

    global_step: int  # updates done so far in the stage
    max_steps: int


@dataclass
class TrlInputs:
    """Per-completion inputs a TRL-style reward may take as keywords (None where the caller has none)."""

    prompts: list[list[dict[str, Any]]] | None = None  # each completion's prompt as chat messages
    completion_ids: list[list[int]] | None = None
    trainer_state: StepState | None = None


@dataclass
class RewardErrors:
    """Counts of reward-function failures by (reward, exception type); each kind is logged once."""

    counts: Counter = field(default_factory=Counter)
    # rewards whose first call under first_call_fatal happened in this process (not saved: a resumed run checks too)
    first_called: set[str] = field(default_factory=set)

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


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature
        return None


def _accepted(fn: Callable[..., Any], keywords: dict[str, Any]) -> dict[str, Any]:
    """The TRL keywords `fn` can take: all of them with **kwargs (or no readable signature), else those it names."""
    params = _parameters(fn)
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params):
        return keywords
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in keywords.items() if k in named}


def names_trl_keyword(fn: Callable[..., Any]) -> bool:
    """Whether `fn`'s signature names a keyword only TRL passes (prompts, completion_ids, trainer_state, ...)."""
    return any(p.name in TRL_KEYWORDS for p in _parameters(fn) or [])


def _messages_text(messages: list[dict[str, Any]]) -> str:
    """A chat prompt as plain text (its text parts joined), for rewards that take TRL's non-conversational shape."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif content:
            parts.extend(c.get("text", "") for c in content if c.get("type") == "text")
    return "\n".join(p for p in parts if p)


def _ignore(*args: Any, **kwargs: Any) -> None:
    """TRL's log_extra / log_metric: accepted so TRL rewards run; mmreason logs every reward's scores itself."""


def call_shape(
    fn: Callable[..., Any], shape: str, completions: list[str], columns: dict[str, list], trl: TrlInputs
) -> Any:
    """Call `fn` in one shape: "text" positionally as `fn(completions, **columns)`, the TRL shapes by keyword."""
    if shape == "text":
        return fn(completions, **columns)
    conversational = shape == "trl_messages"
    prompts = trl.prompts
    if prompts is not None and not conversational:
        prompts = [_messages_text(p) for p in prompts]
    texts: list[Any] = completions
    if conversational:
        texts = [[{"role": "assistant", "content": c}] for c in completions]
    extras = {
        "prompts": prompts,
        "completion_ids": trl.completion_ids,
        "trainer_state": trl.trainer_state,
        "log_extra": _ignore,
        "log_metric": _ignore,
    }
    return fn(**{**columns, **_accepted(fn, extras), "completions": texts})


def reward_shape(fn: Callable[..., Any]) -> str | None:
    """`fn`'s declared shape, else the one decided on its first call in this process (None: not called yet)."""
    declared = getattr(fn, "reward_shape", None)
    if declared is not None:
        if declared not in REWARD_SHAPES:
            raise RewardError(f"reward_shape must be one of {', '.join(REWARD_SHAPES)}, got {declared!r}")
        return declared
    seen = _detected.get(id(fn))
    return seen[1] if seen is not None else None


def shaped_call(
    name: str, fn: Callable[..., Any], completions: list[str], columns: dict[str, list], trl: TrlInputs
) -> Any:
    """Call a reward in its shape, deciding the shape on the first call when it is not declared.

    The first try is "trl_text" when the signature names a TRL keyword, else "text". If it raises a TypeError,
    KeyError, AttributeError or IndexError (what indexing a string as a message list raises), the call is retried
    once as "trl_messages"; if that fails too the first try's error is raised. The shape that ran (else the first
    try's) is kept for the function, so later calls never retry and a genuine bug is not hidden.
    """
    shape = reward_shape(fn)
    if shape is not None:
        return call_shape(fn, shape, completions, columns, trl)
    first = "trl_text" if names_trl_keyword(fn) else "text"
    _detected[id(fn)] = (fn, first)
    try:
        return call_shape(fn, first, completions, columns, trl)
    except _SHAPE_ERRORS as exc:
        original = exc
    try:
        scores = call_shape(fn, "trl_messages", completions, columns, trl)
    except Exception:
        scores = _FAILED
    if scores is _FAILED:  # raised outside the handler: the first try's error, not chained to the retry's
        raise original
    _detected[id(fn)] = (fn, "trl_messages")
    log.warning("reward %r takes TRL-style conversational completions (lists of messages)", name)
    return scores


def first_failure_message(name: str, exc: Exception, columns: dict[str, list]) -> str:
    """One line for a reward that raised on its first call: which reward, the error, and the contract."""
    names = ", ".join(sorted(columns)) or "(none)"
    return (
        f"reward {name!r} raised on its first call, so no completion got a score and training would go on without "
        f"it: {type(exc).__name__}: {exc}. A reward must take completions as a list of strings (or TRL-style "
        f"message lists) and keyword columns: {names} (TRL-style rewards also get {', '.join(TRL_KEYWORDS)})."
    )


def call_reward(
    name: str,
    fn: Callable[..., list],
    completions: list[str],
    columns: dict[str, list],
    errors: RewardErrors,
    strict: bool = False,
    trl: TrlInputs | None = None,
    first_call_fatal: bool = False,
) -> list[float | None]:
    """One reward over all completions; a raising or malformed reward yields Nones (or raises when strict).

    first_call_fatal: a failure of the reward's first such call in this process raises RewardError (a reward is
    called on the whole batch, so a raise means no completion of the step was scored).
    """
    first = first_call_fatal and name not in errors.first_called
    if first_call_fatal:
        errors.first_called.add(name)
    try:
        scores = shaped_call(name, fn, completions, columns, trl or TrlInputs())
        if len(scores) != len(completions):
            raise ValueError(f"returned {len(scores)} scores for {len(completions)} completions")
        return [_clean(s) for s in scores]
    except Exception as exc:
        if strict:
            raise RuntimeError(f"reward {name!r} failed: {exc}") from exc
        if first:
            raise RewardError(first_failure_message(name, exc, columns)) from exc
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
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state: StepState | None = None,
    first_call_fatal: bool = False,
) -> tuple[dict[str, list[float | None]], list[float]]:
    """All named rewards and their weighted total (a missing score contributes 0) for B = len(samples) * G.

    extra_columns: per-completion columns that are not the sample's (e.g. a trajectory's tool-call counts).
    completion_ids, trainer_state: what TRL-style rewards get besides the prompts (None where the caller has none).
    first_call_fatal: stop with RewardError when a reward raises on its first call in this process (GRPO).
    """
    columns = {**expand_columns(samples, group_size), **(extra_columns or {})}
    columns.setdefault("answer_valid", answer_validity(samples, completions, group_size))
    prompts = [s.messages for s in samples for _ in range(group_size)]
    trl = TrlInputs(prompts, completion_ids, trainer_state)
    named = {
        name: call_reward(name, resolve_reward(name), completions, columns, errors, strict, trl, first_call_fatal)
        for name in weights
    }
    total = [sum(w * (named[n][i] or 0.0) for n, w in weights.items()) for i in range(len(completions))]
    return named, total

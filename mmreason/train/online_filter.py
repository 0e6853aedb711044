"""One GRPO step's batch of groups: draw prompts from the data stream, sample and score their groups, record every
group in the run's per-prompt statistics (`mmreason.train.prompt_stats`) and, with `grpo.filter.enabled`, keep only
the groups whose mean accuracy lies strictly between `grpo.filter.low` and `grpo.filter.high` (EasyR1's online
filtering), drawing more prompts until the step has `grpo.prompts_per_step` kept groups (DAPO's dynamic sampling)
or `grpo.filter.max_extra_prompts` more prompts were drawn; the step then trains on the kept groups it has.

A completion's accuracy (`accuracy_scores`), by `grpo.filter.reward`:
    null (default)  the weighted mean of its task's rewards other than the format and reasoning-budget ones
                    (names starting with "format" or "budget_"), missing scores 0: in [0, 1] when those rewards
                    are (every built-in reward is), 1 when all are at their best. A task with only format
                    rewards uses all of them; one with no positive weight, its total reward. Tool rewards
                    (grpo.tools.rewards) never count.
    "total"         its total reward, as the advantages see it (the bounds are then on that scale).
    a reward name   that reward's score (missing: 0); every task of the stage must have it (or, with tools, it is
                    one of grpo.tools.rewards).
A group's accuracy is the mean of its G completions'; a prompt's pass rate is the mean over all its completions so
far. Statistics count every group drawn (filtered out or not); with the filter off they are kept all the same.
Groups filtered out are not written to the rollout store (it holds what the step trained on).

Refill rounds draw, per process, the missing groups divided by the step's kept share so far (a whole batch while
none was kept), at most the process's share of prompts_per_step and at most what is left of the extra budget. Every
process draws the same number of prompts in each round (ZeRO-3 generation needs all of them), and the statistics are
updated from every process's groups, so they are the same on each. The refill takes prompts from the same seeded
stream, whose cursor checkpoints save: a resumed run draws exactly what the uninterrupted one did. A step none of
whose groups passed trains on nothing: its first round's groups stay in the batch (and in the store) with no loss.

Metrics, with the filter on: `filter/extra_prompts` (prompts drawn beyond prompts_per_step, each G more
completions), `filter/kept_share` (share of the step's drawn groups that passed), `filter/prompts` (groups trained)
and `filter/rounds`. Each store row gets `prompt_pass_rate`: its prompt's pass rate before this round (NaN on its
first draw).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmreason.config import ConfigError, GRPOConfig
from mmreason.data.sample import Sample
from mmreason.rollout.groups import take_groups
from mmreason.rollout.types import Rollout
from mmreason.runs.run import Run, reward_weights, take_samples
from mmreason.train.prompt_stats import prompt_key

TOTAL = "total"
# samples -> their G completions each (one rollout), the named rewards and the total rewards of every completion
Roll = Callable[[list[Sample]], tuple[Rollout, dict[str, list], list[float]]]


@dataclass
class Round:
    """One draw of prompts, sampled and scored, with each group's accuracies and pass rates before the draw."""

    samples: list[Sample]
    rollout: Rollout
    named: dict[str, list]
    total: list[float]
    accuracy: list[list[float]]  # [P][G]
    pass_rates: list[float | None]  # [P]


@dataclass
class StepBatch:
    """The groups a step trains on (P of them, P * G rows) and what the filter cost."""

    samples: list[Sample]
    rollout: Rollout
    named: dict[str, list]
    total: list[float]
    keep: torch.Tensor  # [P] bool: the groups that passed the filter (all, with the filter off)
    pass_rates: list[float | None]  # [P] each prompt's pass rate before its draw
    metrics: dict[str, float] = field(default_factory=dict)

    def with_pass_rates(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The step's store rows (row b of group b // G) with their `prompt_pass_rate`."""
        g = self.rollout.group_size
        for b, row in enumerate(rows):
            row["prompt_pass_rate"] = self.pass_rates[b // g]
        return rows


def passes(accuracy: Sequence[float], low: float, high: float) -> bool:
    """Whether a group is kept: low < its mean accuracy < high."""
    mean = math.fsum(accuracy) / len(accuracy)
    return low < mean < high


def accuracy_weights(weights: dict[str, float]) -> dict[str, float] | None:
    """The rewards (and weights) the default accuracy averages, from a task's reward weights; None: use the total."""
    positive = {n: w for n, w in weights.items() if w > 0}
    # how an answer is written (format, reasoning budget) is not whether it is right
    chosen = {n: w for n, w in positive.items() if not n.startswith(("format", "budget_"))} or positive
    return chosen or None


def accuracy_scores(
    run: Run, cfg: GRPOConfig, samples: list[Sample], named: dict[str, list], total: list[float], multi_turn: bool
) -> list[list[float]]:
    """Each completion's accuracy (module doc), grouped [P][G]."""
    g, reward = cfg.group_size, cfg.filter.reward
    out = []
    for i, sample in enumerate(samples):
        rows = range(i * g, (i + 1) * g)
        task_weights = reward_weights(run, sample.task)
        weights = accuracy_weights(task_weights) if reward is None else None
        if reward is not None and reward != TOTAL:
            if reward not in task_weights and not (multi_turn and reward in cfg.tools.rewards):
                raise ConfigError(f"grpo.filter.reward {reward!r} is not a reward of task {sample.task!r} (its "
                                  f"rewards: {', '.join(task_weights)}); name one every task has, or total")
            out.append([float(named[reward][b] or 0.0) for b in rows])
        elif weights is None:  # "total", or a task without a positive reward weight
            out.append([float(total[b]) for b in rows])
        else:
            norm = math.fsum(weights.values())
            out.append([math.fsum(w * float(named[n][b] or 0.0) for n, w in weights.items()) / norm for b in rows])
    return out


def record_round(
    run: Run, samples: list[Sample], accuracy: list[list[float]], total: list[float]
) -> list[float | None]:
    """Count every process's groups of a round in the run's prompt statistics (the same on every process); returns
    this process's prompts' pass rates before the round."""
    stats = run.prompt_stats
    keys = [prompt_key(s) for s in samples]
    before = [stats.pass_rate(k) for k in keys]
    start = 0
    groups = []
    for key, acc in zip(keys, accuracy, strict=True):
        groups.append((key, acc, total[start:start + len(acc)]))
        start += len(acc)
    every = run.gather(groups)
    stats.update([k for k, _, _ in every], [a for _, a, _ in every], [t for _, _, t in every])
    return before


def draw_round(run: Run, cfg: GRPOConfig, size: int, roll: Roll) -> Round:
    """Draw `size` prompts on this process, sample and score them, and record their groups."""
    samples = take_samples(run, size)
    rollout, named, total = roll(samples)
    accuracy = accuracy_scores(run, cfg, samples, named, total, rollout.multi_turn)
    return Round(samples, rollout, named, total, accuracy, record_round(run, samples, accuracy, total))


def refill_size(need: int, wanted: int, drawn: int, kept: int, budget_left: int) -> int:
    """Prompts each process draws next: `need` (the most any process still misses) over the kept share so far,
    a whole batch (`wanted`) while none was kept, at most `wanted` and the budget left; 0 when nothing is missing."""
    if need <= 0 or budget_left <= 0:
        return 0
    guess = wanted if kept <= 0 else math.ceil(need * drawn / kept)
    return max(1, min(guess, wanted, budget_left))


def draw_batch(run: Run, cfg: GRPOConfig, wanted: int, roll: Roll) -> StepBatch:
    """The step's groups: `wanted` prompts on this process, filtered and refilled as the module doc says."""
    fcfg, world = cfg.filter, run.world_size
    rounds: list[Round] = []
    picked: list[tuple[int, int]] = []  # (round, group) of the groups that passed, in draw order
    size, drawn, kept = wanted, 0, 0  # drawn / kept: over all processes
    while size > 0:
        rounds.append(draw_round(run, cfg, size, roll))
        inside = [not fcfg.enabled or passes(a, fcfg.low, fcfg.high) for a in rounds[-1].accuracy]
        picked += [(len(rounds) - 1, i) for i, ok in enumerate(inside) if ok]
        drawn, kept = drawn + int(run.sum(len(inside))), kept + int(run.sum(sum(inside)))
        if not fcfg.enabled:
            break
        need = max(run.gather([max(wanted - len(picked), 0)]))
        budget_left = (fcfg.max_extra_prompts - (drawn - wanted * world)) // world
        size = refill_size(need, wanted, drawn, kept, budget_left)
    batch = assemble(run, rounds, picked[:wanted])
    if fcfg.enabled:
        batch.metrics = {
            "filter/extra_prompts": float(drawn - wanted * world),
            "filter/kept_share": kept / drawn,
            "filter/prompts": run.sum(float(min(len(picked), wanted))),
            "filter/rounds": float(len(rounds)),
        }
    return batch


def assemble(run: Run, rounds: list[Round], picked: list[tuple[int, int]]) -> StepBatch:
    """The picked groups as one batch (the first round as it is when that is what was picked); none picked: the
    first round's groups, none kept."""
    first = [(0, i) for i in range(len(rounds[0].samples))]
    keep = bool(picked)
    picked = picked or first
    g = rounds[0].rollout.group_size
    if picked == first:
        r = rounds[0]
        rollout, named, total = r.rollout, r.named, r.total
    else:
        parts = [(r.rollout, [i for k, i in picked if k == n]) for n, r in enumerate(rounds)]
        rollout = take_groups(parts, run.policy.processor, run.device)
        rows = [(rounds[k], i * g + j) for k, i in picked for j in range(g)]  # picked is in round order
        names = dict.fromkeys(n for r in rounds for n in r.named)
        named = {n: [r.named[n][b] if n in r.named else None for r, b in rows] for n in names}
        total = [r.total[b] for r, b in rows]
    return StepBatch(
        samples=[rounds[k].samples[i] for k, i in picked],
        rollout=rollout,
        named=named,
        total=total,
        keep=torch.full((len(picked),), keep, dtype=torch.bool, device=run.device),
        pass_rates=[rounds[k].pass_rates[i] for k, i in picked],
    )

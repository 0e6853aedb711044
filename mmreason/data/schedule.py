"""Difficulty-aware data scheduling (the `schedule` config): which prompts a GRPO step draws, by their difficulty
and by task (We-Math 2.0's progressive curriculum; pass-rate-aware sampling).

This module owns the scheduling maths (small pure functions), reading a record's difficulty, the sampling `Plan` a
`SampleStream` draws from once its trainer has set the progress, the checks of the `schedule` config and the
metrics a step logs. The stream (`mmreason.data.stream`) keeps the cursor: a scheduled draw is a pure function of
(seed, epoch, position) and the schedule's inputs, the progress (stage index, step, steps) and the pass rates as
they were when the step began, so a resumed run draws exactly what an uninterrupted one would.

A prompt's difficulty, on a 0 (easiest) .. 1 (hardest) scale:
    by: difficulty  its record's `difficulty` field (another column: data[i].columns: {difficulty: level}): a number,
                    a numeric string, a name of schedule.levels (any case; default easy 0, medium 1, hard 2) or
                    "level N" (MATH's "Level 5" is 5). The numbers are normalised per data source by its minimum and
                    maximum (all equal: 0.5), so a source's easiest record is 0 and its hardest 1 whatever its scale.
                    A record without the field gets schedule.prior; any other value (an unknown level name, a bool,
                    NaN, a list) is one DataError naming the record, when the stream is built.
    by: pass_rate   1 - the prompt's pass rate so far (`mmreason.train.prompt_stats`, clipped to 0..1); a prompt not
                    drawn yet gets schedule.prior.

The curriculum gives every step of a GRPO stage a band [low, high] of difficulty (`stage_band`): with `linear` a
point moving from `start` at the stage's first step to `end` at its last (`linear_target`); with `stages` the
stage's own range or target (a stage without one draws as if there were no curriculum). A prompt's weight is 1 in
the band and floor + (1 - floor) * exp(-(distance / width)^2) outside it (`band_weights`): `floor` keeps every prompt
drawable; floor 0 with width 0 is a hard cut-off (a source with nothing in its band then draws the prompts nearest
to it). `schedule.mixture` gives a stage its own task weights (in place of data[i].weight).

A scheduled draw picks a source in proportion to its (stage's) weight, then one of its records in proportion to its
weight (`Plan.draw`), with replacement: within a source the curriculum only changes which records come, never the
task shares. Positions, epochs and ranks stay the stream's. A step where nothing is scheduled (an SFT stage, a GRPO
stage without a range and without a mixture phase) draws the stream's unscheduled order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmreason.data.locate import DataError

if TYPE_CHECKING:
    from mmreason.config import RunConfig, ScheduleConfig

logger = logging.getLogger(__name__)

PromptKey = tuple[str, str]  # (data source, record id): mmreason.train.prompt_stats.prompt_key
SALT = 0x5C4ED  # keeps a scheduled draw's random numbers apart from the epoch order's (same seed and epoch)
FIELD = "difficulty"
_LEVEL_RE = re.compile(r"^level\s*(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Band:
    """The difficulties a step prefers: low <= d <= high (low == high: a point target)."""

    low: float
    high: float

    @property
    def target(self) -> float:
        """The band's middle (what the metrics log as the target)."""
        return (self.low + self.high) / 2


# ------------------------------------------------------------------------------------------------ the maths


def linear_target(start: float, end: float, step: int, steps: int) -> float:
    """The target at 0-based `step` of `steps`: `start` at the first step, `end` at the last, linear in between
    (a one-step stage is at `start`; steps past the end stay at `end`)."""
    share = min(max(step / max(steps - 1, 1), 0.0), 1.0)
    return start + (end - start) * share


def band_distance(difficulty: np.ndarray, band: Band) -> np.ndarray:
    """How far each difficulty lies outside the band (0 inside)."""
    return np.maximum(band.low - difficulty, 0.0) + np.maximum(difficulty - band.high, 0.0)


def band_weights(difficulty: np.ndarray, band: Band, width: float, floor: float) -> np.ndarray:
    """Each prompt's weight: 1 in the band, floor + (1 - floor) * exp(-(distance / width)^2) outside (width 0: floor
    outside). When every weight is 0 (floor 0: a hard cut-off that leaves nothing), the prompts nearest the band get
    weight 1 (ties up to rounding: all of them) and the rest 0, so a source always has something to draw."""
    distance = band_distance(np.asarray(difficulty, dtype=np.float64), band)
    if width > 0:
        kernel = np.exp(-np.square(distance / width))
    else:
        kernel = (distance == 0).astype(np.float64)
    weights = floor + (1.0 - floor) * kernel
    if not weights.size or weights.sum() > 0:
        return weights
    return np.isclose(distance, distance.min(), rtol=1e-9, atol=1e-12).astype(np.float64)


def minmax_normalise(values: np.ndarray) -> np.ndarray:
    """Values mapped onto 0..1 by their minimum and maximum (NaN, a missing value, stays NaN); all equal: 0.5."""
    values = np.asarray(values, dtype=np.float64)
    known = values[~np.isnan(values)]
    if not known.size:
        return values.copy()
    low, high = float(known.min()), float(known.max())
    if high == low:
        return np.where(np.isnan(values), np.nan, 0.5)
    return (values - low) / (high - low)


def parse_difficulty(value: Any, levels: Mapping[str, float]) -> float | None:
    """A record's raw difficulty as a number (module doc: a number, a numeric string, a level name of `levels`,
    "level N"); None when the record has none (missing, null or blank). ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"field {FIELD!r} must be a number or a level name, got {type(value).__name__}")
    if isinstance(value, str):
        text = " ".join(value.split()).lower()
        if not text:  # an empty table cell
            return None
        named = {" ".join(k.split()).lower(): v for k, v in levels.items()}
        match = _LEVEL_RE.match(text)
        if text in named:
            value = named[text]
        elif match:
            value = match.group(1)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"field {FIELD!r}: unknown level {value[:80]!r} (known: {', '.join(levels)}, a number "
                             "or 'level N'; add it to schedule.levels)") from None
    else:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"field {FIELD!r} must be a finite number, got {str(value)[:80]}")
    return number


def pick(cumulative: np.ndarray, u: float) -> int:
    """The index a uniform `u` in [0, 1) falls on, by cumulative weights (a zero weight is never picked)."""
    index = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return min(index, len(cumulative) - 1)


# ------------------------------------------------------------------------------------------------ difficulties


def record_difficulties(records: Sequence[dict[str, Any]], levels: Mapping[str, float], prior: float,
                        source: str) -> np.ndarray:
    """The normalised difficulty of every record of one source (module doc); DataError naming the first record
    whose `difficulty` cannot be read. Records without one get `prior` (logged once per source)."""
    raw = np.full(len(records), np.nan)
    for i, record in enumerate(records):
        try:
            value = parse_difficulty(record.get(FIELD), levels)
        except ValueError as exc:
            where = f"{record.get('_source', source)}:{record.get('_line', i + 1)}"
            raise DataError(f"schedule: record {str(record.get('id'))[:80]!r} ({where}): {exc}") from None
        raw[i] = np.nan if value is None else value
    missing = int(np.isnan(raw).sum())
    if missing:
        logger.warning("schedule: %d of %d records of %s have no %r: they get the prior %s", missing, len(records),
                       source, FIELD, prior)
    return np.nan_to_num(minmax_normalise(raw), nan=prior)


def pass_rate_items(stats: Any) -> Iterator[tuple[PromptKey, float]]:
    """(prompt key, pass rate) of every prompt with one: from a `PromptStats` (its `records`) or a mapping of key
    -> pass rate (None or NaN: not drawn yet)."""
    records = getattr(stats, "records", stats) if stats is not None else {}
    for key, value in records.items():
        rate = getattr(value, "pass_rate", value)
        if rate is not None and math.isfinite(rate):
            yield (str(key[0]), str(key[1])), float(rate)


def pass_rate_difficulties(index: Mapping[PromptKey, list[int]], size: int, stats: Any,
                           prior: float) -> np.ndarray:
    """1 - pass rate (clipped to 0..1) of each of a source's `size` records, `prior` for those not drawn yet;
    `index` maps a prompt key to its record positions in the source."""
    difficulty = np.full(size, float(prior))
    for key, rate in pass_rate_items(stats):
        positions = index.get(key)
        if positions:
            difficulty[positions] = min(max(1.0 - rate, 0.0), 1.0)
    return difficulty


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """What a scheduled step draws from: cumulative source weights, each source's cumulative record weights, each
    record's difficulty, and the step's band (None: no curriculum at this step)."""

    sources: np.ndarray
    records: list[np.ndarray]
    difficulty: list[np.ndarray]
    band: Band | None

    def draw(self, rng: np.random.Generator) -> tuple[int, int, float]:
        """(source index, record index, its difficulty) from two uniforms of `rng`."""
        u = rng.random(2)
        source = pick(self.sources, float(u[0]))
        record = pick(self.records[source], float(u[1]))
        return source, record, float(self.difficulty[source][record])


class Schedule:
    """A stream's schedule: the `schedule` config and what it needs of the stream's sources (their tasks, weights,
    and each record's difficulty or prompt key). `plan` gives the step's `Plan`."""

    def __init__(self, cfg: ScheduleConfig, sources: Sequence[Any]) -> None:
        self.cfg = cfg
        self.tasks = [s.task.name for s in sources]
        self.names = [s.name for s in sources]
        self.weights = [float(s.weight) for s in sources]
        self.sizes = [len(s.dataset) for s in sources]
        self.static: list[np.ndarray] | None = None
        self.index: list[dict[PromptKey, list[int]]] = []
        if cfg.by == "difficulty":
            self.static = [record_difficulties(s.dataset.records, cfg.levels, cfg.prior, s.name) for s in sources]
        else:
            for s in sources:
                index: dict[PromptKey, list[int]] = {}
                for i, record in enumerate(s.dataset.records):
                    index.setdefault((s.name, str(record.get("id"))), []).append(i)
                self.index.append(index)

    def band(self, stage_index: int, step: int, steps: int) -> Band | None:
        """The step's band (module doc), None when the curriculum sets none for this stage."""
        return stage_band(self.cfg, stage_index, step, steps)

    def mixture(self, stage_index: int) -> list[float] | None:
        """The sources' weights in this stage, None when no mixture phase names it."""
        phase = next((p for p in self.cfg.mixture if p.stage == stage_index), None)
        if phase is None:
            return None
        return [float(phase.weights.get(task, weight)) for task, weight in zip(self.tasks, self.weights, strict=True)]

    def plan(self, stage_index: int, step: int, steps: int, stats: Any = None) -> Plan | None:
        """The step's plan; None when nothing is scheduled at it (the stream then draws its unscheduled order).
        `stats`: the pass rates (a `PromptStats` or a mapping), read only with by: pass_rate."""
        band, mixture = self.band(stage_index, step, steps), self.mixture(stage_index)
        if band is None and mixture is None:
            return None
        weights = np.asarray(mixture if mixture is not None else self.weights, dtype=np.float64)
        if not (np.all(weights >= 0) and weights.sum() > 0):
            raise DataError(f"schedule: stage {stage_index} gives every source of the stream weight 0")
        difficulty = self.static if self.static is not None else [
            pass_rate_difficulties(index, size, stats, self.cfg.prior)
            for index, size in zip(self.index, self.sizes, strict=True)
        ]
        records = [np.cumsum(band_weights(d, band, self.cfg.width, self.cfg.floor) if band is not None
                             else np.ones(len(d))) for d in difficulty]
        return Plan(np.cumsum(weights), records, difficulty, band)

    def fingerprint(self) -> str:
        """A short hash of the config (saved with the stream's cursor: a resume under another schedule is refused)."""
        text = json.dumps(asdict(self.cfg), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def stage_band(cfg: ScheduleConfig, stage_index: int, step: int, steps: int) -> Band | None:
    """The band of 0-based `step` (of `steps`) of the stage at `stage_index` under `cfg.curriculum` (module doc)."""
    if cfg.curriculum == "linear":
        target = linear_target(cfg.start, cfg.end, step, steps)
        return Band(target, target)
    if cfg.curriculum == "stages":
        entry = next((s for s in cfg.stages if s.stage == stage_index), None)
        if entry is None:
            return None
        if entry.target is not None:
            return Band(entry.target, entry.target)
        return Band(0.0 if entry.low is None else entry.low, 1.0 if entry.high is None else entry.high)
    return None


def schedule_metrics(stream: Any, total: Callable[[float], float]) -> dict[str, float]:
    """`schedule/difficulty_mean` (the prompts drawn since the step set its progress, over all processes: `total`
    sums a number over them) and `schedule/target` (the band's middle); {} when nothing is scheduled at the step
    (the same on every process, so every process calls `total` equally often)."""
    plan = getattr(stream, "plan", None)
    if plan is None:
        return {}
    drawn = stream.drawn_difficulties
    count, summed = total(float(len(drawn))), total(math.fsum(drawn))
    metrics = {"schedule/difficulty_mean": summed / count if count else math.nan}
    if plan.band is not None:
        metrics["schedule/target"] = plan.band.target
    return metrics


# ------------------------------------------------------------------------------------------------ the config


def check_data_schedule(cfg: RunConfig) -> None:
    """One-line ConfigErrors for a `schedule` that cannot work (the ranges of its numbers are in config_ranges)."""
    from mmreason.config import ConfigError, show_value

    sc = cfg.schedule
    bad_levels = {k: v for k, v in sc.levels.items() if not (isinstance(k, str) and k.strip() and _finite(v))}
    if bad_levels:
        raise ConfigError(f"schedule.levels maps level names to finite numbers, got {show_value(bad_levels)}")
    if not sc.enabled:
        return
    grpo = [i for i, s in enumerate(cfg.stages) if s == "grpo"]
    if not grpo:
        raise ConfigError("schedule.enabled schedules the grpo stages, and `stages` has none")
    if sc.curriculum == "none" and not sc.mixture:
        raise ConfigError("schedule.enabled changes nothing: set schedule.curriculum (linear, stages) or a mixture")
    if sc.curriculum != "stages" and sc.stages:
        raise ConfigError(f"schedule.stages is read with schedule.curriculum: stages only (it is {sc.curriculum})")
    if sc.curriculum == "stages" and not sc.stages:
        raise ConfigError("schedule.curriculum: stages needs schedule.stages: [{stage: N, low: .., high: ..}, ...]")
    for i, entry in enumerate(sc.stages):
        _check_stage(f"schedule.stages[{i}]", entry.stage, grpo, [s.stage for s in sc.stages[:i]])
        _check_band(f"schedule.stages[{i}]", entry.low, entry.high, entry.target)
    tasks = {d.task for d in cfg.data if not d.stages or "grpo" in d.stages}
    for i, phase in enumerate(sc.mixture):
        where = f"schedule.mixture[{i}]"
        _check_stage(where, phase.stage, grpo, [p.stage for p in sc.mixture[:i]])
        if not phase.weights:
            raise ConfigError(f"{where}.weights is empty: give task -> weight")
        unknown = sorted(set(phase.weights) - tasks)
        if unknown:
            raise ConfigError(f"{where}.weights names task(s) {', '.join(map(str, unknown))} that no GRPO data entry "
                              f"trains; its tasks: {', '.join(sorted(tasks))}")
        if not all(_finite(w) and w >= 0 for w in phase.weights.values()):
            raise ConfigError(f"{where}.weights maps tasks to finite weights >= 0, got {show_value(phase.weights)}")
        kept = [phase.weights.get(d.task, d.weight) for d in cfg.data if d.task in tasks]
        if not any(w > 0 for w in kept):
            raise ConfigError(f"{where}.weights leaves stage {phase.stage} no task to draw (every weight is 0)")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_stage(where: str, stage: int | None, grpo: list[int], earlier: list[int | None]) -> None:
    from mmreason.config import ConfigError

    if stage is None or stage not in grpo:
        raise ConfigError(f"{where}.stage must be the position of a grpo stage in `stages` (0-based): "
                          f"{', '.join(map(str, grpo))}; got {stage}")
    if stage in earlier:
        raise ConfigError(f"{where}.stage {stage} is named twice: one entry per stage")


def _check_band(where: str, low: float | None, high: float | None, target: float | None) -> None:
    from mmreason.config import ConfigError, show_value

    if target is not None and (low is not None or high is not None):
        raise ConfigError(f"{where}: give a range (low, high) or a target, not both")
    if target is None and low is None and high is None:
        raise ConfigError(f"{where}: give a range (low, high) or a target, on the 0..1 difficulty scale")
    for name, value in (("low", low), ("high", high), ("target", target)):
        if value is not None and not (_finite(value) and 0 <= value <= 1):
            raise ConfigError(f"{where}.{name} must be in [0, 1] (normalised difficulty), got {show_value(value)}")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}.low ({low}) must be <= high ({high})")

"""The trainer's source of samples: a seeded, weighted mixture of (task, dataset) sources whose order depends only
on (seed, epoch), whose cursor is saved in checkpoints, and which skips (and counts) records a task cannot turn into
a sample, so one bad record never ends a long run. With a `Schedule` (`mmreason.data.schedule`) and the progress its
trainer sets before each step, draws follow difficulty and per-stage task weights instead.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmreason.data.prepare import make_sample
from mmreason.data.records import DataError, Dataset, printable
from mmreason.data.sample import Sample, SampleContext
from mmreason.data.schedule import SALT, Plan, Schedule
from mmreason.registry import get_task

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """One entry of a training mixture: a task, its records, the mixture weight, and optionally its own context.

    ctx: the task's SampleContext (think, pixel budgets...); its base_dir is replaced by the dataset's folder.
    """

    task: Any
    dataset: Dataset
    weight: float = 1.0
    ctx: SampleContext | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.task, str):
            self.task = get_task(self.task)
        # parent/file rather than the full path, so a resumed run launched from elsewhere matches its checkpoint
        src = Path(self.dataset.source)
        self.name = self.name or f"{self.task.name}:{src.parent.name}/{src.name}"
        if not len(self.dataset):
            raise DataError(f"source {self.name!r} has no records")
        if not (isinstance(self.weight, int | float) and np.isfinite(self.weight) and self.weight > 0):
            raise DataError(f"source {self.name!r}: weight must be a positive number, got {self.weight!r}")
        self.ctx = self.dataset.context(self.ctx)


def mixture_counts(weights: Sequence[float], total: int) -> list[int]:
    """Split `total` positions in proportion to `weights` (largest remainder, so the counts sum to total)."""
    w = np.asarray(weights, dtype=float)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


class SampleStream:
    """Endless, seeded, resumable iterator of `(task, sample)` for training.

    Each epoch has `epoch_size` positions (default: the total number of records), split between the sources in
    proportion to their weights; a source draws its records from fresh permutations of its dataset (a source with
    weight share above its size repeats records, one below it samples a subset), and the positions are shuffled.
    The order depends only on (seed, epoch). `state_dict()` holds the cursor (epoch, position), so a stream that
    loads it yields exactly what the saved one would have yielded next.

    Records whose `to_sample` raises are skipped: `skipped` counts them, `skip_reasons` counts them per
    "task: ExceptionType", and each record is logged once. A whole epoch of consecutive failures raises DataError.
    rank/world_size: with several processes, each takes the positions p with p % world_size == rank.
    sample.meta gets "source", "epoch" and "position" (for the rollout store).

    schedule: after `set_progress(stage_index, step, steps, stats)`, a position whose step has a `Plan` draws its
    source and record from it with a generator seeded by (seed, epoch, position), so the order is a pure function of
    those and of the progress and pass rates given; sample.meta then also gets "difficulty". Without a schedule, or
    with no progress set (`set_progress(None)`), the order is the unscheduled one above.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        seed: int = 0,
        *,
        epoch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        schedule: Schedule | None = None,
    ) -> None:
        if not sources:
            raise DataError("a SampleStream needs at least one source")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.sources = list(sources)
        self.seed = int(seed)
        self.epoch_size = int(epoch_size or sum(len(s.dataset) for s in self.sources))
        if self.epoch_size < world_size:
            raise DataError(f"epoch_size {self.epoch_size} is smaller than world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # next global position in the epoch to consider
        self.skipped = 0
        self.skip_reasons: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None
        self.schedule = schedule
        self.plan: Plan | None = None  # the current step's plan (None: the unscheduled order)
        self.drawn_difficulties: list[float] = []  # difficulties of the scheduled draws since set_progress

    def __iter__(self) -> SampleStream:
        return self

    def __next__(self) -> tuple[Any, Sample]:
        failures = 0
        while True:
            epoch, position, source, record, difficulty = self._advance()
            try:
                sample = make_sample(source.task, record, source.ctx)
            except Exception as exc:  # one bad record must not end a long run: count it, log it once, go on
                self._skip(source, record, exc)
                failures += 1
                if failures >= max(1, self.epoch_size // self.world_size):
                    raise DataError(
                        f"{failures} consecutive records failed to become samples; last: {record['id']} "
                        f"({record['_source']}:{record['_line']}): {exc}"
                    ) from exc
                continue
            sample.meta.update(source=source.name, epoch=epoch, position=position)
            if difficulty is not None:
                sample.meta["difficulty"] = difficulty
                self.drawn_difficulties.append(difficulty)
            return source.task, sample

    @property
    def unreadable_lines(self) -> int:
        """Lines of the sources' files that could not be read as records (never drawn, so never in `skipped`)."""
        return sum(len(s.dataset.problems) for s in self.sources)

    def take(self, n: int) -> list[tuple[Any, Sample]]:
        """The next n items."""
        return [next(self) for _ in range(n)]

    def set_progress(self, stage_index: int | None, step: int = 0, steps: int = 1, stats: Any = None) -> None:
        """Where training is, set by the trainer before each step's draws: the stage's 0-based position in `stages`,
        the 0-based step and the stage's steps, and the pass rates (a `PromptStats`) as they are now. None as the
        stage: no progress (the unscheduled order). A no-op without a schedule."""
        if self.schedule is None:
            return
        self.drawn_difficulties = []
        self.plan = None if stage_index is None else self.schedule.plan(stage_index, step, steps, stats)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, record index) of every position of `epoch`; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = mixture_counts([s.weight for s in self.sources], self.epoch_size)
        src = np.repeat(np.arange(len(self.sources)), counts)
        idx = np.concatenate([_draw(rng, len(s.dataset), c) for s, c in zip(self.sources, counts, strict=True)])
        perm = rng.permutation(self.epoch_size)
        return src[perm], idx[perm]

    def _advance(self) -> tuple[int, int, Source, dict[str, Any], float | None]:
        """The next position of this rank (moving to the next epoch when the current one is done), its source and
        record, and the record's difficulty when the step's plan drew it (None: the unscheduled order)."""
        while True:
            if self.position >= self.epoch_size:
                self.epoch, self.position = self.epoch + 1, 0
            position = self.position
            self.position += 1
            if position % self.world_size == self.rank:
                break
        if self.plan is not None:
            s, r, difficulty = self.plan.draw(np.random.default_rng([self.seed, self.epoch, position, SALT]))
            return self.epoch, position, self.sources[s], self.sources[s].dataset.records[r], difficulty
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, *self.epoch_order(self.epoch))
        source = self.sources[int(self._order[1][position])]
        return self.epoch, position, source, source.dataset.records[int(self._order[2][position])], None

    def _skip(self, source: Source, record: dict[str, Any], exc: Exception) -> None:
        self.skipped += 1
        self.skip_reasons[f"{source.task.name}: {type(exc).__name__}"] += 1
        key = (source.name, record["id"])
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(
                "skipping record %s (%s:%s) of task %s: %s",
                printable(record["id"]), record["_source"], record["_line"], source.task.name, printable(str(exc)),
            )

    def _fingerprint(self) -> list[list[Any]]:
        return [[s.name, len(s.dataset), float(s.weight)] for s in self.sources]

    def state_dict(self) -> dict[str, Any]:
        """The cursor and counters (JSON-serialisable), for checkpoints (with a schedule, its fingerprint too)."""
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "epoch_size": self.epoch_size,
            "world_size": self.world_size,
            "skipped": self.skipped,
            "skip_reasons": dict(self.skip_reasons),
            "sources": self._fingerprint(),
        }
        if self.schedule is not None:
            state["schedule"] = self.schedule.fingerprint()
        return state

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Continue from a saved cursor. With strict, a different seed, epoch size, set of sources or schedule is an
        error (resuming on other data would not continue the same sequence)."""
        if strict:
            mine = {"seed": self.seed, "epoch_size": self.epoch_size, "world_size": self.world_size,
                    "sources": self._fingerprint(),
                    "schedule": self.schedule.fingerprint() if self.schedule is not None else None}
            diff = [k for k, v in mine.items() if k in state and _as_json(state[k]) != _as_json(v)]
            if diff:
                details = "; ".join(f"{k}: saved {state[k]!r}, now {mine[k]!r}" for k in diff)
                raise DataError(f"data stream state does not match this stream ({details}); pass strict=False to "
                                "resume anyway")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = int(state.get("skipped", 0))
        self.skip_reasons = Counter(state.get("skip_reasons", {}))
        self._order = None


def _draw(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`count` record indices from consecutive permutations of range(n) (each record once per pass)."""
    passes = -(-count // n)
    if not passes:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:count]


def _as_json(value: Any) -> Any:
    """Normalise tuples/lists so a state read back from JSON compares equal to a live one."""
    return json.loads(json.dumps(value))

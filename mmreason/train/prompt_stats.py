"""Per-prompt statistics of a run's GRPO stages: how often each prompt was drawn, its pass rate (the mean accuracy
of all its completions so far), its mean total reward and the share of its groups that carried signal (completions
whose total rewards differ, so that some advantage is not 0).

A prompt is keyed by its data source and record id (`prompt_key`): two files whose records share ids (two
`train.jsonl` without ids both hold `train-1`) stay apart. What "accuracy" is, and the filter that reads the
same scores, live in `mmreason.train.online_filter`; this module only keeps the counts. `Run.prompt_stats` holds the
run's one `PromptStats`; checkpoints save it in state.json (`state_dict`, exact: JSON floats round-trip) and
`--resume` restores it, so a resumed run counts as an uninterrupted one. `read_prompt_stats` reads the newest
checkpoint's copy back for the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreason.data.sample import Sample

PromptKey = tuple[str, str]  # (data source, record id)
STATE_VERSION = 1


def prompt_key(sample: Sample) -> PromptKey:
    """A prompt's key: the stream source it came from (its task when it has none) and its record id."""
    return str(sample.meta.get("source") or sample.task), str(sample.id)


@dataclass
class PromptRecord:
    """The running counts of one prompt."""

    draws: int = 0  # groups sampled for it
    signal: int = 0  # of those, groups whose completions' total rewards were not all equal
    completions: int = 0
    accuracy_sum: float = 0.0
    reward_sum: float = 0.0

    @property
    def pass_rate(self) -> float:
        return self.accuracy_sum / self.completions if self.completions else math.nan

    @property
    def reward_mean(self) -> float:
        return self.reward_sum / self.completions if self.completions else math.nan

    @property
    def signal_share(self) -> float:
        return self.signal / self.draws if self.draws else math.nan


class PromptStats:
    """Per-prompt counts over a run, updated once per sampled group (every group drawn, filtered out or not)."""

    def __init__(self) -> None:
        self.records: dict[PromptKey, PromptRecord] = {}

    def __len__(self) -> int:
        return len(self.records)

    def pass_rate(self, key: PromptKey) -> float | None:
        """The prompt's pass rate so far; None before its first group."""
        record = self.records.get(key)
        return None if record is None else record.pass_rate

    def update(
        self, keys: Sequence[PromptKey], accuracy: Sequence[Sequence[float]], totals: Sequence[Sequence[float]]
    ) -> None:
        """Count one group per key: its completions' accuracies and total rewards (one list per group)."""
        if not len(keys) == len(accuracy) == len(totals):
            raise ValueError(f"PromptStats.update: {len(keys)} keys, {len(accuracy)} accuracy groups and "
                             f"{len(totals)} reward groups")
        for key, acc, total in zip(keys, accuracy, totals, strict=True):
            if len(acc) != len(total) or not acc:
                raise ValueError(f"PromptStats.update: group of {key} has {len(acc)} accuracies, {len(total)} rewards")
            record = self.records.setdefault((str(key[0]), str(key[1])), PromptRecord())
            record.draws += 1
            record.signal += int(max(total) != min(total))
            record.completions += len(acc)
            record.accuracy_sum += float(sum(acc))
            record.reward_sum += float(sum(total))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per prompt (source, sample_id, draws, pass_rate, reward_mean, signal_share), first drawn first."""
        return [
            {"source": source, "sample_id": sid, "draws": r.draws, "pass_rate": r.pass_rate,
             "reward_mean": r.reward_mean, "signal_share": r.signal_share}
            for (source, sid), r in self.records.items()
        ]

    def state_dict(self) -> dict[str, Any]:
        """JSON for checkpoints: one [source, id, draws, signal, completions, accuracy_sum, reward_sum] per prompt."""
        prompts = [[*key, r.draws, r.signal, r.completions, r.accuracy_sum, r.reward_sum]
                   for key, r in self.records.items()]
        return {"version": STATE_VERSION, "prompts": prompts}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from saved counts (None or {}: a checkpoint from before prompt statistics, start empty)."""
        self.records = {}
        for source, sid, draws, signal, completions, acc, reward in (state or {}).get("prompts", []):
            self.records[(str(source), str(sid))] = PromptRecord(int(draws), int(signal), int(completions),
                                                                 float(acc), float(reward))


def read_prompt_stats(run_dir: str | Path) -> PromptStats | None:
    """The statistics saved in the run's newest complete checkpoint (every stage ends with one); None when it has
    no checkpoint or the checkpoint holds none (a run without GRPO, or from before prompt statistics)."""
    from mmreason.train.checkpoint import STATE_FILE, latest_checkpoint

    ckpt = latest_checkpoint(run_dir, cleanup=False)
    if ckpt is None:
        return None
    state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")).get("prompt_stats")
    if not state or not state.get("prompts"):
        return None
    stats = PromptStats()
    stats.load_state_dict(state)
    return stats

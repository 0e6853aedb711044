"""Per-prompt statistics (mmreason.train.prompt_stats): counts worked out by hand, keys that keep two sources apart,
an exact JSON round trip (what checkpoints save and --resume restores) and how a round of groups is recorded."""

from __future__ import annotations

import json
import math
import types

import pytest

from mmreason.data.sample import Sample
from mmreason.train.online_filter import record_round
from mmreason.train.prompt_stats import PromptStats, prompt_key

A, B = ("counting:a/train.jsonl", "p1"), ("counting:b/train.jsonl", "p1")


def _stats() -> PromptStats:
    stats = PromptStats()
    stats.update([A, B], [[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], [[1.5, 0.5, 1.0], [0.5, 0.5, 0.5]])
    stats.update([A], [[1.0, 1.0, 1.0]], [[1.5, 1.5, 1.5]])
    return stats


def test_counts_pass_rates_and_signal_by_hand():
    stats = _stats()
    assert len(stats) == 2
    a, b = stats.records[A], stats.records[B]
    assert (a.draws, a.signal, a.completions) == (2, 1, 6)  # the second group of A is all equal: no signal
    assert a.pass_rate == pytest.approx(4.5 / 6) and a.reward_mean == pytest.approx(7.5 / 6)
    assert a.signal_share == 0.5
    assert (b.draws, b.signal, b.pass_rate, b.signal_share) == (1, 0, 0.0, 0.0)
    assert stats.pass_rate(A) == pytest.approx(4.5 / 6)
    assert stats.pass_rate(("counting:a/train.jsonl", "never drawn")) is None
    assert [r["sample_id"] for r in stats.rows()] == ["p1", "p1"]  # same id, two sources: two prompts


def test_state_round_trips_exactly_through_json():
    stats = _stats()
    stats.update([A], [[0.1, 0.2, 0.7]], [[0.1, 0.2, 0.7]])  # sums that are not exact in binary
    state = json.loads(json.dumps(stats.state_dict()))
    restored = PromptStats()
    restored.load_state_dict(state)
    assert restored.state_dict() == stats.state_dict()
    assert restored.rows() == stats.rows()
    restored.update([B], [[1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]])  # goes on counting from the saved counts
    assert restored.records[B].draws == 2


def test_an_old_checkpoint_without_statistics_starts_empty():
    stats = _stats()
    stats.load_state_dict(None)
    assert len(stats) == 0 and stats.rows() == []
    stats.load_state_dict({})
    assert len(stats) == 0


@pytest.mark.parametrize(
    "keys, accuracy, totals",
    [([A], [[1.0]], []), ([A], [[1.0, 0.0]], [[1.0]]), ([A], [[]], [[]])],
)
def test_mismatched_groups_are_refused(keys, accuracy, totals):
    with pytest.raises(ValueError, match="PromptStats.update"):
        PromptStats().update(keys, accuracy, totals)


def test_a_prompt_is_keyed_by_its_source_and_id():
    a = Sample("train-1", "counting", [], meta={"source": "counting:a/train.jsonl"})
    b = Sample("train-1", "counting", [], meta={"source": "counting:b/train.jsonl"})
    loose = Sample("train-1", "counting", [])  # not from a stream: its task stands in for the source
    assert prompt_key(a) != prompt_key(b)
    assert prompt_key(loose) == ("counting", "train-1")


def test_a_round_records_every_group_and_returns_the_pass_rates_before_it():
    run = types.SimpleNamespace(prompt_stats=PromptStats(), gather=list)
    samples = [Sample("x", "counting", [], meta={"source": "s"}), Sample("y", "counting", [], meta={"source": "s"})]
    before = record_round(run, samples, [[1.0, 0.0], [0.0, 0.0]], [1.0, 0.0, 0.0, 0.0])
    assert before == [None, None]
    before = record_round(run, samples[:1], [[1.0, 1.0]], [1.0, 1.0])
    assert before == [0.5]
    stats = run.prompt_stats
    assert stats.records[("s", "x")].draws == 2 and math.isclose(stats.pass_rate(("s", "x")), 0.75)

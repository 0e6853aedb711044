"""Temporal segments: `check_segment` (the one ground-truth rule, 0 <= start < end), `parse_segment`, the gold
formatter and the `tiou` reward."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.parse import ColumnError
from mmreason.rewards.temporal import (
    check_duration,
    check_segment,
    format_segment,
    interval_iou,
    parse_segment,
    predicted_segment,
)

from mmreason.registry import get_reward

SOLUTION = [10.0, 20.0]


@pytest.mark.parametrize(
    "text, duration, expected",
    [
        ("<answer>[10, 20]</answer>", None, 1.0),
        ("<answer>10s - 20s</answer>", None, 1.0),
        ("<answer>00:10 - 00:20</answer>", None, 1.0),
        ("<answer>[20, 10]</answer>", None, 1.0),  # reversed
        ("<answer>[15, 25]</answer>", None, pytest.approx(5 / 15)),
        ("<answer>[0, 40]</answer>", None, pytest.approx(10 / 40)),
        ("<answer>[12, 18]</answer>", None, pytest.approx(6 / 10)),
        ("<answer>[20, 30]</answer>", None, 0.0),  # touching
        ("<answer>[15, 15]</answer>", None, 0.0),  # a zero-length prediction parses and overlaps no length
        ("<answer>10 - 10</answer>", None, 0.0),
        ("<answer>00:20 - 00:20</answer>", None, 0.0),
        ("<answer>[30, 40]</answer>", 20.0, 0.0),  # after the video's end: not a valid answer
        ("<answer>[15, 100]</answer>", 25.0, 0.0),  # ends after the video: not clipped into a valid segment
        ("<answer>[30, 40]</answer>", 25.0, 0.0),
        ("<answer>[10, 20]</answer>", 25.0, 1.0),
        ("<answer>[0, 25]</answer>", 25.0, 0.0),  # the whole video (tIoU 10/25) is the baseline: no credit
        ("<answer>[12, 18]</answer>", 25.0, pytest.approx((0.6 - 0.4) / 0.6)),  # tIoU beyond the whole video's
        ("<answer>[0, 25.04]</answer>", 25.0, 0.0),  # within the slack of the stated duration: valid, clipped
        ("<answer>[10, 25.04]</answer>", 25.0, pytest.approx((10 / 15 - 0.4) / 0.6)),
        ("<answer>15</answer>", None, 0.0),
        ("<answer>1 2 3</answer>", None, 0.0),
        ("<answer>1e400 to 20</answer>", None, 0.0),
        ("<answer>soon</answer>", None, 0.0),
        ("[10, 20]", None, 0.0),  # no answer tag
        ("<answer>" + "10 " * 30_000 + "</answer>", None, 0.0),
    ],
)
def test_tiou(text, duration, expected):
    assert get_reward("tiou")([text], solution=[SOLUTION], duration=[duration]) == [expected]


# The agreed ground-truth rule, for reward columns and task records alike: (value, duration, segment or error).
SEGMENT_RULE = [
    ([10, 20], None, (10.0, 20.0)),
    ((0, 0.5), None, (0.0, 0.5)),
    ([0.0, 1e-9], None, (0.0, 1e-9)),
    ([np.float32(1.5), np.int64(3)], None, (1.5, 3.0)),
    ([1, 2], 3.0, (1.0, 2.0)),
    ([1, 9], 3.0, (1.0, 3.0)),  # the end is clipped to the duration
    ([2.5, 9], 3.0, (2.5, 3.0)),
    ([15, 15], None, "start < end"),  # zero length: invalid ground truth
    ([0, 0], None, "start < end"),
    ([20, 10], None, "start < end"),  # reversed
    ([-1, 5], None, "start < end"),
    ([1], None, "start < end"),
    ([1, 2, 3], None, "start < end"),
    ("1-2", None, "start < end"),
    ({"start": 1, "end": 2}, None, "start < end"),
    ([0, float("inf")], None, "start < end"),
    ([float("nan"), 1], None, "start < end"),
    ([True, 2], None, "start < end"),
    (["1", "2"], None, "start < end"),
    (None, None, "start < end"),
    ([3, 4], 3.0, "before the video's end (3 s)"),
    ([5, 6], 3.0, "before the video's end (3 s)"),
]


@pytest.mark.parametrize("value, duration, expected", SEGMENT_RULE)
def test_check_segment(value, duration, expected):
    if isinstance(expected, str):
        with pytest.raises(ColumnError, match=f"solution: expected .*{re.escape(expected)}"):
            check_segment(value, duration=duration)
    else:
        assert check_segment(value, duration=duration) == expected


# (a None solution is a row the reward does not apply to: it scores None, see test_rewards_fuzz)
@pytest.mark.parametrize("value, duration, expected", [r for r in SEGMENT_RULE if r[0] is not None and r[1] is None])
def test_tiou_checks_its_column_by_the_same_rule(value, duration, expected):
    reward = get_reward("tiou")
    if isinstance(expected, str):
        with pytest.raises(ColumnError, match=f"tiou.*solution: expected .*{re.escape(expected)}"):
            reward(["<answer>[1, 2]</answer>"], solution=[value])
    else:
        gold = f"<answer>{format_segment(*expected, digits=12)}</answer>"
        assert reward([gold], solution=[value]) == [1.0]


@pytest.mark.parametrize("duration", [-1, 0, float("inf"), "3", True])
def test_bad_duration(duration):
    with pytest.raises(ColumnError, match="duration"):
        get_reward("tiou")(["<answer>[1, 2]</answer>"], solution=[[1, 2]], duration=[duration])
    with pytest.raises(ColumnError, match="duration"):
        check_duration(duration)


times = st.floats(0, 1e6, allow_nan=False)
segments = st.tuples(times, times).map(sorted)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(segments, segments)
def test_interval_iou_symmetric_and_bounded(a, b):
    assert interval_iou(a, b) == interval_iou(b, a)
    assert 0.0 <= interval_iou(a, b) <= 1.0
    if a[1] > a[0]:
        assert interval_iou(a, a) == 1.0


def test_helpers():
    assert format_segment(12.5, 30.0) == "12.5, 30" and format_segment(1, 2) == "1, 2"
    assert parse_segment(format_segment(12.5, 30.0)) == (12.5, 30.0)
    assert predicted_segment("<answer>[5, 50]</answer>", duration=30.0) is None  # ends after the video
    assert predicted_segment("<answer>[5, 30.04]</answer>", duration=30.0) == (5.0, 30.0)  # rounding slack, clipped


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[12.5, 30]", (12.5, 30.0)),
        ("12.5s - 30s", (12.5, 30.0)),
        ("12.5-30", (12.5, 30.0)),
        ("from 12.5 to 30.0 seconds", (12.5, 30.0)),
        ("00:12 - 01:05", (12.0, 65.0)),
        ("1:02:03.5 to 1:02:10", (3723.5, 3730.0)),
        ("from 30 to 12", (12.0, 30.0)),  # reversed pairs are swapped
        ("0 0", (0.0, 0.0)),
        ("1 2 3", None),
        ("12.5", None),
        ("1:75 - 2:00", None),
        ("1e400 to 2", None),
        ("", None),
        ("soon", None),
        ("1 " * 50_000, None),
    ],
)
def test_parse_segment(text, expected):
    assert parse_segment(text) == expected

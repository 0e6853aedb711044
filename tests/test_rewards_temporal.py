"""`tiou`: temporal IoU of the answered segment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.parse import ColumnError, parse_segment
from mmreason.rewards.temporal import format_segment, interval_iou, predicted_segment

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
        ("<answer>[15, 15]</answer>", None, 0.0),  # an instant inside: no overlap length
        ("<answer>[15, 100]</answer>", 25.0, pytest.approx(5 / 15)),  # clipped to the duration first
        ("<answer>[30, 40]</answer>", 25.0, 0.0),
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


@pytest.mark.parametrize("solution", [[20, 10], [-1, 5], [1], "1-2", [0, float("inf")], [True, 2]])
def test_bad_solution(solution):
    with pytest.raises(ColumnError, match="solution"):
        get_reward("tiou")(["<answer>[1, 2]</answer>"], solution=[solution])


def test_bad_duration():
    with pytest.raises(ColumnError, match="duration"):
        get_reward("tiou")(["<answer>[1, 2]</answer>"], solution=[[1, 2]], duration=[-1])


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
    assert parse_segment(format_segment(12.5, 30.0)) == (12.5, 30.0)
    assert predicted_segment("<answer>[5, 50]</answer>", duration=30.0) == (5.0, 30.0)

"""`count_match`: exact integer count."""

from __future__ import annotations

import numpy as np
import pytest
from mmreason.rewards.counting import check_count, format_count, predicted_count
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward


@pytest.mark.parametrize(
    "text, solution, expected",
    [
        ("<answer>3</answer>", 3, 1.0),
        ("<think>one, two, three</think><answer>3</answer>", 3, 1.0),
        ("<answer>three</answer>", 3, 1.0),
        ("<answer>There are 3 apples.</answer>", 3, 1.0),
        ("<answer>3.0</answer>", 3, 1.0),
        ("<answer>1,024</answer>", 1024, 1.0),
        ("<answer>none</answer>", 0, 1.0),
        ("<answer>0</answer>", 0, 1.0),
        ("<answer>4</answer>", 3, 0.0),
        ("<answer>3 or 4</answer>", 3, 0.0),
        ("<answer>2.5</answer>", 3, 0.0),
        ("<answer>-3</answer>", 3, 0.0),
        ("<answer>1e400</answer>", 3, 0.0),
        ("<answer>" + "9" * 5000 + "</answer>", 3, 0.0),
        ("<answer>many</answer>", 3, 0.0),
        ("<answer></answer>", 0, 0.0),
        ("3", 3, 0.0),  # no answer tag
        ("<answer>3</answer>", "3", 1.0),  # numeric-string solution
        ("<answer>3</answer>", 3.0, 1.0),
        ("<answer>３</answer>", 3, 1.0),
        ("<answer>" + "1 " * 30_000 + "</answer>", 1, 1.0),  # one value, repeated
    ],
)
def test_count_match(text, solution, expected):
    assert get_reward("count_match")([text], solution=[solution]) == [expected]


@pytest.mark.parametrize("solution", [-1, 2.5, "many", True, [3], float("nan")])
def test_bad_solution(solution):
    with pytest.raises(ColumnError, match="count_match.*solution"):
        get_reward("count_match")(["<answer>3</answer>"], solution=[solution])


def test_helpers():
    assert check_count("12") == 12
    assert predicted_count("<answer>seven</answer>") == 7
    assert predicted_count("seven") is None


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0), (3, 3), (3.0, 3), ("3", 3), (" 12 ", 12), ("３", 3), (np.int64(4), 4), (np.float32(2.0), 2)],
)
def test_check_count(value, expected):
    assert check_count(value) == expected and format_count(expected) == str(expected)


@pytest.mark.parametrize(
    "value",
    [-1, 2.5, "three", "3 apples", "-3", "3.0", "1,024", "", "1e3", "9" * 5000, True, False, None, float("inf"), [3]],
)
def test_check_count_rejects(value):
    with pytest.raises(ColumnError, match="solution: expected a whole number >= 0"):
        check_count(value)

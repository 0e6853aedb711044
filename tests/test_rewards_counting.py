"""`count_match`: exact integer count."""

from __future__ import annotations

import pytest
from mmreason.rewards.counting import check_count, predicted_count
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

"""`choice_match`: option letter match, with optional option texts."""

from __future__ import annotations

import pytest
from mmreason.rewards.choice import check_letter, predicted_choice
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward

OPTIONS = ["London", "Paris", "Rome", "Berlin"]


@pytest.mark.parametrize(
    "text, solution, options, expected",
    [
        ("<answer>B</answer>", "B", None, 1.0),
        ("<answer>(B)</answer>", "B", None, 1.0),
        ("<answer>B. Paris</answer>", "B", OPTIONS, 1.0),
        ("<answer>Answer: B</answer>", "B", None, 1.0),
        ("<answer>b</answer>", "B", None, 1.0),
        ("<answer>Paris</answer>", "B", OPTIONS, 1.0),  # the option's text
        ("<answer>Paris</answer>", "B", None, 0.0),
        ("<answer>C</answer>", "B", OPTIONS, 0.0),
        ("<answer>F</answer>", "F", OPTIONS, 0.0),  # past the last option
        ("<answer>A or B</answer>", "B", None, 0.0),
        ("<answer>A dog</answer>", "A", None, 0.0),
        ("<answer>B</answer><answer>C</answer>", "C", None, 1.0),  # the last answer counts
        ("B", "B", None, 0.0),  # no answer tag
        ("<answer></answer>", "A", None, 0.0),
        ("<answer>" + "B" * 100_000 + "</answer>", "B", None, 0.0),
        ("<answer>B</answer>", "(b)", None, 1.0),  # loose solution spelling
    ],
)
def test_choice_match(text, solution, options, expected):
    assert get_reward("choice_match")([text], solution=[solution], options=[options]) == [expected]


@pytest.mark.parametrize("solution, options", [("Paris", None), ("", None), (1, None), ("B", "ABCD"), ("B", [1, 2])])
def test_bad_columns(solution, options):
    with pytest.raises(ColumnError):
        get_reward("choice_match")(["<answer>B</answer>"], solution=[solution], options=[options])


def test_helpers():
    assert check_letter("c") == "C"
    assert predicted_choice("<answer>Rome</answer>", OPTIONS) == "C"
